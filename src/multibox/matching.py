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
    :func:`multibox.boxes.box_iou`, computed coordinate by coordinate in three ``(N, M, P)`` buffers
    updated in place (the matching step is bound by memory traffic, and every fresh buffer of this
    size also costs page faults)."""
    bx1, by1, bx2, by2 = (t.unsqueeze(-1) for t in boxes.unbind(-1))  # (N, M, 1)
    px1, py1, px2, py2 = priors.t().contiguous()  # (P,) each, contiguous: strided rows do not vectorise
    iw = torch.minimum(bx2, px2)
    tmp = torch.maximum(bx1, px1)
    iw.sub_(tmp).clamp_(min=0)
    ih = torch.minimum(by2, py2)
    torch.maximum(by1, py1, out=tmp)
    ih.sub_(tmp).clamp_(min=0)
    inter = iw.mul_(ih)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)  # (N, M, 1)
    area_p = (px2 - px1).clamp(min=0) * (py2 - py1).clamp(min=0)  # (P,)
    union = torch.add(area_b, area_p, out=tmp).sub_(inter)
    return inter.div_(union.clamp_(min=torch.finfo(union.dtype).tiny))


_BLOCK = 64  # priors per block in first_argmax


def first_argmax(x: Tensor) -> Tensor:
    """``x.argmax(-1)`` (the first index of the maximum) for a last dimension that is a multiple
    of ``_BLOCK``, by a blockwise ``amax``: a full ``argmax`` is several times slower than a
    max-reduction on CPUs, and here it runs on the block maxima and on one block per row."""
    *lead, p = x.shape
    blocks = x.view(*lead, p // _BLOCK, _BLOCK)
    block = blocks.amax(-1).argmax(-1, keepdim=True)  # first block holding the maximum
    inside = torch.gather(blocks, -2, block.unsqueeze(-1).expand(*lead, 1, _BLOCK)).squeeze(-2).argmax(-1)
    return block.squeeze(-1) * _BLOCK + inside


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
    # Priors padded to a multiple of the argmax block with empty boxes far outside the image
    # (IoU 0 with everything, and after every real prior, so they never win a tie).
    pad = (-p) % _BLOCK
    priors_xyxy = cxcywh_to_xyxy(priors).to(gt_boxes.dtype)
    if pad:
        priors_xyxy = torch.cat((priors_xyxy, priors_xyxy.new_full((pad, 4), 1e6)))
    # Padding objects become empty boxes far outside the image: IoU 0 with every prior, so
    # they can neither reach the threshold nor take a prior from a real object.
    far = torch.where(valid.unsqueeze(-1), gt_boxes, torch.full_like(gt_boxes, -1e6))
    iou_padded = _object_prior_iou(far, priors_xyxy)  # (N, M, P + pad)
    iou = iou_padded[..., :p]

    best_iou = iou.amax(dim=1)  # per prior: (N, P)
    best_prior = first_argmax(iou_padded)  # per object: (N, M)
    # Which object a prior takes matters only where the prior is positive, so the (slow)
    # index reduction over objects runs on the priors that pass the threshold alone.
    above = torch.nonzero(best_iou >= iou_threshold)  # (Q, 2): image, prior
    best_object = torch.zeros(n, p, dtype=torch.long, device=device)
    best_object[above[:, 0], above[:, 1]] = iou[above[:, 0], :, above[:, 1]].argmax(dim=1)

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
