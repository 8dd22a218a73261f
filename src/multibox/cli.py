"""Command line: a thin layer over the Python API.

    multibox models              list the model zoo with priors and parameter counts
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multibox", description="Single Shot MultiBox Detector toolkit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("models", help="list the model zoo")
    p.add_argument("--num-classes", type=int, default=20, help="object classes (default 20, as Pascal VOC)")
    p.set_defaults(func=_cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
