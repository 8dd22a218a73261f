import json

import pytest

from helpers import make_voc
from multibox.cli import main

TINY = (
    "model.kwargs={image_size: 128, feature_strides: [16, 32], extra_channels: [128, 64], pretrained_backbone: false}"
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    make_voc(str(root / "shapes"), n=6, split="train")
    make_voc(str(root / "shapes"), n=6, seed=1, split="test")  # same images rewritten; fine for a smoke run
    return root


def test_train_val_and_evaluate_commands(shapes, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "-c",
            "demo_bccd",
            "--data",
            str(shapes / "shapes"),
            "--out",
            str(out),
            "--draw",
            "2",
            TINY,
            "model.freeze=0",
            "data.train=train",
            "data.test=test",
            "data.workers=0",
            "train.epochs=1",
            "train.batch_size=4",
            "train.threads=2",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "training ssdlite_effl0 on shapes/train" in text and "mean" in text
    for f in (
        "last.pt",
        "metrics.json",
        "metrics.txt",
        "log.csv",
        "training_curves.png",
        "pr_curves/pr_curves.png",
        "errors.png",
        "predictions_overview.jpg",
    ):
        assert (out / f).exists(), f
    m = json.loads((out / "metrics.json").read_text())
    assert m["checkpoint"] == "last epoch" and set(m["per_class"]) == {"blue", "green", "red", "yellow"}
    assert 0.0 <= m["mAP50"] <= 1.0 and m["coco"] is not None
    assert len(list((out / "predictions").iterdir())) == 2

    rc = main(
        [
            "val",
            "--checkpoint",
            str(out / "last.pt"),
            "--data",
            str(shapes / "shapes"),
            "--split",
            "train",
            "--out",
            str(tmp_path / "val"),
            "--draw",
            "1",
        ]
    )
    assert rc == 0 and (tmp_path / "val" / "metrics.json").exists()
    rc = main(
        [
            "val",
            "--checkpoint",
            str(out / "last.pt"),
            "--data",
            str(shapes / "shapes"),
            "--split",
            "train",
            "--out",
            str(tmp_path / "val_tta"),
            "--draw",
            "0",
            "--tta",
            "hflip",
        ]
    )
    assert rc == 0
    plain = json.loads((tmp_path / "val" / "metrics.json").read_text())
    mirrored = json.loads((tmp_path / "val_tta" / "metrics.json").read_text())
    assert plain["per_class"] != mirrored["per_class"]  # other scores, so other detections

    import multibox.models.ssd as ssd_module  # --box-voting reaches post-processing; voting itself: test_nms

    seen, postprocess = [], ssd_module.postprocess
    monkeypatch.setattr(ssd_module, "postprocess", lambda *a, **k: seen.append(k["box_voting"]) or postprocess(*a, **k))
    rc = main(
        [
            "val",
            "--checkpoint",
            str(out / "last.pt"),
            "--data",
            str(shapes / "shapes"),
            "--split",
            "train",
            "--out",
            str(tmp_path / "val_vote"),
            "--draw",
            "0",
            "--box-voting",
            "on",
        ]
    )
    assert rc == 0 and seen and all(seen)
    voted = json.loads((tmp_path / "val_vote" / "metrics.json").read_text())
    assert [c["num_det"] for c in voted["per_class"].values()] == [c["num_det"] for c in plain["per_class"].values()]


def test_clear_errors_for_bad_arguments(tmp_path, capsys):
    assert main(["train", "-c", "no_such_preset"]) == 2
    assert "no config file or preset named 'no_such_preset'" in capsys.readouterr().err
    assert main(["train", "-c", "demo_bccd", "--data", str(tmp_path / "missing"), "data.workers=0"]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["val", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_models_and_presets_listing(capsys):
    assert main(["presets"]) == 0
    assert "demo_bccd" in capsys.readouterr().out


def test_tta_choices_are_the_library_modes():
    from multibox.cli import TTA_CHOICES
    from multibox.core.tta import TTA_MODES

    assert TTA_CHOICES == tuple(TTA_MODES)
