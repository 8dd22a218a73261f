"""Command line: a thin layer over the Python API.

    multibox demo [--data PATH] [--out runs/demo]     train + evaluate + draw on BCCD (about 10 min on a CPU)
    multibox train --config PRESET [key=value ...]    train from a preset or YAML file, with overrides
    multibox val --checkpoint CKPT [--split test]     score a checkpoint, write metrics.json and plots
    multibox evaluate --gt GT.json --detections R.json [--out DIR]
    multibox models | presets                         list the model zoo / the config presets
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import create_model, list_models

    print(f"{'model':<16} {'input':>9} {'priors':>7} {'params':>12}  scores")
    for name in list_models():
        kwargs = {"pretrained_backbone": False} if name == "ssdlite_effl0" else {}
        m = create_model(name, num_classes=args.num_classes, **kwargs)
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
    from .viz import plot_pr_curves

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


def _train_and_report(cfg, resume: str | None, draw: int | None) -> int:
    from .engine.report import write_report
    from .engine.trainer import Trainer

    start = time.time()
    trainer = Trainer(cfg)
    if resume:
        trainer.resume(resume)
        print(f"resumed from {resume} at epoch {trainer.epoch}, step {trainer.step}")
    n_train = len(trainer.datasets["train"])
    print(f"training {cfg.model.name} on {trainer.datasets['train'].name} ({n_train} images, "
          f"{len(trainer.class_names)} classes: {', '.join(trainer.class_names)}) for {trainer.epochs} epochs "
          f"({trainer.total_iters} iterations of {cfg.train.batch_size}) -> {cfg.out_dir}")
    trainer.fit()
    train_s = time.time() - start
    if not trainer.is_main:
        return 0
    test = trainer.datasets.get("test")
    if test is None:
        return 0
    best = os.path.join(cfg.out_dir, "best.pt")
    chosen = "last epoch"
    if trainer.datasets.get("val") is not None and os.path.exists(best):
        from .engine.checkpoint import load_checkpoint

        trainer.model.load_state_dict(load_checkpoint(best)["model"])
        chosen = "best validation mAP"
    print(f"scoring {test.name} once with the {chosen} checkpoint")
    report = write_report(trainer.model, test, cfg.out_dir, device=trainer.device, workers=cfg.data.workers,
                          draw=draw, extra={"train_seconds": round(train_s, 1), "checkpoint": chosen,
                                            "model": cfg.model.name})
    print(report.table())
    print(f"total {time.time() - start:.0f} s; wrote metrics.json, metrics.txt, pr_curves/, predictions/, "
          f"training_curves.png and checkpoints to {cfg.out_dir}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config

    cfg = load_config(args.config, args.overrides)
    _apply_data_path(cfg, args.data)
    if args.out:
        cfg.out_dir = args.out
    resume = args.resume
    if resume == "auto":
        resume = os.path.join(cfg.out_dir, "last.pt")
        if not os.path.exists(resume):
            resume = None
    return _train_and_report(cfg, resume, draw=args.draw)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .config import load_config
    from .data.build import resolve_root

    cfg = load_config("demo_bccd", args.overrides)
    _apply_data_path(cfg, args.data)
    if args.out:
        cfg.out_dir = args.out
    try:
        resolve_root(cfg.data.root)
    except FileNotFoundError:
        from .data.download import download_bccd

        cfg.data.root = download_bccd(os.environ.get("MULTIBOX_DATA", "datasets"))
    return _train_and_report(cfg, None, draw=None)


def _cmd_val(args: argparse.Namespace) -> int:
    from .config import config_from_dict
    from .data.build import load_split
    from .engine.checkpoint import load_checkpoint, model_from_checkpoint
    from .engine.report import write_report

    ckpt = load_checkpoint(args.checkpoint)
    model, names = model_from_checkpoint(ckpt)
    cfg = config_from_dict(ckpt.get("config", {}))
    _apply_data_path(cfg, args.data)
    split = args.split or cfg.data.test or cfg.data.val
    dataset = load_split(cfg.data, split, names)
    if cfg.data.format == "coco" and ckpt.get("category_ids"):
        dataset.category_ids = list(ckpt["category_ids"])
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), f"val_{split}")
    report = write_report(model, dataset, out, device=args.device, draw=args.draw)
    print(report.table())
    print(f"wrote metrics.json, metrics.txt, pr_curves/ and predictions/ to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multibox", description="Single Shot MultiBox Detector toolkit")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train SSDLite-EfficientNet-Lite0 on BCCD, evaluate and draw (~10 min, CPU)")
    p.add_argument("--data", help="BCCD folder, or a folder containing 'bccd' (default: searched, else downloaded)")
    p.add_argument("--out", help="output folder (default runs/demo)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.epochs=10")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("train", help="train a detector from a config preset or YAML file")
    p.add_argument("--config", "-c", required=True, help="preset name (multibox presets) or YAML path")
    p.add_argument("--data", help="dataset folder (overrides data.root)")
    p.add_argument("--out", help="output folder (overrides out_dir)")
    p.add_argument("--resume", nargs="?", const="auto", help="resume from a checkpoint (default: OUT/last.pt)")
    p.add_argument("--draw", type=int, default=24, help="test images to draw predictions on")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. train.lr=0.01")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("val", help="evaluate a checkpoint on a dataset split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", help="split name (default: the config's test split)")
    p.add_argument("--data", help="dataset folder (default: the one it was trained on)")
    p.add_argument("--out", help="output folder (default: beside the checkpoint)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--draw", type=int, default=24)
    p.set_defaults(func=_cmd_val)

    p = sub.add_parser("evaluate", help="metrics of a COCO results file against COCO ground truth")
    p.add_argument("--gt", required=True, help="COCO ground-truth JSON")
    p.add_argument("--detections", required=True, help="COCO results JSON (list of detections)")
    p.add_argument("--out", help="folder for metrics.json and PR curves")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--num-classes", type=int, default=20, help="object classes (default 20, as Pascal VOC)")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("presets", help="list the config presets")
    p.set_defaults(func=_cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"multibox {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
