"""Command line: a thin layer over the Python API.

multibox demo [--data PATH] [--out runs/demo]     train + evaluate + draw on BCCD (about 10 min on a CPU)
multibox train --config PRESET [key=value ...]    train from a preset or YAML file, with overrides
multibox val --checkpoint CKPT [--split test]     score a checkpoint, write metrics.json and plots
multibox evaluate --gt GT.json --detections R.json [--out DIR]
multibox predict CKPT|MODEL.onnx|MODEL.xml SOURCES... [--conf 0.25] [--save-format yolo voc coco]
multibox show -c PRESET | --checkpoint CKPT [--augment] [--predict]   draw ground truth into a grid
multibox export CKPT [--format onnx|openvino|torch-export] [--int8] [--out model.onnx]
multibox import-torchvision SSD300.pth --out ssd300_coco.pt        torchvision ssd300_vgg16 weights
multibox models | presets                         list the model zoo / the config presets
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings

from .memory import keep_freed_memory

# multibox.tta.TTA_MODES, named here so that building the parser does not import torch
TTA_CHOICES = ("none", "hflip", "hvflip", "dihedral")


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import create_model, list_models, offline_kwargs

    print(f"{'model':<16} {'input':>9} {'priors':>7} {'params':>12}  scores")
    for name in list_models():
        m = create_model(name, num_classes=args.num_classes, **offline_kwargs(name))
        h, w = m.image_size
        n = sum(p.numel() for p in m.parameters())
        print(f"{name:<16} {h:>4}x{w:<4} {m.num_priors:>7} {n:>12,}  {m.score_type}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from .config import list_presets

    print("\n".join(list_presets()))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .eval.files import evaluate_coco_files
    from .viz.draw import plot_pr_curves

    report = evaluate_coco_files(args.gt, args.detections)
    print(report.table())
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        report.save_json(os.path.join(args.out, "metrics.json"))
        plot_pr_curves(report, args.out)
        print(f"wrote {os.path.join(args.out, 'metrics.json')} and PR curves to {args.out}")
    return 0


def _apply_data_path(cfg, data: str | None) -> None:
    """``--data`` names the dataset folder itself or a folder that contains it."""
    if not data:
        return
    inner = os.path.join(data, os.path.basename(os.path.normpath(cfg.data.root)))
    cfg.data.root = inner if os.path.isdir(inner) else data


def _score_and_report(
    model, dataset, out_dir: str, device="cpu", workers: int = 1, draw: int | None = None, extra: dict | None = None
):
    """Score ``model`` on ``dataset`` once and write the report folder."""
    from .inference.evaluate import evaluate_model
    from .viz.report import write_report

    report, preds = evaluate_model(model, dataset, 16, device, workers, coco=True, keep_predictions=True)
    return write_report(report, preds, dataset, out_dir, draw=draw, extra=extra)


def _train_and_report(cfg, resume: str | None, draw: int | None, report_on_val: bool = False) -> int:
    from .engine.trainer import Trainer

    start = time.time()
    trainer = Trainer(cfg)
    try:
        return _fit_and_report(trainer, cfg, resume, draw, report_on_val, start)
    finally:
        trainer.close()


def _fit_and_report(trainer, cfg, resume: str | None, draw: int | None, report_on_val: bool, start: float) -> int:
    if resume:
        trainer.resume(resume)
        print(f"resumed from {resume} at epoch {trainer.epoch}, step {trainer.step}")
    n_train = len(trainer.datasets["train"])
    length = (
        f"for the epochs that {cfg.train.time_budget / 60:.1f} minutes allow"
        if cfg.train.time_budget and not resume
        else f"for {trainer.epochs} epochs ({trainer.total_iters} iterations of {cfg.train.batch_size})"
    )
    n_cls = len(trainer.class_names)
    print(
        f"training {cfg.model.name} on {trainer.datasets['train'].name} ({n_train} images, {n_cls} "
        f"class{'es' if n_cls != 1 else ''}: {', '.join(trainer.class_names)}) {length} -> {cfg.out_dir}"
    )
    trainer.fit()
    train_s = time.time() - start
    if not trainer.is_main:
        return 0
    test = trainer.datasets.get("test")
    if test is None and report_on_val and trainer.datasets.get("val") is not None:
        test = trainer.datasets["val"]
        print(f"no test split: the final report is on the validation split {test.name} ({len(test)} images)")
    if test is None:
        return 0
    best = os.path.join(cfg.out_dir, "best.pt")
    chosen = "last epoch"
    model = trainer.eval_model()  # the weight average, if training kept one
    if trainer.datasets.get("val") is not None and os.path.exists(best):
        from .inference.checkpoint import load_checkpoint

        model.load_state_dict(load_checkpoint(best)["model"])
        chosen = "best validation mAP"
    print(f"scoring {test.name} once with the {chosen} checkpoint")
    report = _score_and_report(
        model,
        test,
        cfg.out_dir,
        device=trainer.device,
        workers=cfg.data.workers,
        draw=draw,
        extra={"train_seconds": round(train_s, 1), "checkpoint": chosen, "model": cfg.model.name},
    )
    print(report.table())
    print(
        f"total {time.time() - start:.0f} s; wrote metrics.json, metrics.txt, pr_curves/, errors.png, predictions/, "
        f"training_curves.png and checkpoints to {cfg.out_dir}"
    )
    return 0


def parse_duration(text: str) -> float:
    """``"10m"``, ``"90s"``, ``"1.5h"`` or plain seconds -> seconds."""
    t = str(text).strip().lower()
    units = {"s": 1, "m": 60, "min": 60, "h": 3600}
    for suffix in ("min", "s", "m", "h"):
        if t.endswith(suffix):
            number, scale = t[: -len(suffix)], units[suffix]
            break
    else:
        number, scale = t, 1
    try:
        value = float(number) * scale
    except ValueError:
        raise ValueError(f"--time {text!r}: give a duration such as 10m, 600s or 1.5h") from None
    if not value > 0:
        raise ValueError(f"--time {text!r}: the duration must be positive")
    return value


def _recipe_config(args: argparse.Namespace):
    """A config fitted to the dataset at ``--data`` (no preset given)."""
    from .config import with_overrides
    from .data.build import layout_of
    from .engine.recipe import fit_recipe

    layout = layout_of(args.data)
    print(f"found {layout.summary()}")
    cfg, reasons = fit_recipe(layout, time_budget=parse_duration(args.time))
    if args.overrides:  # overrides on top of the fitted recipe
        cfg = with_overrides(cfg, args.overrides)
    print("recipe fitted to the data:\n  " + "\n  ".join(reasons))
    return cfg


def _choose_out_dir(cfg, args: argparse.Namespace, resume: str | None) -> None:
    """Where the run writes. A folder holding another run's checkpoint is never written over
    unless resuming it (or ``--overwrite``): a folder named with ``--out`` is refused, a default
    one (the preset's, ``runs/<data>``) gives way to the next free ``runs/<name>2``, ``3``, ..."""
    from .engine.rundir import RunDirError, fresh_out_dir, holds_run

    if args.out:
        cfg.out_dir = args.out
    if resume or not holds_run(cfg.out_dir) or args.overwrite:
        return
    if args.out:
        raise RunDirError(
            f"{cfg.out_dir} holds another run's checkpoint (last.pt); resume it with --resume, "
            "choose another --out, or pass --overwrite to replace it"
        )
    fresh = fresh_out_dir(cfg.out_dir)
    print(f"{cfg.out_dir} holds another run: this one writes to {fresh} (resume that one with --resume)")
    cfg.out_dir = fresh


def _resume_path(cfg, args: argparse.Namespace) -> str | None:
    """The checkpoint ``--resume`` names (``OUT/last.pt`` when given bare); it must exist,
    unless ``--resume if-present`` asks to resume only when there is one."""
    if not args.resume:
        return None
    out = args.out or cfg.out_dir
    if args.resume in ("auto", "if-present"):
        path = os.path.join(out, "last.pt")
        if not os.path.exists(path):
            if args.resume == "if-present":
                return None
            raise FileNotFoundError(
                f"nothing to resume: {path} does not exist (start the run without --resume, or use "
                "--resume if-present to resume only when there is a checkpoint)"
            )
        return path
    if not os.path.isfile(args.resume):
        raise FileNotFoundError(f"--resume {args.resume}: no such checkpoint")
    if not args.out:
        cfg.out_dir = os.path.dirname(os.path.abspath(args.resume))
    return args.resume


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config

    fitted = args.config is None  # no preset: a recipe fitted to the data at --data
    if fitted:
        if not args.data:
            raise ValueError("give a preset or YAML file (-c, see multibox presets) or a dataset folder (--data DIR)")
        cfg = _recipe_config(args)
    else:
        cfg = load_config(args.config, args.overrides)
        _apply_data_path(cfg, args.data)
    if args.weights:
        cfg.model.checkpoint = args.weights
    resume = _resume_path(cfg, args)
    _choose_out_dir(cfg, args, resume)
    return _train_and_report(cfg, resume, draw=args.draw, report_on_val=fitted)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data.build import resolve_root
    from .engine.rundir import fresh_out_dir

    cfg = load_config("demo_bccd", args.overrides)
    _apply_data_path(cfg, args.data)
    cfg.out_dir = args.out or fresh_out_dir(cfg.out_dir)  # an earlier demo's results stay
    try:
        resolve_root(cfg.data.root)
    except FileNotFoundError:
        from .data.download import download_bccd

        cfg.data.root = download_bccd(os.environ.get("MULTIBOX_DATA", "datasets"))
    return _train_and_report(cfg, None, draw=None)


def _dataset_for_checkpoint(folder: str, split: str | None, names: list[str] | None):
    """A split of any dataset folder, its classes matched by name to a checkpoint's (``names``;
    None: as found): the test split, else the validation split, else the whole folder (``split``
    chooses)."""
    from .data.base import remap_classes, verify_images
    from .data.build import layout_of

    layout = layout_of(folder)
    print(f"found {layout.summary()}")
    if split is None:
        split = next(s for s in ("test", "val", "all", "train") if s in layout.splits)
    dataset = layout.load(split, None, skip_bad=True)
    verify_images(dataset, skip_bad=True)  # an undecodable image is skipped and listed, before scoring
    return (dataset if names is None else remap_classes(dataset, names)), split


def _cmd_check(args: argparse.Namespace) -> int:
    """Everything about a dataset folder before a minute of training is spent."""
    from .data.base import verify_images
    from .data.build import layout_of
    from .data.stats import box_stats
    from .engine.recipe import fit_model, prior_shapes
    from .viz.draw import plot_box_shapes

    layout = layout_of(args.data)
    print(f"found {layout.summary()}")
    name = os.path.basename(os.path.normpath(layout.root)) or "data"
    out = args.out or os.path.join("runs", "check", name)
    os.makedirs(out, exist_ok=True)
    problems = [f"layout: {n}" for n in layout.notes]
    names = None
    for split in layout.splits:
        ds = layout.load(split, names, skip_bad=True)
        verify_images(ds, skip_bad=True)
        stats = box_stats(ds)
        print(f"\n{split}: {stats.table()}")
        p = ds.problems
        problems += [f"{split}: skipped: {r}" for r in p.skip_reasons]
        problems += [f"{split}: {line}" for line in p.lines() if not line.startswith("skipped ")]
        if names is None:
            names = ds.class_names
            kwargs, _, reasons = fit_model(stats)
            w, h = stats.relative_wh()
            picture = os.path.join(out, "box_shapes.png")
            plot_box_shapes(w, h, prior_shapes(kwargs), picture, title=f"{name}/{split}: boxes and the recipe's priors")
            print("the recipe a training run would choose:\n  " + "\n  ".join(reasons))
    with open(os.path.join(out, "problems.txt"), "w") as f:
        f.write("\n".join(problems) + ("\n" if problems else "no problems found\n"))
    print(f"\n{len(problems)} problem(s) found" + (":\n  " + "\n  ".join(problems[:30]) if problems else ""))
    print(f"wrote {picture} and {os.path.join(out, 'problems.txt')}")
    return 0


def _cmd_val(args: argparse.Namespace) -> int:
    from .config import config_from_dict
    from .data.build import load_split
    from .inference.checkpoint import load_checkpoint, model_from_checkpoint
    from .inference.device import resolve_device

    if args.checkpoint.lower().endswith((".onnx", ".xml")):
        return _val_export(args)
    device = resolve_device(args.device)  # before any data is read
    ckpt = load_checkpoint(args.checkpoint)
    model, names = model_from_checkpoint(ckpt, args.checkpoint)
    cfg = config_from_dict(ckpt.get("config", {}))
    if args.data and not os.path.isdir(os.path.join(args.data, os.path.basename(os.path.normpath(cfg.data.root)))):
        dataset, split = _dataset_for_checkpoint(args.data, args.split, names)
    else:  # the checkpoint's own dataset, found in --data (a folder holding it) or where it was
        _apply_data_path(cfg, args.data)
        split = args.split or cfg.data.test or cfg.data.val
        dataset = load_split(cfg.data, split, names)
        if cfg.data.format == "coco" and ckpt.get("category_ids"):
            dataset.category_ids = list(ckpt["category_ids"])
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), f"val_{split}")
    for name, value in _test_time_overrides(args).items():
        setattr(model.postprocess_config, name, value)
    if args.voc_convention:
        dataset.voc_convention = args.voc_convention
    report = _score_and_report(model, dataset, out, device=device, draw=args.draw)
    print(report.table())
    print(f"wrote metrics.json, metrics.txt, pr_curves/, errors.png and predictions/ to {out}")
    return 0


