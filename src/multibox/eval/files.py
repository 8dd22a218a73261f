"""Evaluate detections stored in files: a COCO ground-truth JSON and a COCO
results JSON (``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

import numpy as np

from .evaluator import EvalReport, Evaluator


def _load_json(path: str | os.PathLike, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def _xywh_to_xyxy(b, where: str) -> list[float]:
    if not isinstance(b, (list, tuple)) or len(b) != 4:
        raise ValueError(f"{where}: bbox must be [x, y, w, h], got {b!r}")
    x, y, w, h = (float(v) for v in b)
    if w < 0 or h < 0:
        raise ValueError(f"{where}: bbox {b} has a negative width or height")
    return [x, y, x + w, y + h]


def evaluate_coco_files(gt_path: str | os.PathLike, det_path: str | os.PathLike, iou_thresholds=(0.75,)) -> EvalReport:
    """VOC and COCO metrics for a COCO results file against a COCO ground-truth file.

    Categories without annotations are evaluated as classes without ground truth.
    A detection for an image or category id the ground truth does not have is an error.
    """
    gt = _load_json(gt_path, "ground-truth")
    dets = _load_json(det_path, "detections")
    if not isinstance(gt, dict) or not {"images", "annotations", "categories"} <= set(gt):
        raise ValueError(f"{gt_path}: a COCO ground-truth file needs 'images', 'annotations' and 'categories'")
    if not isinstance(dets, list):
        raise ValueError(f"{det_path}: a COCO results file is a list of detections")
    cats = sorted(gt["categories"], key=lambda c: c["id"])
    cat_to_label = {c["id"]: i + 1 for i, c in enumerate(cats)}
    images = {im["id"]: im for im in gt["images"]}
    gts: dict = defaultdict(lambda: ([], [], []))
    for a in gt["annotations"]:
        where = f"{gt_path}: annotation {a.get('id')}"
        if a["image_id"] not in images:
            raise ValueError(f"{where} refers to image id {a['image_id']} that is not in 'images'")
        if a["category_id"] not in cat_to_label:
            raise ValueError(f"{where} has unknown category id {a['category_id']}")
        g = gts[a["image_id"]]
        g[0].append(_xywh_to_xyxy(a["bbox"], where))
        g[1].append(cat_to_label[a["category_id"]])
        g[2].append(bool(a.get("iscrowd", 0) or a.get("ignore", 0)))
    dt: dict = defaultdict(lambda: ([], [], []))
    for i, d in enumerate(dets):
        where = f"{det_path}: detection {i}"
        if d.get("image_id") not in images:
            raise ValueError(f"{where} refers to image id {d.get('image_id')!r} that is not in the ground truth")
        if d.get("category_id") not in cat_to_label:
            raise ValueError(f"{where} has unknown category id {d.get('category_id')!r}")
        t = dt[d["image_id"]]
        t[0].append(_xywh_to_xyxy(d["bbox"], where))
        t[1].append(float(d["score"]))
        t[2].append(cat_to_label[d["category_id"]])
    ev = Evaluator([c["name"] for c in cats], [c["id"] for c in cats], iou_thresholds)
    for img_id, im in images.items():
        gb, gl, gd = gts.get(img_id, ([], [], []))
        db, ds, dl = dt.get(img_id, ([], [], []))
        ev.add(
            img_id,
            np.array(gb).reshape(-1, 4),
            gl,
            np.array(db).reshape(-1, 4),
            ds,
            dl,
            difficult=gd,
            image_size=(im.get("height", 1), im.get("width", 1)),
        )
    return ev.compute()
