"""multibox predict: sources, outputs (pictures, text, COCO results JSON), failures, video."""

import json
import os

import cv2
import numpy as np
import pytest

from conftest import dataset_dir
from helpers import make_checkpoint, shapes_image
from multibox.cli import main
from multibox.inference.detector import Detector
from multibox.inference.predict import expand_sources, predict_files


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return Detector.from_checkpoint(make_checkpoint(tmp_path_factory.mktemp("ckpt") / "m.pt"))


def write_images(folder, n, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        im, _, _ = shapes_image(rng, width=int(rng.integers(80, 300)), height=int(rng.integers(60, 240)))
        p = os.path.join(folder, f"img{i:03d}.jpg" if i % 2 else f"img{i:03d}.png")
        cv2.imwrite(p, im[..., ::-1])
        paths.append(p)
    return paths


def check_coco_results(path, image_ids, num_classes):
    """The COCO results format: a list of {image_id:int, category_id:int, bbox:[x,y,w,h], score}."""
    with open(path) as f:
        dets = json.load(f)
    assert isinstance(dets, list)
    for d in dets:
        assert set(d) == {"image_id", "category_id", "bbox", "score"}
        assert isinstance(d["image_id"], int) and d["image_id"] in image_ids
        assert isinstance(d["category_id"], int) and 1 <= d["category_id"] <= num_classes
        assert len(d["bbox"]) == 4 and d["bbox"][2] >= 0 and d["bbox"][3] >= 0
        assert 0 < d["score"] <= 1
    return dets


def test_expand_sources(tmp_path):
    paths = write_images(tmp_path / "a" / "b", 3)
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "clip.avi").write_bytes(b"")
    images, videos = expand_sources(
        [str(tmp_path / "a"), str(tmp_path / "a" / "b" / "*.png"), str(tmp_path / "clip.avi")]
    )
    assert images == sorted(paths) + sorted(p for p in paths if p.endswith(".png"))
    assert videos == [str(tmp_path / "clip.avi")]
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        expand_sources([str(tmp_path / "nothing_here.jpg")])
    with pytest.raises(FileNotFoundError, match="matches no files"):
        expand_sources([str(tmp_path / "*.bmp")])


def test_predict_writes_one_result_per_image_and_lists_failures(detector, tmp_path):
    paths = write_images(tmp_path / "in", 7)
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    out = tmp_path / "out"
    s = predict_files(detector, [str(tmp_path / "in")], str(out), conf=0.2, batch_size=3, progress=False)
    assert s.images == 7 and len(s.failed) == 2
    assert {os.path.basename(p) for p, _ in s.failed} == {"broken.jpg", "empty.png"}
    assert sorted(os.listdir(out / "images")) == sorted(
        os.path.splitext(os.path.basename(p))[0] + ".jpg" for p in paths
    )
    assert len(os.listdir(out / "labels")) == 7
    meta = json.loads((out / "images.json").read_text())
    assert [im["file_name"] for im in meta["images"]] == sorted(paths)
    dets = check_coco_results(out / "detections.json", {im["id"] for im in meta["images"]}, 3)
    assert len(dets) == s.detections == sum(s.per_class.values())
    # the JSON, the text files and the API agree for one image
    first = detector.predict(sorted(paths)[0], conf=0.2)[0]
    lines = (
        (out / "labels" / (os.path.splitext(os.path.basename(sorted(paths)[0]))[0] + ".txt")).read_text().splitlines()
    )
    assert len(lines) == len(first) == sum(d["image_id"] == 1 for d in dets)
    if len(first):
        name, score, *box = lines[0].split()
        assert name == first.names[0] and float(score) == pytest.approx(first.scores[0], abs=1e-4)
        np.testing.assert_allclose([float(v) for v in box], first.boxes[0], atol=0.06)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 7 and len(summary["failed"]) == 2
    assert len((out / "failed.txt").read_text().splitlines()) == 2


def test_predict_video(detector, tmp_path):
    path = str(tmp_path / "clip.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (200, 150))
    rng = np.random.default_rng(0)
    for _ in range(11):
        im, _, _ = shapes_image(rng, width=200, height=150)
        w.write(im[..., ::-1].copy())
    w.release()
    s = predict_files(detector, [path], str(tmp_path / "out"), conf=0.2, batch_size=4, progress=False)
    assert s.images == 11 and s.videos == [path] and not s.failed
    cap = cv2.VideoCapture(str(tmp_path / "out" / "clip.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 11
    cap.release()
    meta = json.loads((tmp_path / "out" / "images.json").read_text())
    assert meta["images"][-1]["file_name"] == f"{path}#11"


def test_predict_real_images(detector, tmp_path):
    root = dataset_dir("bccd")
    files = sorted(root.rglob("*.jpg"))[:4]
    s = predict_files(detector, [str(f) for f in files], str(tmp_path), conf=0.3, progress=False)
    assert s.images == 4 and not s.failed
    meta = json.loads((tmp_path / "images.json").read_text())
    assert all(im["width"] > 0 and im["height"] > 0 for im in meta["images"])


def test_predict_cli_with_checkpoint_and_onnx(tmp_path, capsys):
    ckpt = make_checkpoint(tmp_path / "m.pt")
    write_images(tmp_path / "in", 3)
    assert main(["predict", ckpt, str(tmp_path / "in"), "--out", str(tmp_path / "pt"), "--conf", "0.2"]) == 0
    assert "3 images" in capsys.readouterr().out
    assert main(["export", ckpt, "--out", str(tmp_path / "m.onnx")]) == 0
    assert (
        main(
            [
                "predict",
                str(tmp_path / "m.onnx"),
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "onnx"),
                "--conf",
                "0.2",
            ]
        )
        == 0
    )
    a = json.loads((tmp_path / "pt" / "detections.json").read_text())
    b = json.loads((tmp_path / "onnx" / "detections.json").read_text())
    assert len(a) == len(b)
    assert main(["predict", ckpt, str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def predict_with_each(tmp_path, capsys, flag, modes, onnx_mode):
    """Detections of `multibox predict` on two images with ``flag`` set to each of ``modes``; then
    checks that an ONNX export refuses ``flag`` (it runs the settings it was exported with)."""
    ckpt = make_checkpoint(tmp_path / "m.pt")
    write_images(tmp_path / "in", 2)
    runs = {}
    for mode in modes:
        assert (
            main(["predict", ckpt, str(tmp_path / "in"), "--out", str(tmp_path / mode), "--conf", "0.2", flag, mode])
            == 0
        )
        runs[mode] = json.loads((tmp_path / mode / "detections.json").read_text())
    assert main(["export", ckpt, "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m.onnx"), str(tmp_path / "in"), flag, onnx_mode]) == 2
    assert f"{flag} applies to checkpoints" in capsys.readouterr().err
    return runs


def test_predict_cli_test_time_mirroring(tmp_path, capsys):
    runs = predict_with_each(tmp_path, capsys, "--tta", ("none", "hvflip"), "hflip")
    assert runs["none"] and runs["hvflip"] and runs["none"] != runs["hvflip"]


def test_predict_cli_box_voting(tmp_path, capsys):
    """--box-voting moves boxes (same scores and labels)."""
    runs = predict_with_each(tmp_path, capsys, "--box-voting", ("off", "on"), "on")
    assert runs["off"] and len(runs["off"]) == len(runs["on"])
    key = lambda d: (d["image_id"], d["category_id"], d["score"])  # noqa: E731
    assert sorted(map(key, runs["off"])) == sorted(map(key, runs["on"]))
    assert sorted(d["bbox"] for d in runs["off"]) != sorted(d["bbox"] for d in runs["on"])
