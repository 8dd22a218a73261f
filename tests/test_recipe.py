"""The recipe fitted to a dataset (multibox.engine.recipe), the box statistics it reads
(multibox.data.stats), the training time budget, fine-tuning loads and the own-data commands."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from helpers import TINY, make_voc, shapes_image, tiny_config
from multibox.cli import main, parse_duration
from multibox.data.base import DatasetError, Record, remap_classes, verify_images
from multibox.data.layout import detect_layout
from multibox.data.stats import BoxStats, box_stats
from multibox.engine.recipe import fit_model, fit_recipe, plan_splits, prior_shapes
from multibox.engine.rundir import fresh_out_dir


def stats_of(sizes, aspects):
    sizes, aspects = np.asarray(sizes, float), np.asarray(aspects, float)
    return BoxStats(10, len(sizes), 0, {"a": len(sizes)}, sizes, aspects, np.zeros((10, 2)))


def test_box_stats_by_hand():
    from multibox.data.base import DetectionDataset

    records = [
        Record(
            "a.jpg",
            "a",
            np.array([[0, 0, 50, 25], [10, 10, 30, 90]], np.float32),
            np.array([1, 2]),
            np.zeros(2, bool),
            (100, 200),
        ),
        Record("b.jpg", "b", np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), (50, 50)),
    ]
    st = box_stats(DetectionDataset(records, ["x", "y"], "hand"))
    # relative w, h: (0.25, 0.25) and (0.1, 0.8): sizes 0.25 and sqrt(0.08); aspects 1 and 0.125
    np.testing.assert_allclose(st.size, [0.25, np.sqrt(0.08)], rtol=1e-6)
    np.testing.assert_allclose(st.aspect, [1.0, 0.125], rtol=1e-6)
    assert (st.images, st.boxes, st.images_without_boxes, st.per_class) == (2, 2, 1, {"x": 1, "y": 1})
    assert st.fraction_elongated(2.5) == 0.5


def test_fit_model_rules():
    # large objects: 320 px, strides 16/32, three cells of each backbone map, then on to 0.95
    kw, aug, reasons = fit_model(stats_of(np.linspace(0.3, 0.9, 50), np.ones(50)))
    assert kw["image_size"] == 320 and kw["feature_strides"] == [16, 32] and kw["aspect_ratios"] == [2]
    assert aug["max_expand"] == 4.0
    assert kw["scales"] == [0.15, 0.3, 0.462, 0.625, 0.787, 0.95, 1.05]  # 3 * 16 / 320, 3 * 32 / 320, ...
    # small, elongated objects: 416 px, a stride-8 map, ratios 2 and 3, less zoom-out
    kw, aug, _ = fit_model(stats_of(np.full(100, 0.06), np.r_[np.full(80, 1.0), np.full(20, 0.3)]))
    assert kw["image_size"] == 416 and kw["feature_strides"] == [8, 16, 32] and kw["aspect_ratios"] == [2, 3]
    assert aug["max_expand"] == 2.0
    assert kw["scales"][:3] == [round(24 / 416, 3), round(48 / 416, 3), round(96 / 416, 3)]
    # objects well below the first map's priors: its scale comes down to them
    kw, _, _ = fit_model(stats_of(np.r_[np.full(5, 0.05), np.full(95, 0.2)], np.ones(100)))
    assert kw["image_size"] == 320 and kw["scales"][:2] == [0.05, 0.15]  # 2nd percentile 0.05 < 0.75 * 0.075
    kw, _, _ = fit_model(stats_of(np.r_[np.full(5, 0.01), np.full(95, 0.2)], np.ones(100)))
    assert kw["scales"][0] == 0.04  # but never below 0.04
    assert len(reasons) >= 5  # every choice says why


def test_prior_shapes_by_hand():
    shapes = prior_shapes({"scales": [0.2, 0.8, 1.0], "aspect_ratios": [4]})
    assert shapes[:4] == [(0.2, 0.2), (0.4, 0.4), (0.4, 0.1), (0.1, 0.4)]
    assert len(shapes) == 8


def test_plan_splits():
    class L:
        def __init__(self, names):
            self.names, self.root = names, "x"

        def split_names(self):
            return self.names

    assert plan_splits(L(["train", "val", "test"]))[:3] == ("train", "val", "test")
    train, val, test, notes = plan_splits(L(["train", "test"]))
    assert (train, val, test) == ("train[10%:]", "train[:10%]", "test") and "held out" in notes[0]
    train, val, test, notes = plan_splits(L(["all"]))
    assert (train, val, test) == ("all[10%:]", "all[:10%]", None) and "held-out validation split" in notes[1]


def test_held_out_split_is_disjoint_and_fixed(tmp_path):
    root = make_voc(str(tmp_path / "v"), n=30)
    cfg, _ = fit_recipe(detect_layout(root), time_budget=60)
    from multibox.data.build import load_split

    train, val = load_split(cfg.data, cfg.data.train), load_split(cfg.data, cfg.data.val)
    ids_t, ids_v = {r.image_id for r in train.records}, {r.image_id for r in val.records}
    assert len(ids_v) == 3 and len(ids_t) == 27 and not ids_t & ids_v
    assert ids_v == {r.image_id for r in load_split(cfg.data, cfg.data.val).records}  # the same every time


def test_parse_duration_and_fresh_out_dir(tmp_path):
    assert [parse_duration(t) for t in ("10m", "90s", "1.5h", "600", "2min")] == [600, 90, 5400, 600, 120]
    with pytest.raises(ValueError, match="--time 'soon'"):
        parse_duration("soon")
    run = tmp_path / "runs" / "x"
    assert fresh_out_dir(str(run)) == str(run)
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"")
    assert fresh_out_dir(str(run)) == str(run) + "2"


def _tiny_cfg(root, out, **train):
    return tiny_config(root, out, *[f"train.{k}={v}" for k, v in train.items()])


def test_time_budget_picks_epochs_and_the_run_equals_one_told_them(tmp_path):
    from multibox.config import load_config
    from multibox.engine.trainer import Trainer

    root = make_voc(str(tmp_path / "v"), n=8)
    tr = Trainer(_tiny_cfg(root, tmp_path / "budget", epochs=3, time_budget=3600.0), progress=False)
    tr.fit()
    assert tr.epochs == 3  # an hour allows more: capped at train.epochs
    saved = load_config(str(tmp_path / "budget" / "config.yaml"))
    assert saved.train.epochs == 3 and saved.train.time_budget is None  # the saved config reproduces the run
    assert saved.train.warmup_iters == 1  # a short run warms up over its first tenth
    saved.out_dir = str(tmp_path / "plain")
    ref = Trainer(saved, progress=False)
    ref.fit()
    for (k, a), b in zip(tr.model.state_dict().items(), ref.model.state_dict().values()):
        assert torch.equal(a, b), k  # measuring on a copy left no trace
    # a budget too small for more than one epoch
    tr = Trainer(_tiny_cfg(root, tmp_path / "short", epochs=50, time_budget=1e-3), progress=False)
    assert tr.fit_to_time_budget(1e-3) == 1 and tr.total_iters == tr.iters_per_epoch


def test_fine_tuning_loads_matching_tensors_and_reinitialises_class_predictors(tmp_path):
    from multibox.engine.trainer import Trainer
    from multibox.inference.checkpoint import load_checkpoint

    root = make_voc(str(tmp_path / "v"), n=4)
    first = Trainer(_tiny_cfg(root, tmp_path / "a", epochs=1), progress=False)
    first.fit()
    src = load_checkpoint(tmp_path / "a" / "last.pt")["model"]
    other = make_voc(str(tmp_path / "w"), n=4, names=("ant", "bee", "cow", "dog"))
    cfg = _tiny_cfg(other, tmp_path / "b", epochs=1)
    cfg.model.checkpoint = str(tmp_path / "a" / "last.pt")
    tuned = Trainer(cfg, progress=False)
    state = tuned.model.state_dict()
    heads = set(tuned.model.class_predictor_names())
    assert heads and all(not torch.equal(state[k], src[k]) for k in heads)  # same shapes, other classes
    assert all(torch.equal(state[k], src[k]) for k in state if k not in heads)
    cfg.model.checkpoint = None
    with pytest.raises(ValueError, match=r"last.pt.*not one tensor fits"):
        from multibox.models import create_model
        from multibox.models.weights import load_matching

        load_matching(create_model("ssd300_vgg16", num_classes=2), src, str(tmp_path / "a" / "last.pt"))


def test_remap_classes_and_unknown_classes(tmp_path):
    root = make_voc(str(tmp_path / "v"), n=6)
    ds = detect_layout(root).load("train")
    names = ["yellow", "blue", "green", "red", "extra"]
    out = remap_classes(ds, names)
    for a, b in zip(ds.records, out.records):
        assert [ds.class_names[i - 1] for i in a.labels] == [names[i - 1] for i in b.labels]
    with pytest.raises(DatasetError, match=r"classes \['blue', 'green'"):
        remap_classes(ds, ["red", "yellow"])


def test_verify_images_finds_truncated_files_before_training(tmp_path):
    root = make_voc(str(tmp_path / "v"), n=4)
    path = os.path.join(root, "JPEGImages", "img001.jpg")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    ds = detect_layout(root).load("train")
    with pytest.raises(DatasetError, match=r"1 unreadable image.*img001.jpg"):
        verify_images(ds)
    assert verify_images(ds, skip_bad=True) == [path] and len(ds) == 3
    assert ds.problems.skipped_files == ["img001.jpg"]


# --- the commands, on a YOLO folder as a labelling tool exports it -----------------------------------


@pytest.fixture(scope="module")
def yolo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("own") / "parts"
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("valid", 4)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for i in range(n):
            img, boxes, classes = shapes_image(rng, n=2)
            Image.fromarray(img).save(root / split / "images" / f"p{i}.jpg", quality=95)
            h, w = img.shape[:2]
            lines = [
                f"{c % 2} {(b[0] + b[2]) / 2 / w} {(b[1] + b[3]) / 2 / h} {(b[2] - b[0]) / w} {(b[3] - b[1]) / h}"
                for b, c in zip(boxes, classes)
            ]
            (root / split / "labels" / f"p{i}.txt").write_text("\n".join(lines))
    (root / "data.yaml").write_text(
        yaml.safe_dump({"train": "../train/images", "val": "../valid/images", "nc": 2, "names": ["bolt", "nut"]})
    )
    (root / "valid" / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    return root


def test_train_data_without_preset_fits_reports_and_saves_a_reproducible_config(yolo_dir, tmp_path, capsys):
    out = tmp_path / "run"
    model_kw = json.dumps({**TINY})
    rc = main(
        [
            "train",
            "--data",
            str(yolo_dir),
            "--time",
            "20s",
            "--out",
            str(out),
            "--draw",
            "1",
            f"model.kwargs={model_kw}",
            "train.batch_size=4",
            "train.threads=2",
            "data.workers=0",
        ]
    )
    assert rc == 0
    text = capsys.readouterr()
    assert "found " in text.out and "YOLO txt labels (data.yaml)" in text.out
    assert "recipe fitted to the data" in text.out and "time budget 0.3 min" in text.out
    assert "no test split: the final report is on the validation split parts/val (4 images)" in text.out
    assert "broken.jpg" in (out / "skipped_files.txt").read_text()  # skipped, counted, listed
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["format"] == "auto" and saved["train"]["time_budget"] is None
    assert saved["train"]["epochs"] >= 1 and saved["data"]["class_names"] == ["bolt", "nut"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"bolt", "nut"}

    rc = main(["val", "--checkpoint", str(out / "last.pt"), "--data", str(yolo_dir), "--out", str(tmp_path / "v")])
    assert rc == 0 and json.loads((tmp_path / "v" / "metrics.json").read_text())["split"].endswith("/val")

    rc = main(["check", "--data", str(yolo_dir), "--out", str(tmp_path / "check")])
    text = capsys.readouterr().out
    assert rc == 0 and (tmp_path / "check" / "box_shapes.png").stat().st_size > 1000
    assert "bolt" in text and "broken.jpg" in (tmp_path / "check" / "problems.txt").read_text()


def test_train_without_config_or_data_is_one_clear_error(capsys):
    assert main(["train"]) == 2
    assert "give a preset or YAML file (-c" in capsys.readouterr().err
