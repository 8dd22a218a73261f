"""Command line: a thin layer over the Python API.

    multibox models                                list the model zoo
    multibox evaluate --gt GT.json --detections RESULTS.json [--out DIR]
                                                   VOC + COCO metrics of a COCO results file
"""
from __future__ import annotations

import argparse
import sys


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


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import os

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multibox", description="Single Shot MultiBox Detector toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--num-classes", type=int, default=20, help="object classes (default 20, as Pascal VOC)")
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("evaluate", help="metrics of a COCO results file against COCO ground truth")
    p.add_argument("--gt", required=True, help="COCO ground-truth JSON")
    p.add_argument("--detections", required=True, help="COCO results JSON (list of detections)")
    p.add_argument("--out", help="folder for metrics.json and PR curves")
    p.set_defaults(func=_cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
