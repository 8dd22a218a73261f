"""Matching ground truth to priors (SSD section 2.2, "Matching strategy").

Targets come as a padded batch: ``boxes (N, M, 4)`` xyxy in image fractions and
``labels (N, M)`` with classes ``1..C``; label ``0`` marks padding, so an image
with no objects is simply a row of zeros. All images are matched at once.

Rules, in order:
1. every prior takes the object it overlaps most; it is positive when that
   Jaccard overlap is at least ``iou_threshold`` (0.5);
2. every object then claims the prior it overlaps most, even below the
   threshold, so no object goes unmatched. When two objects share one best
   prior the later object wins, as in the reference implementation's loop.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .boxes import box_iou, check_boxes, cxcywh_to_xyxy


class Matches(NamedTuple):
    """Per-prior targets of a batch.

    labels: ``(N, P)`` long, 0 for background, else the matched object's class.
    boxes: ``(N, P, 4)`` xyxy box of the matched object (meaningful where labels > 0).
    object_index: ``(N, P)`` long index into ``M`` of the matched object, -1 if none.
    """

    labels: Tensor
    boxes: Tensor
    object_index: Tensor


def _object_prior_iou(boxes: Tensor, priors: Tensor) -> Tensor:
    """IoU ``(N, M, P)`` of objects ``(N, M, 4)`` and priors ``(P, 4)``, both xyxy: the same values as
    :func:`multibox.boxes.box_iou`, computed coordinate by coordinate with in-place updates so
    that only a few ``(N, M, P)`` buffers are touched (the matching step is memory-bound)."""
    bx1, by1, bx2, by2 = (t.unsqueeze(-1) for t in boxes.unbind(-1))  # (N, M, 1)
    px1, py1, px2, py2 = priors.unbind(-1)  # (P,)
    iw = torch.minimum(bx2, px2)
    iw -= torch.maximum(bx1, px1)
    iw.clamp_(min=0)
    ih = torch.minimum(by2, py2)
    ih -= torch.maximum(by1, py1)
    ih.clamp_(min=0)
    inter = iw.mul_(ih)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)  # (N, M, 1)
    area_p = (px2 - px1).clamp(min=0) * (py2 - py1).clamp(min=0)  # (P,)
    union = (area_b + area_p).sub_(inter)
    return inter.div_(union.clamp_(min=torch.finfo(union.dtype).tiny))


def match_priors(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    priors: Tensor,
    iou_threshold: float = 0.5,
    validate: bool = True,
) -> Matches:
    """Assign every prior a ground-truth object or background.

    Args:
        gt_boxes: ``(N, M, 4)`` xyxy boxes (image fractions), padded.
        gt_labels: ``(N, M)`` classes ``1..C``; ``0`` is padding.
        priors: ``(P, 4)`` cxcywh priors.
        iou_threshold: minimum overlap for a positive prior.
        validate: check the boxes (finite, x1 <= x2) and raise a clear error.
    """
    if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be (N, M, 4), got {tuple(gt_boxes.shape)}")
    if gt_labels.shape != gt_boxes.shape[:2]:
        raise ValueError(
            f"gt_labels must be (N, M) = {tuple(gt_boxes.shape[:2])}, got {tuple(gt_labels.shape)}"
        )
    if priors.ndim != 2 or priors.shape[-1] != 4:
        raise ValueError(f"priors must be (P, 4), got {tuple(priors.shape)}")
    if validate:
        check_boxes(gt_boxes[gt_labels > 0], "gt_boxes")
    n, m = gt_labels.shape
    p = priors.shape[0]
    device = gt_boxes.device
    if m == 0:
        return Matches(
            torch.zeros(n, p, dtype=torch.long, device=device),
            torch.zeros(n, p, 4, dtype=gt_boxes.dtype, device=device),
            torch.full((n, p), -1, dtype=torch.long, device=device),
        )

    valid = gt_labels > 0  # (N, M)
    iou = _object_prior_iou(gt_boxes, cxcywh_to_xyxy(priors).to(gt_boxes.dtype))  # (N, M, P)
    iou.masked_fill_(~valid.unsqueeze(-1), -1.0)

    best_iou, best_object = iou.max(dim=1)  # per prior: (N, P)
    best_prior = iou.argmax(dim=2)  # per object: (N, M)

    # Rule 2: each valid object forces its best prior. scatter_reduce(amax) over the
    # object index makes the highest-indexed object win ties, deterministically.
    obj_ids = torch.arange(m, device=device).expand(n, m)
    src = torch.where(valid, obj_ids, torch.full_like(obj_ids, -1))
    forced = torch.full((n, p), -1, dtype=torch.long, device=device)
    forced = forced.scatter_reduce(1, best_prior, src, reduce="amax", include_self=True)
    is_forced = forced >= 0
    best_object = torch.where(is_forced, forced, best_object)
    positive = is_forced | (best_iou >= iou_threshold)

    labels = torch.gather(gt_labels, 1, best_object)
    labels = torch.where(positive, labels, torch.zeros_like(labels))
    boxes = torch.gather(gt_boxes, 1, best_object.unsqueeze(-1).expand(n, p, 4))
    object_index = torch.where(positive, best_object, torch.full_like(best_object, -1))
    return Matches(labels, boxes, object_index)
