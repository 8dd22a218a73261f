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


# --- user errors: one line, exit code 2, nothing lost ---------------------------------------


def _tiny_yaml(tmp_path, root, out, *extra):
    """A YAML config training the tiny model on ``root`` for 1 epoch into ``out``."""
    from helpers import tiny_config
    from multibox.config import save_config

    path = tmp_path / "tiny.yaml"
    save_config(tiny_config(root, out, "train.epochs=1", *extra), str(path))
    return str(path)


def _user_error(capsys, argv, *messages):
    """Run the CLI; it must exit 2 with one line naming the problem and no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    line = [l for l in err.splitlines() if l.startswith(f"multibox {argv[0]}: error:")]
    assert len(line) == 1, err
    for m in messages:
        assert m in line[0], line[0]
    return line[0]


@pytest.fixture()
def voc5(tmp_path):
    return make_voc(str(tmp_path / "voc5"), n=5, split="train")


def test_config_errors_stop_before_anything_is_written(tmp_path, capsys, voc5):
    out = tmp_path / "run"
    yaml_path = _tiny_yaml(tmp_path, voc5, out)
    _user_error(capsys, ["train", "-c", yaml_path, "train.epochs=ten"], "'train.epochs'", "an integer", "'ten'")
    _user_error(capsys, ["train", "-c", yaml_path, "train.epochs=0"], "'train.epochs'", ">= 1", "got 0")
    _user_error(capsys, ["train", "-c", yaml_path, "train.lr=[0.1"], "not valid YAML")
    _user_error(capsys, ["train", "-c", yaml_path, "model.kwargs={image_sise: 128}"], "image_sise", "model.kwargs")
    _user_error(capsys, ["train", "-c", yaml_path, "train.device=cuda:7"], "cuda:7", "not available", "cpu")
    assert not out.exists()


def test_a_finished_run_is_never_overwritten(tmp_path, capsys, voc5):
    out = tmp_path / "run"
    yaml_path = _tiny_yaml(tmp_path, voc5, out)
    assert main(["train", "-c", yaml_path, "--out", str(out)]) == 0
    first = (out / "last.pt").read_bytes()
    # the same --out again: refused, the run's checkpoint intact
    _user_error(capsys, ["train", "-c", yaml_path, "--out", str(out)], str(out), "--resume", "--overwrite")
    assert (out / "last.pt").read_bytes() == first
    # the config's own out_dir again: the next numbered folder
    assert main(["train", "-c", yaml_path]) == 0
    assert (out / "last.pt").read_bytes() == first and (tmp_path / "run2" / "last.pt").exists()
    assert "this one writes to" in capsys.readouterr().out
    # explicitly replaced
    assert main(["train", "-c", yaml_path, "--out", str(out), "--overwrite", "train.seed=3"]) == 0
    assert (out / "last.pt").read_bytes() != first


def test_resume_needs_a_checkpoint(tmp_path, capsys, voc5):
    yaml_path = _tiny_yaml(tmp_path, voc5, tmp_path / "run")
    _user_error(capsys, ["train", "-c", yaml_path, "--resume"], "nothing to resume", "last.pt")
    _user_error(capsys, ["train", "-c", yaml_path, "--resume", str(tmp_path / "x.pt")], "no such checkpoint")
    assert not (tmp_path / "run").exists()
    assert main(["train", "-c", yaml_path, "--resume", "if-present"]) == 0  # nothing there: a fresh run
    assert (tmp_path / "run" / "last.pt").exists()


def test_a_second_run_into_a_folder_in_use_fails_at_once(tmp_path, capsys, voc5):
    import os
    import socket

    out = tmp_path / "run"
    out.mkdir()
    # a live process (this test's parent) holds the folder
    (out / ".lock").write_text(f"{os.getppid()}\t{socket.gethostname()}\t2026-01-01 00:00:00\n")
    yaml_path = _tiny_yaml(tmp_path, voc5, out)
    _user_error(capsys, ["train", "-c", yaml_path, "--out", str(out)], "another run is writing", str(os.getppid()))
    assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of this run was written


def test_full_or_read_only_disk_is_one_line(tmp_path, capsys, voc5, monkeypatch):
    import errno

    import multibox.engine.trainer as trainer_mod

    blocked = tmp_path / "a_file"
    blocked.write_text("")
    yaml_path = _tiny_yaml(tmp_path, voc5, blocked / "run")
    _user_error(capsys, ["train", "-c", yaml_path], str(blocked / "run"), "Not a directory")

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(trainer_mod, "atomic_save", full)
    yaml_path = _tiny_yaml(tmp_path, voc5, tmp_path / "run")
    _user_error(capsys, ["train", "-c", yaml_path], "last.pt", "no space left on the device")

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro"))

    monkeypatch.setattr(trainer_mod.os, "makedirs", read_only)
    _user_error(capsys, ["train", "-c", yaml_path, "--out", str(tmp_path / "ro")], "read-only", "--out")


def test_every_dataset_size_trains_without_a_batch_of_one(tmp_path, capsys):
    for n in (1, 5):  # 1 and 5 images at batch 4: a batch of one would reach BatchNorm
        root = make_voc(str(tmp_path / f"voc{n}"), n=n, split="train")
        yaml_path = _tiny_yaml(tmp_path, root, tmp_path / f"run{n}")
        assert main(["train", "-c", yaml_path]) == 0, capsys.readouterr().err
        assert (tmp_path / f"run{n}" / "last.pt").exists()
        assert "BatchNorm" in capsys.readouterr().out


def test_checkpoint_of_another_model_names_file_and_keys(tmp_path, capsys):
    import torch

    from helpers import make_checkpoint

    path = make_checkpoint(tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)
    ckpt["model"] = {k.replace("head.", "heads."): v for k, v in ckpt["model"].items()}  # another architecture
    torch.save(ckpt, path)
    line = _user_error(capsys, ["val", "--checkpoint", path], path, "missing ", "head.classification", "unexpected ")
    assert len(line) < 600


def test_device_that_is_not_there(tmp_path, capsys, shapes):
    from helpers import make_checkpoint

    path = make_checkpoint(tmp_path / "m.pt")
    _user_error(capsys, ["val", "--checkpoint", path, "--device", "cuda"], "'cuda' is not available", "cpu")
    img = str(shapes / "shapes" / "JPEGImages" / "img000.jpg")
    _user_error(capsys, ["predict", path, img, "--device", "cuda:1", "--out", str(tmp_path / "p")], "not available")


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--conf", "2", "expected a number between 0 and 1, got 2"),
        ("--iou", "2", "expected a number between 0 and 1, got 2"),
        ("--iou", "high", "expected a number between 0 and 1, got 'high'"),
        ("--max-det", "-5", "expected a whole number >= 1, got -5"),
        ("--batch-size", "0", "expected a whole number >= 1, got 0"),
    ],
)
def test_predict_arguments_are_checked(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as e:
        main(["predict", str(tmp_path / "m.pt"), str(tmp_path), flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err


def test_user_errors_from_a_real_process_have_no_traceback(tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "multibox", "train", "-c", "demo_bccd", "train.epochs=ten"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip() == "multibox train: error: config key 'train.epochs': expected an integer, got 'ten'"