def _val_export(args: argparse.Namespace) -> int:
    """``multibox val`` of an ONNX or OpenVINO export (float or int8) on ``--data``."""
    from .inference.detector import Detector

    if not args.data:
        raise ValueError(f"{args.checkpoint}: an export holds no dataset; give the folder to score it on (--data DIR)")
    if _test_time_overrides(args):
        raise ValueError(f"{args.checkpoint}: --tta and --box-voting apply to checkpoints; an export runs its own")
    from .data.base import remap_classes

    # the data first: reading it may fork worker processes, which must not follow the runtime's threads
    dataset, split = _dataset_for_checkpoint(args.data, args.split, None)
    det = Detector.from_checkpoint(args.checkpoint)
    dataset = remap_classes(dataset, det.class_names)
    if args.voc_convention:
        dataset.voc_convention = args.voc_convention
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), f"val_{split}")
    report = _score_and_report(det, dataset, out, workers=0, draw=args.draw)  # the runtime has its own threads
    print(report.table())
    print(f"{det.precision} {os.path.basename(args.checkpoint)}; wrote metrics.json, metrics.txt and pictures to {out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .inference.detector import Detector
    from .inference.predict import predict_files

    det = Detector.from_checkpoint(args.model, device=args.device)
    for name, value in _test_time_overrides(args).items():
        if not isinstance(det, Detector):
            raise ValueError(
                f"{args.model}: --{name.replace('_', '-')} applies to checkpoints; an ONNX export runs "
                f"the {_TEST_TIME_WHAT[name]} its model was exported with (set model.kwargs.{name} "
                "before exporting)"
            )
        setattr(det, name, value)
    summary = predict_files(
        det,
        args.sources,
        args.out,
        conf=args.conf,
        iou=args.iou,
        max_det=args.max_det,
        batch_size=args.batch_size,
        draw=not args.no_draw,
        save_txt=not args.no_txt,
        save_format=args.save_format,
    )
    print(summary.table())
    print(f"wrote images/, labels/, detections.json (COCO results), images.json and summary.json to {args.out}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from .config import config_from_dict, load_config
    from .data.build import load_split
    from .data.transforms import SSDTransform
    from .inference.detector import Detector
    from .viz.dataset import show_dataset
    from .viz.draw import save_image

    if not args.config and not args.checkpoint:
        raise ValueError("give a dataset config (-c PRESET or YAML) or a --checkpoint")
    detector = None
    if args.checkpoint:
        from .inference.checkpoint import load_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        cfg = config_from_dict(ckpt.get("config", {})) if not args.config else load_config(args.config, args.overrides)
        names = list(ckpt["class_names"])
        if args.predict:
            detector = Detector.from_checkpoint(args.checkpoint)
    else:
        cfg = load_config(args.config, args.overrides)
        names = cfg.data.class_names
    _apply_data_path(cfg, args.data)
    split = args.split or cfg.data.train
    dataset = load_split(cfg.data, split, names)
    augment = None
    if args.augment:
        from .models import create_model, offline_kwargs

        kwargs = dict(cfg.model.kwargs, **offline_kwargs(cfg.model.name))
        size = create_model(cfg.model.name, num_classes=dataset.num_classes, **kwargs).image_size
        augment = SSDTransform(size, train=True, config=cfg.data.augment, seed=args.seed)
    grid = show_dataset(dataset, n=args.num, augment=augment, detector=detector, conf=args.conf, seed=args.seed)
    save_image(args.out, grid)
    print(
        f"wrote {args.out}: {min(args.num, len(dataset))} images of {dataset.name}"
        + (" after training augmentation" if augment else "")
        + (" beside predictions" if detector else "")
    )
    return 0


def _calibration_images(args: argparse.Namespace, ckpt: dict) -> list[str]:
    """Images to calibrate int8 on: ``--calibration`` (folders, globs or files), else the
    checkpoint's training split when its dataset is found; ``--calibration-images`` of them,
    spread evenly."""
    from .inference.predict import expand_sources

    if args.calibration:
        paths, _ = expand_sources(args.calibration)
    else:
        from .config import config_from_dict
        from .data.build import load_split

        cfg = config_from_dict(ckpt.get("config", {}))
        try:
            cfg.data.skip_bad = True
            train = load_split(cfg.data, cfg.data.train, list(ckpt["class_names"]))
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(
                f"--int8 needs calibration images: the checkpoint's training data was not found ({e}); "
                "give --calibration DIR (50-200 images like those the model will see)"
            ) from None
        paths = [r.image_path for r in train.records]
        print(f"calibrating on the training split {train.name}")
    if not paths:
        raise ValueError("--calibration names no images")
    n = min(args.calibration_images, len(paths))
    step = len(paths) / n
    return [paths[int(i * step)] for i in range(n)]


def _cmd_export(args: argparse.Namespace) -> int:
    import tempfile

    from .inference.checkpoint import load_checkpoint, model_from_checkpoint
    from .inference.export import export_onnx, export_openvino, export_program

    ckpt = load_checkpoint(args.checkpoint)
    model, names = model_from_checkpoint(ckpt, args.checkpoint)
    stem = os.path.splitext(args.checkpoint)[0] + (".int8" if args.int8 else "")
    ext = {"onnx": ".onnx", "openvino": ".xml", "torch-export": ".pt2"}[args.format]
    out = args.out or stem + ext
    if args.format == "torch-export":
        if args.int8:
            raise ValueError("--int8 applies to --format onnx and openvino")
        export_program(model, out, names)
        print(f"wrote {out} ({os.path.getsize(out) / 1e6:.1f} MB)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = out if args.format == "onnx" else os.path.join(tmp, "model.onnx")
        if args.int8:
            from .inference.quantize import quantize_onnx, quantize_openvino

            images = _calibration_images(args, ckpt)
            float_path = os.path.join(tmp, "float.onnx")
            export_onnx(model, float_path, names, max_detections=args.max_det)
            print(f"quantising the network to int8, calibrated on {len(images)} images")
            if args.format == "openvino":
                quantize_openvino(float_path, out, images)
            else:
                quantize_onnx(float_path, onnx_path, images)
        else:
            export_onnx(model, onnx_path, names, max_detections=args.max_det)
            if args.format == "openvino":
                export_openvino(onnx_path, out)
    size = sum(os.path.getsize(p) for p in (out, os.path.splitext(out)[0] + ".bin") if os.path.exists(p))
    print(f"wrote {out} ({size / 1e6:.1f} MB)" + ("; score it with multibox val" if args.int8 else ""))
    return 0


def _cmd_import_torchvision(args: argparse.Namespace) -> int:
    from .inference.interop import import_torchvision_ssd300

    import_torchvision_ssd300(args.weights, args.out)
    print(f"wrote {args.out}: multibox ssd300_vgg16 with torchvision's COCO classes, priors and normalisation")
    return 0


_TEST_TIME_WHAT = {"tta": "mirroring", "box_voting": "box voting"}


def _test_time_overrides(args: argparse.Namespace) -> dict:
    """The test-time settings given on the command line (``--tta``, ``--box-voting``), by the
    name of their model setting (``tta``, ``box_voting``), to override the checkpoint's."""
    given = {"tta": args.tta, "box_voting": None if args.box_voting is None else args.box_voting == "on"}
    return {name: value for name, value in given.items() if value is not None}


def _add_test_time_flags(p: argparse.ArgumentParser) -> None:
    """``--tta`` and ``--box-voting``, shared by ``val`` and ``predict``."""
    p.add_argument(
        "--tta", choices=TTA_CHOICES, help="average over mirrored views (default: the checkpoint's model setting)"
    )
    p.add_argument(
        "--box-voting", choices=("on", "off"), help="box voting after NMS (default: the checkpoint's model setting)"
    )


def _bounded(cast, low: float, high: float | None = None):
    """An argparse type: a number (``cast``: int or float) of at least ``low`` (and at most ``high``)."""
    what = f"a number between {low:g} and {high:g}" if high is not None else f"a whole number >= {low}"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    return parse


_fraction = _bounded(float, 0, 1)  # thresholds
_positive_int = _bounded(int, 1)  # counts that must be at least one
_count = _bounded(int, 0)  # counts that may be zero


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multibox", description="Single Shot MultiBox Detector toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train SSDLite-EfficientNet-Lite0 on BCCD, evaluate and draw (~10 min, CPU)")
    p.add_argument("--data", help="BCCD folder, or a folder containing 'bccd' (default: searched, else downloaded)")
    p.add_argument("--out", help="output folder (default runs/demo)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.epochs=10")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train a detector on a dataset folder, or from a config preset or YAML file")
    p.add_argument("--config", "-c", help="preset name (multibox presets) or YAML path; without it, --data is fitted")
    p.add_argument("--data", help="dataset folder: any supported layout (with -c: overrides data.root)")
    p.add_argument("--time", default="10m", help="training time for --data without -c (default 10m)")
    p.add_argument("--weights", help="start from this checkpoint's weights (fine-tuning; any class list)")
    p.add_argument("--out", help="output folder (overrides out_dir)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        help="resume from a checkpoint (default: OUT/last.pt, which must exist; 'if-present': only when it does)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out instead of refusing")
    p.add_argument("--draw", type=_count, default=24, help="test images to draw predictions on")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.lr=0.01")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("val", help="evaluate a checkpoint on a dataset split")
    p.add_argument("--checkpoint", required=True, help="a checkpoint (.pt), or an export (.onnx, .xml) with --data")
    p.add_argument(
        "--voc-convention",
        choices=("devkit", "continuous"),
        help="VOC AP as VOCevaldet.m (inclusive pixels, IoU >=) or continuous (IoU >); default: by the data's format",
    )
    p.add_argument("--split", help="split name (default: the config's test split)")
    p.add_argument("--data", help="dataset folder (default: the one it was trained on)")
    p.add_argument("--out", help="output folder (default: beside the checkpoint)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--draw", type=_count, default=24)
    _add_test_time_flags(p)
    p.set_defaults(func=_cmd_val)

    p = sub.add_parser("evaluate", help="metrics of a COCO results file against COCO ground truth")
    p.add_argument("--gt", required=True, help="COCO ground-truth JSON")
    p.add_argument("--detections", required=True, help="COCO results JSON (list of detections)")
    p.add_argument("--out", help="folder for metrics.json and PR curves")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("predict", help="detect objects in images, folders, globs, videos, cameras or streams")
    p.add_argument("model", help="a checkpoint (.pt) or an exported .onnx file")
    p.add_argument(
        "sources",
        nargs="+",
        help="image files, folders, glob patterns, video files, a camera index (0), stream URLs "
        "(rtsp://, http://...) or image URLs",
    )
    p.add_argument(
        "--save-format",
        nargs="+",
        choices=("yolo", "voc", "coco"),
        default=[],
        help="also write the detections as annotations for labelling tools: yolo/, voc/, coco/ in --out",
    )
    p.add_argument("--out", default="runs/predict", help="output folder (default runs/predict)")
    p.add_argument("--conf", type=_fraction, default=0.25, help="minimum score, 0-1 (default 0.25)")
    p.add_argument("--iou", type=_fraction, default=None, help="NMS IoU threshold, 0-1 (default: the model's, 0.45)")
    p.add_argument(
        "--max-det", type=_positive_int, default=None, help="detections per image (default: the model's, 200)"
    )
    p.add_argument("--batch-size", type=_positive_int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-draw", action="store_true", help="do not write pictures")
    p.add_argument("--no-txt", action="store_true", help="do not write per-image text files")
    _add_test_time_flags(p)
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("check", help="a dataset folder: its format, splits, boxes per class, box shapes, problems")
    p.add_argument("--data", required=True, help="dataset folder (any supported layout)")
    p.add_argument("--out", help="folder for box_shapes.png and problems.txt (default runs/check/<name>)")
    p.set_defaults(func=_cmd_check)

    p = sub.add_parser("show", help="draw a dataset's ground truth (after augmentation, beside predictions)")
    p.add_argument("--config", "-c", help="preset name or YAML path naming the dataset")
    p.add_argument("--checkpoint", help="a checkpoint: its dataset (unless -c) and, with --predict, its predictions")
    p.add_argument("--predict", action="store_true", help="draw the checkpoint's predictions beside ground truth")
    p.add_argument("--split", help="split name (default: the training split)")
    p.add_argument("--augment", action="store_true", help="show images after the training augmentation")
    p.add_argument("--num", "-n", type=_positive_int, default=12, help="images in the grid (default 12)")
    p.add_argument("--seed", type=int, default=0, help="which random images / augmentations")
    p.add_argument("--conf", type=_fraction, default=0.3)
    p.add_argument("--data", help="dataset folder (overrides data.root)")
    p.add_argument("--out", default="show.jpg")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("export", help="export a checkpoint: ONNX (decode + NMS included) or a torch.export program")
    p.add_argument("checkpoint")
    p.add_argument(
        "--format",
        choices=("onnx", "openvino", "torch-export"),
        default="onnx",
        help="onnx: the whole detector (ONNX Runtime); openvino: the same as an OpenVINO IR (.xml + .bin); "
        "torch-export: the network as a .pt2 program",
    )
    p.add_argument("--int8", action="store_true", help="quantise the network to int8 (onnx, openvino)")
    p.add_argument(
        "--calibration",
        nargs="+",
        help="images to calibrate int8 on: folders, globs or files (default: the checkpoint's training split)",
    )
    p.add_argument("--calibration-images", type=_positive_int, default=100, help="how many (default 100)")
    p.add_argument("--out", help="output file (default: beside the checkpoint)")
    p.add_argument(
        "--max-det", type=_positive_int, default=None, help="detections per image in the graph (default 200)"
    )
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("import-torchvision", help="convert torchvision ssd300_vgg16 COCO weights to a checkpoint")
    p.add_argument("weights", help="torchvision ssd300_vgg16 state dict (.pth or .safetensors)")
    p.add_argument("--out", required=True, help="multibox checkpoint to write")
    p.set_defaults(func=_cmd_import_torchvision)

    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--num-classes", type=_positive_int, default=20, help="object classes (default 20, as Pascal VOC)")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("presets", help="list the config presets")
    p.set_defaults(func=_cmd_presets)
    return parser


class _ConsoleHandler(logging.Handler):
    """multibox's log records as the command line shows them: information on stdout, warnings
    and errors on stderr after their level; written through tqdm so progress bars stay whole."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            msg = self.format(record)
            if record.levelno >= logging.WARNING:
                tqdm.write(f"{record.levelname.lower()}: {msg}", file=sys.stderr)
            else:
                tqdm.write(msg)
        except Exception:  # a closed stream must not end the run
            self.handleError(record)


def show_logs(level: int = logging.INFO) -> None:
    """Show the ``multibox`` logger's messages on the console, as the command line does."""
    logger = logging.getLogger("multibox")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
    logger.setLevel(level)


def user_error(e: BaseException) -> str | None:
    """The one-line message for a failure the user caused (bad config, data, checkpoint,
    device, arguments, an unwritable or full disk, too little memory), else None (a bug:
    its traceback is shown)."""
    import errno

    import torch

    if isinstance(e, OSError) and not isinstance(e, FileNotFoundError) and e.errno is not None:
        where = e.filename or "output"
        hints = {
            errno.ENOSPC: "no space left on the device; free some or choose another --out",
            errno.EDQUOT: "disk quota exceeded; free some space or choose another --out",
            errno.EROFS: "the file system is read-only; choose another --out",
            errno.EACCES: "permission denied; choose a folder you can write to (--out)",
            errno.EPERM: "operation not permitted; choose a folder you can write to (--out)",
        }
        return f"{where}: {hints.get(e.errno, e.strerror)}"
    if isinstance(e, (ValueError, FileNotFoundError)):
        return str(e)
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        detail = str(e).splitlines()[0] if str(e) else "MemoryError"
        return f"out of memory ({detail}); lower train.batch_size or the image size"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    show_logs()
    keep_freed_memory()  # large tensors reuse freed memory instead of fresh pages (see multibox.memory)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"multibox {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = user_error(e)
        if message is None or os.environ.get("MULTIBOX_DEBUG"):
            raise
        print(f"multibox {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
