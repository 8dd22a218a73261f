"""Evaluation throughput: VOC (both interpolations) and COCO metrics over
5,000 images x 100 detections, against a straightforward devkit-style loop on a
subset (the loop is too slow to run on all of it).

    python -m benchmarks.bench_eval [--images 5000] [--dets 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from multibox.eval import Evaluator


def make_data(n_images: int, n_dets: int, num_classes: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_images):
        k = int(rng.integers(1, 10))
        xy = rng.uniform(0, 400, (k, 2))
        gb = np.concatenate((xy, xy + rng.uniform(10, 150, (k, 2))), 1)
        gl = rng.integers(1, num_classes + 1, k)
        src = gb[rng.integers(0, k, n_dets)] + rng.normal(0, 15, (n_dets, 4))
        db = np.concatenate((np.minimum(src[:, :2], src[:, 2:]), np.maximum(src[:, :2], src[:, 2:])), 1)
        dl = np.where(
            rng.random(n_dets) < 0.5, gl[rng.integers(0, k, n_dets)], rng.integers(1, num_classes + 1, n_dets)
        )
        out.append((i, gb, gl, db, rng.random(n_dets), dl))
    return out


def run(n_images: int = 5000, n_dets: int = 100) -> dict:
    data = make_data(n_images, n_dets)
    names = [f"c{i}" for i in range(20)]
    t0 = time.perf_counter()
    ev = Evaluator(names)
    for img_id, gb, gl, db, ds, dl in data:
        ev.add(img_id, gb, gl, db, ds, dl, image_size=(600, 600))
    t_add = time.perf_counter() - t0
    t1 = time.perf_counter()
    report = ev.compute(coco=False)
    t_voc = time.perf_counter() - t1
    t2 = time.perf_counter()
    coco = ev.coco()
    t_coco = time.perf_counter() - t2
    return {
        "images": n_images,
        "detections": n_images * n_dets,
        "add_s": t_add,
        "voc_both_s": t_voc,
        "coco_s": t_coco,
        "total_s": t_add + t_voc + t_coco,
        "mAP50": report.map,
        "coco_AP": coco["AP"],
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100)
    a = ap.parse_args()
    r = run(a.images, a.dets)
    print(
        f"{r['images']} images x {a.dets} detections ({r['detections']:,}): "
        f"accumulate {r['add_s']:.2f} s, VOC07+VOC12 AP {r['voc_both_s']:.2f} s, COCO {r['coco_s']:.2f} s, "
        f"total {r['total_s']:.2f} s  (mAP50 {r['mAP50']:.4f}, COCO AP {r['coco_AP']:.4f})"
    )
