"""Accumulate detections image by image, then report VOC and COCO metrics.

    ev = Evaluator(class_names)
    for images, targets in loader:
        for pred, tgt in zip(detector.predict(images), targets):
            ev.add(tgt["image_id"], tgt["boxes"], tgt["labels"], pred.boxes, pred.scores, pred.labels,
                   difficult=tgt["difficult"], image_size=tgt["size"])
    report = ev.compute()
    print(report.table())

At ``add`` time each detection is paired with the ground truth of its class
that it overlaps most in its image; only those few numbers per detection are
kept (plus the boxes, for COCO), so memory grows with the number of
detections, never with image data. Any IoU threshold can then be evaluated.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..core.boxes import box_iou_inclusive_numpy, box_iou_numpy
from .coco import coco_evaluate, coco_ground_truth, coco_results
from .voc import ERROR_KINDS, VOC_CONVENTIONS, ClassResult, class_result, error_breakdown, mean_ap


def _as_boxes(x, what: str, image_id) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"image {image_id!r}: {what} must be (K, 4) xyxy, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"image {image_id!r}: {what} contain NaN or inf")
    bad = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if bad.any():
        i = int(np.nonzero(bad)[0][0])
        raise ValueError(f"image {image_id!r}: {what}[{i}] = {arr[i].tolist()} has negative width or height")
    return arr


@dataclass
class EvalReport:
    """Results of :meth:`Evaluator.compute`."""

    class_names: list[str]
    voc07: dict[int, ClassResult]  # label -> result at IoU 0.5, 11-point
    voc: dict[int, ClassResult]  # label -> result at IoU 0.5, area (VOC2010+)
    ap_at: dict[float, float] = field(default_factory=dict)  # extra IoU thresholds -> area mAP
    coco: dict[str, float] | None = None
    num_images: int = 0
    errors: dict[int, dict[str, int]] | None = None  # label -> error breakdown at IoU 0.5
    voc_convention: str = "continuous"  # devkit: inclusive pixels, IoU >= t; continuous: IoU > t

    @property
    def map07(self) -> float:
        return mean_ap(self.voc07)

    @property
    def map(self) -> float:
        return mean_ap(self.voc)

    def table(self) -> str:
        """Per-class table: AP (11-point and area), ground truths and detections."""
        w = max([len(n) for n in self.class_names] + [5])
        lines = [f"{'class':<{w}}  {'AP50(07)':>8}  {'AP50':>6}  {'GT':>6}  {'dets':>7}"]
        for label, name in enumerate(self.class_names, start=1):
            r07, r = self.voc07[label], self.voc[label]
            fmt = lambda v: "   n/a" if v is None else f"{v:6.4f}"  # noqa: E731
            lines.append(f"{name:<{w}}  {fmt(r07.ap):>8}  {fmt(r.ap):>6}  {r.num_gt:>6}  {r.num_det:>7}")
        lines.append(
            f"{'mean':<{w}}  {self.map07:8.4f}  {self.map:6.4f}  "
            f"{sum(r.num_gt for r in self.voc.values()):>6}  {sum(r.num_det for r in self.voc.values()):>7}"
        )
        for t, v in sorted(self.ap_at.items()):
            lines.append(f"mAP@{t:.2f} (area): {v:.4f}")
        lines.append(f"VOC AP convention: {CONVENTION_TEXT[self.voc_convention]}")
        if self.coco:
            lines.append(
                "COCO: " + "  ".join(f"{k} {'n/a' if math.isnan(v) else f'{v:.4f}'}" for k, v in self.coco.items())
            )
        if self.errors:
            lines += [
                "",
                "each class's best-scored detections, as many as its objects (IoU 0.5); "
                "missed: objects no detection finds",
            ]
            lines.append(f"{'class':<{w}}  " + "  ".join(f"{k:>12}" for k in ERROR_KINDS))
            for label, name in enumerate(self.class_names, start=1):
                lines.append(f"{name:<{w}}  " + "  ".join(f"{self.errors[label][k]:>12}" for k in ERROR_KINDS))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def clean(v):
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

        return {
            "num_images": self.num_images,
            "voc_convention": self.voc_convention,
            "mAP50_voc07": clean(self.map07),
            "mAP50": clean(self.map),
            "per_class": {
                name: {
                    "AP50_voc07": self.voc07[l].ap,
                    "AP50": self.voc[l].ap,
                    "num_gt": self.voc[l].num_gt,
                    "num_det": self.voc[l].num_det,
                    "errors": None if self.errors is None else self.errors[l],
                }
                for l, name in enumerate(self.class_names, start=1)
            },
            "mAP_at_iou": {f"{t:.2f}": clean(v) for t, v in sorted(self.ap_at.items())},
            "coco": None if self.coco is None else {k: clean(v) for k, v in self.coco.items()},
        }

    def save_json(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)


CONVENTION_TEXT = {
    "devkit": "devkit (VOCevaldet.m: inclusive pixel coordinates, IoU >= threshold)",
    "continuous": "continuous (IoU of continuous coordinates, IoU > threshold)",
}


class Evaluator:
    """Incremental detection evaluator (VOC AP ours, COCO through faster-coco-eval).

    Args:
        class_names: names of labels ``1..C``.
        category_ids: the dataset's category id of each label (for COCO output);
            default ``1..C``.
        iou_thresholds: extra IoU thresholds at which to report area mAP.
        voc_convention: ``"devkit"`` (the official ``VOCevaldet.m``: inclusive pixel
            coordinates, a match at ``IoU >= threshold``; for VOC-style annotations) or
            ``"continuous"`` (continuous coordinates, ``IoU > threshold``; COCO, YOLO).
    """

    def __init__(
        self,
        class_names: Sequence[str],
        category_ids: Sequence[int] | None = None,
        iou_thresholds: Sequence[float] = (),
        voc_convention: str = "continuous",
    ) -> None:
        if voc_convention not in VOC_CONVENTIONS:
            raise ValueError(f"voc_convention must be one of {VOC_CONVENTIONS}, got {voc_convention!r}")
        self.voc_convention = voc_convention
        self.class_names = list(class_names)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(f"{len(self.category_ids)} category ids for {len(self.class_names)} classes")
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self._seen: dict = {}
        self._images: list[tuple[int, int]] = []  # (height, width) or (0, 0)
        # ground truth, flat
        self._gt_boxes: list[np.ndarray] = []
        self._gt_labels: list[np.ndarray] = []
        self._gt_difficult: list[np.ndarray] = []
        # detections, flat, with their best ground truth
        # rows: image, label, score, overlap, gt index, gt difficult, best overlap with another class
        self._det: list[np.ndarray] = []
        self._det_boxes: list[np.ndarray] = []
        self._num_gt = 0

    def __len__(self) -> int:
        return len(self._images)

    def _check_labels(self, labels: np.ndarray, what: str, image_id) -> np.ndarray:
        labels = np.asarray(labels).reshape(-1).astype(np.int64)
        bad = (labels < 1) | (labels > len(self.class_names))
        if bad.any():
            raise ValueError(
                f"image {image_id!r}: unknown class label {int(labels[bad][0])} in {what} "
                f"(expected 1..{len(self.class_names)})"
            )
        return labels

    def add(
        self,
        image_id,
        gt_boxes,
        gt_labels,
        det_boxes,
        det_scores,
        det_labels,
        difficult=None,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        """Add one image: ground truth and detections, boxes xyxy in pixels, labels ``1..C``."""
        if image_id in self._seen:
            raise ValueError(f"image {image_id!r} was added twice")
        if image_size is not None and (image_size[0] <= 0 or image_size[1] <= 0):
            raise ValueError(f"image {image_id!r}: image size must be positive, got {tuple(image_size)}")
        gb = _as_boxes(gt_boxes, "ground-truth boxes", image_id)
        gl = self._check_labels(gt_labels, "ground truth", image_id)
        db = _as_boxes(det_boxes, "detection boxes", image_id)
        ds = np.asarray(det_scores, dtype=np.float64).reshape(-1)
        dl = self._check_labels(det_labels, "detections", image_id)
        gd = np.zeros(len(gb), dtype=bool) if difficult is None else np.asarray(difficult, dtype=bool).reshape(-1)
        if not (len(gb) == len(gl) == len(gd)):
            raise ValueError(f"image {image_id!r}: {len(gb)} gt boxes, {len(gl)} labels, {len(gd)} difficult flags")
        if not (len(db) == len(ds) == len(dl)):
            raise ValueError(f"image {image_id!r}: {len(db)} detection boxes, {len(ds)} scores, {len(dl)} labels")
        if not np.isfinite(ds).all():
            raise ValueError(f"image {image_id!r}: detection scores contain NaN or inf")

        index = len(self._images)
        self._seen[image_id] = index
        self._images.append(tuple(int(v) for v in image_size) if image_size is not None else (0, 0))
        self._gt_boxes.append(gb)
        self._gt_labels.append(gl)
        self._gt_difficult.append(gd)
        if len(db):
            if len(gb):
                devkit = self.voc_convention == "devkit"
                iou = box_iou_inclusive_numpy(db, gb) if devkit else box_iou_numpy(db, gb)
                same = dl[:, None] == gl[None, :]
                other = np.where(same, 0.0, iou).max(axis=1)  # for the error breakdown
                iou[~same] = -np.inf  # only objects of the detection's class
                j = iou.argmax(axis=1)  # the first of equal overlaps, as the devkit's strict "ov > ovmax"
                ov = iou[np.arange(len(db)), j]
                has = ov > -np.inf  # devkit: only objects it intersects; continuous: any of its class
                gidx = np.where(has, self._num_gt + j, -1)
                gdiff = np.where(has, gd[j], False)
                ov = np.where(has, ov, 0.0)
            else:
                gidx = np.full(len(db), -1)
                gdiff = np.zeros(len(db), dtype=bool)
                ov = np.zeros(len(db))
                other = np.zeros(len(db))
            self._det.append(np.stack([np.full(len(db), index), dl, ds, ov, gidx, gdiff, other], axis=1))
            self._det_boxes.append(db)
        self._num_gt += len(gb)

    # --- results ------------------------------------------------------------

    def _flat(self):
        det = np.concatenate(self._det) if self._det else np.zeros((0, 7))
        gl = np.concatenate(self._gt_labels) if self._gt_labels else np.zeros(0, dtype=np.int64)
        gd = np.concatenate(self._gt_difficult) if self._gt_difficult else np.zeros(0, dtype=bool)
        return det, gl, gd

    def _per_class(self):
        """For each label: its detections' match columns (score, overlap, gt index, gt difficult,
        overlap with another class) and its number of non-difficult objects."""
        det, gl, gd = self._flat()
        for label in range(1, len(self.class_names) + 1):
            d = det[det[:, 1] == label]
            cols = (d[:, 2], d[:, 3], d[:, 4].astype(np.int64), d[:, 5].astype(bool), d[:, 6])
            yield label, cols, int(((gl == label) & ~gd).sum())

    def voc(self, iou_threshold: float = 0.5, use_07_metric: bool = False) -> dict[int, ClassResult]:
        """Per-class VOC AP at one IoU threshold."""
        at_least = self.voc_convention == "devkit"
        return {
            label: class_result(*cols[:4], num_gt, iou_threshold, use_07_metric, at_least)
            for label, cols, num_gt in self._per_class()
        }

    def errors(self, iou_threshold: float = 0.5) -> dict[int, dict[str, int]]:
        """Per class, what its best-scored detections are (see :func:`multibox.eval.voc.error_breakdown`)."""
        at_least = self.voc_convention == "devkit"
        return {
            label: error_breakdown(*cols, num_gt, iou_threshold, at_least=at_least)
            for label, cols, num_gt in self._per_class()
        }

    def coco(self) -> dict[str, float]:
        """COCO AP/AR through faster-coco-eval (difficult objects count as ordinary objects)."""
        image_ids = list(range(1, len(self._images) + 1))
        sizes = [s if s != (0, 0) else (1, 1) for s in self._images]
        gt = coco_ground_truth(image_ids, sizes, self._gt_boxes, self._gt_labels, self.category_ids, self.class_names)
        det, _, _ = self._flat()
        boxes = np.concatenate(self._det_boxes) if self._det_boxes else np.zeros((0, 4))
        img = det[:, 0].astype(np.int64)
        order = np.argsort(img, kind="stable")
        per_image = np.split(order, np.cumsum(np.bincount(img, minlength=len(self._images)))[:-1])
        res = coco_results(
            image_ids,
            [boxes[p] for p in per_image],
            [det[p, 2] for p in per_image],
            [det[p, 1].astype(np.int64) for p in per_image],
            self.category_ids,
        )
        return coco_evaluate(gt, res)

    def compute(self, coco: bool = True) -> EvalReport:
        """VOC AP at 0.5 with both interpolations, extra thresholds, and COCO metrics."""
        report = EvalReport(
            self.class_names,
            self.voc(0.5, True),
            self.voc(0.5, False),
            num_images=len(self),
            errors=self.errors(0.5),
            voc_convention=self.voc_convention,
        )
        for t in self.iou_thresholds:
            report.ap_at[t] = mean_ap(self.voc(t, False))
        if coco:
            report.coco = self.coco()
        return report
