"""COCO metrics through faster-coco-eval (a maintained C++ re-implementation of
pycocotools' COCOeval that installs from PyPI wheels with no compiler and agrees
with pycocotools' numbers).

Our data are converted to COCO dicts without loss: boxes to ``[x, y, w, h]`` in
pixels, labels back to the dataset's own category ids, images to integer ids.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np

COCO_STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP_small",
    "AP_medium",
    "AP_large",
    "AR1",
    "AR10",
    "AR100",
    "AR_small",
    "AR_medium",
    "AR_large",
)


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.concatenate((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), axis=1)


def coco_ground_truth(
    image_ids: Sequence[int],
    image_sizes: Sequence[tuple[int, int]],
    boxes: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    category_ids: Sequence[int],
    class_names: Sequence[str],
    iscrowd: Sequence[np.ndarray] | None = None,
) -> dict:
    """A COCO ground-truth dict. ``labels`` are ``1..C``; ``category_ids[l - 1]`` is label l's id."""
    images, anns = [], []
    ann_id = 1
    for i, (img_id, (h, w)) in enumerate(zip(image_ids, image_sizes)):
        images.append({"id": int(img_id), "width": int(w), "height": int(h)})
        xywh = xyxy_to_xywh(boxes[i])
        crowd = np.zeros(len(xywh), dtype=bool) if iscrowd is None else np.asarray(iscrowd[i], dtype=bool)
        for b, l, c in zip(xywh, np.asarray(labels[i]).reshape(-1), crowd):
            anns.append(
                {
                    "id": ann_id,
                    "image_id": int(img_id),
                    "category_id": int(category_ids[int(l) - 1]),
                    "bbox": [float(v) for v in b],
                    "area": float(b[2] * b[3]),
                    "iscrowd": int(c),
                }
            )
            ann_id += 1
    cats = [{"id": int(c), "name": str(n)} for c, n in zip(category_ids, class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def coco_results(
    image_ids: Sequence[int],
    boxes: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    category_ids: Sequence[int],
) -> list[dict]:
    """Detections in the COCO results format: ``image_id, category_id, bbox [x, y, w, h], score``."""
    out = []
    for img_id, b, s, l in zip(image_ids, boxes, scores, labels):
        for bb, ss, ll in zip(xyxy_to_xywh(b), np.asarray(s).reshape(-1), np.asarray(l).reshape(-1)):
            out.append(
                {
                    "image_id": int(img_id),
                    "category_id": int(category_ids[int(ll) - 1]),
                    "bbox": [round(float(v), 3) for v in bb],
                    "score": round(float(ss), 6),
                }
            )
    return out


def coco_evaluate(gt: dict, results: list[dict], verbose: bool = False) -> dict[str, float]:
    """Run COCOeval (bbox) on dicts; returns the 12 standard numbers by name."""
    from faster_coco_eval import COCO, COCOeval_faster

    if not gt["annotations"]:
        return {k: float("nan") for k in COCO_STAT_NAMES}
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = COCO(gt)
        coco_dt = coco_gt.loadRes(results) if results else None
        if coco_dt is None:
            return {k: 0.0 for k in COCO_STAT_NAMES}
        ev = COCOeval_faster(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # COCOeval writes -1 where a size range has no ground truth: that is "no value", not a score
    return {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(COCO_STAT_NAMES, ev.stats[:12])}
