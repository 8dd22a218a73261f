"""Training throughput on this machine: images/second of full training steps
(forward + loss + backward + SGD step) for ssdlite_effl0 (the demo's settings)
and ssd300_vgg16, and the data pipeline's images/second in one worker.

    python -m benchmarks.bench_train [--steps 6] [--data ../shared/datasets]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import torch

from multibox.config import load_config
from multibox.data.build import load_split
from multibox.data.transforms import SSDTransform, collate
from multibox.engine.trainer import Trainer


def train_rate(preset_overrides: list[str], steps: int) -> float:
    """Images/second of the median training step, after one warm-up step (allocations, oneDNN
    kernels); the batches are prepared beforehand, so data loading is not timed."""
    cfg = load_config(
        "demo_bccd", ["out_dir=/tmp/multibox_bench", "data.workers=0", "data.test=null"] + preset_overrides
    )
    tr = Trainer(cfg, progress=False)
    it = iter(tr.loader)
    batches = [next(it) for _ in range(min(steps, len(tr.loader)))]
    tr.train_step(batches[0])
    rates = []
    for b in batches[1:]:
        start = time.perf_counter()
        tr.train_step(b)
        rates.append(b["images"].shape[0] / (time.perf_counter() - start))
    return float(statistics.median(rates))


def pipeline_rate(data_cfg_overrides: list[str], size: int, n: int) -> float:
    cfg = load_config("demo_bccd", data_cfg_overrides)
    ds = load_split(cfg.data, cfg.data.train)
    ds.transform = SSDTransform((size, size), train=True)
    start = time.perf_counter()
    samples = [ds[i % len(ds)] for i in range(n)]
    collate(samples)
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--data", default=None, help="folder holding bccd/ and chess/")
    a = ap.parse_args()
    if a.data:
        os.environ["MULTIBOX_DATA"] = a.data
    warnings.simplefilter("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    rows = [
        ("ssdlite_effl0 320px, demo settings (batch 8)", train_rate([], a.steps)),
        (
            "ssd300_vgg16, batch 8",
            train_rate(
                ["model.name=ssd300_vgg16", "model.kwargs={}", "model.freeze=0", "train.batch_size=8"],
                max(3, a.steps // 2),
            ),
        ),
    ]
    print(f"{'training step (forward+loss+backward+SGD), CPU threads=' + str(torch.get_num_threads()):<64} images/s")
    for name, v in rows:
        print(f"  {name:<62} {v:7.1f}")
    print(f"{'data pipeline (read + augment + collate), 1 worker':<64} images/s")
    print(f"  {'BCCD 640x480 -> 320':<62} {pipeline_rate([], 320, 100):7.1f}")
    try:
        chess = pipeline_rate(["data.format=coco", "data.root=chess", "data.train=train"], 320, 40)
        print(f"  {'chess 2048x1371 -> 320':<62} {chess:7.1f}")
    except FileNotFoundError as e:
        print(f"  chess: skipped ({e})")


if __name__ == "__main__":
    main()
