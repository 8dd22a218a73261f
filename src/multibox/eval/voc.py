"""Pascal VOC average precision.

Definitions follow the official VOC devkit (``VOCevaldet.m``):

* detections of a class are taken in decreasing score order (ties in the order they
  were added); each takes the ground truth of that class in its image with the highest
  IoU (the first of equals). If that IoU reaches the threshold and the object is not yet
  taken, it is a true positive and takes it; if the object was already taken, a false
  positive; below the threshold, a false positive;
* two conventions (``voc_convention``): ``"devkit"`` is ``VOCevaldet.m`` to the letter:
  coordinates are inclusive pixel indices (a box spans ``x2 - x1 + 1`` pixels) and a match
  needs ``IoU >= threshold``; ``"continuous"`` computes IoU of continuous coordinates and
  needs ``IoU > threshold`` (the rule of the devkit's later Python port);
* "difficult" objects do not count in the number of positives, and a detection
  whose best match is a difficult object is ignored (neither TP nor FP);
* AP is the VOC2007 11-point interpolated precision, or the VOC2010+ area under
  the precision envelope (precision made monotone from the right).

A class with no (non-difficult) ground truth has no AP; it is reported as
``None`` and left out of the mean rather than counted as 0.

The functions work on flat numpy arrays; :class:`multibox.eval.Evaluator`
produces them incrementally.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VOC_CONVENTIONS = ("devkit", "continuous")

# The devkit's 11 recall points, ``t = 0:0.1:1`` as MATLAB's colon operator computes them: the
# first half as ``k * 0.1``, the second half back from the end as ``1 - (10 - k) * 0.1``
# (0.7 is then the double nearest 0.7, where ``7 * 0.1`` is one ulp above it).
ELEVEN_POINTS = tuple(k * 0.1 if k <= 5 else 1.0 - (10 - k) * 0.1 for k in range(11))


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False, devkit: bool = False) -> float:
    """AP from a precision/recall curve (detections in score order): the VOC2007 11-point
    interpolation (``use_07_metric``; at the devkit's recall points with ``devkit``, else at
    ``k / 10`` as NumPy computes them, the Python port's) or the VOC2010+ area under the
    precision envelope."""
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in ELEVEN_POINTS if devkit else np.linspace(0.0, 1.0, 11):
            above = recall >= t
            ap += (precision[above].max() if above.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


@dataclass
class ClassResult:
    """AP of one class; ``ap`` is ``None`` when the class has no ground truth."""

    ap: float | None
    num_gt: int
    num_det: int
    recall: np.ndarray
    precision: np.ndarray


def true_positives(
    scores: np.ndarray,
    overlaps: np.ndarray,
    gt_index: np.ndarray,
    gt_difficult: np.ndarray,
    iou_threshold: float,
    at_least: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Classify the detections of one class (devkit rules), vectorised.

    Args:
        scores: ``(D,)`` detection scores.
        overlaps: ``(D,)`` IoU with the best-overlapping ground truth of the class in
            the same image (0 when the image has none).
        gt_index: ``(D,)`` a global id of that ground truth (any unique int; -1 for none).
        gt_difficult: ``(D,)`` whether that ground truth is difficult.
        at_least: match at ``IoU >= threshold`` (the devkit) instead of ``>``.

    Returns:
        ``order`` (detections sorted by score, descending, stable) and ``tp`` for
        them: 1 true positive, 0 false positive, -1 ignored (matched a difficult object).
    """
    order = np.argsort(-scores, kind="stable")
    ov, gi, diff = overlaps[order], gt_index[order], gt_difficult[order]
    hit = ((ov >= iou_threshold) if at_least else (ov > iou_threshold)) & (gi >= 0)
    tp = np.zeros(len(order), dtype=np.int8)
    candidate = hit & ~diff
    # the first (highest-scoring) candidate for each object takes it; later ones are duplicates
    cand_pos = np.nonzero(candidate)[0]
    _, first = np.unique(gi[cand_pos], return_index=True)
    tp[cand_pos[first]] = 1
    tp[hit & diff] = -1
    return order, tp


def class_result(
    scores, overlaps, gt_index, gt_difficult, num_gt, iou_threshold, use_07_metric, at_least: bool = False
) -> ClassResult:
    """AP and PR curve of one class from per-detection match data (see :func:`true_positives`)."""
    _, tp = true_positives(scores, overlaps, gt_index, gt_difficult, iou_threshold, at_least)
    counted = tp >= 0
    tp_c = np.cumsum(tp[counted] == 1, dtype=np.float64)
    fp_c = np.cumsum(tp[counted] == 0, dtype=np.float64)
    if num_gt == 0:
        return ClassResult(None, 0, len(scores), np.zeros(0), np.zeros(0))
    recall = tp_c / num_gt
    precision = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
    ap = voc_ap(recall, precision, use_07_metric, devkit=at_least)
    return ClassResult(ap, int(num_gt), len(scores), recall, precision)


ERROR_KINDS = ("tp", "duplicate", "localization", "confusion", "background", "missed")


def error_breakdown(
    scores: np.ndarray,
    overlaps: np.ndarray,
    gt_index: np.ndarray,
    gt_difficult: np.ndarray,
    other_overlaps: np.ndarray,
    num_gt: int,
    iou_threshold: float = 0.5,
    low_iou: float = 0.1,
    at_least: bool = False,
) -> dict[str, int]:
    """What a class's best-scored detections are, and which of its objects no detection finds.

    The ``num_gt`` highest-scored detections (difficult matches left out) are as many as a
    perfect detector would return. Each is a true positive (devkit rules), else, in this order:
    a *duplicate* (above the threshold with an object already taken), *confusion* (above the
    threshold with an object of another class, ``other_overlaps``), *localization*
    (``low_iou < IoU <= threshold`` with an object of its class), or *background* (nothing of
    its class nearby: a false alarm, or an object the annotators left out). *missed* counts the
    objects that no detection of the class takes, at any score.
    """
    order, tp = true_positives(scores, overlaps, gt_index, gt_difficult, iou_threshold, at_least)
    counted = tp >= 0
    missed = num_gt - int((tp == 1).sum())
    idx = order[counted][:num_gt]
    t = tp[counted][:num_gt]
    fp = t == 0

    def above(x):
        return x >= iou_threshold if at_least else x > iou_threshold

    dup = fp & above(overlaps[idx])
    conf = fp & ~dup & above(other_overlaps[idx])
    loc = fp & ~dup & ~conf & (overlaps[idx] > low_iou)
    return {
        "tp": int((t == 1).sum()),
        "duplicate": int(dup.sum()),
        "localization": int(loc.sum()),
        "confusion": int(conf.sum()),
        "background": int((fp & ~dup & ~conf & ~loc).sum()),
        "missed": missed,
    }


def mean_ap(results: dict[int, ClassResult]) -> float:
    """Mean over classes that have ground truth (NaN if none has)."""
    aps = [r.ap for r in results.values() if r.ap is not None]
    return float(np.mean(aps)) if aps else float("nan")
