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

With the paper's threshold (>= 0.5) only pairs whose prior centre lies inside
the box can be positive, so IoU is computed for those pairs (a few percent of
all object x prior pairs) rather than for the full ``(N, M, P)`` grid; the
result is identical to the dense rules above (tests compare with a loop).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .boxes import box_iou, check_boxes, cxcywh_to_xyxy, iou_from_coordinates


class Matches(NamedTuple):
    """Per-prior targets of a batch.

    labels: ``(N, P)`` long, 0 for background, else the matched object's class.
    boxes: ``(N, P, 4)`` xyxy box of the matched object (meaningful where labels > 0).
    object_index: ``(N, P)`` long index into ``M`` of the matched object, -1 if none.
    """

    labels: Tensor
    boxes: Tensor
    object_index: Tensor


def _pair_iou(boxes: Tensor, priors_xyxy: Tensor, pair_obj: Tensor, pair_prior: Tensor) -> Tensor:
    """IoU ``(Q,)`` of the pairs ``(boxes[pair_obj[q]], priors_xyxy[pair_prior[q]])`` (xyxy rows):
    :func:`multibox.boxes.box_iou` for listed pairs instead of a full matrix."""
    # gathered as (4, Q) coordinate rows: contiguous operands for the arithmetic
    b = boxes.t().contiguous().index_select(1, pair_obj)
    p = priors_xyxy.t().contiguous().index_select(1, pair_prior)
    return iou_from_coordinates(*b, *p)


# Slack on the "prior centre inside the box" test, far above float rounding of coordinates in [0, 1].
_CENTRE_SLACK = 1e-5


def _runs(starts: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Lay the integer runs ``starts[r], ..., starts[r] + counts[r] - 1`` end to end without a
    Python loop: returns the values and, for each, its run ``r``."""
    run = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    shift = starts - (torch.cumsum(counts, 0) - counts)  # run start in values - run start in output
    return torch.arange(len(run), device=counts.device) + shift.index_select(0, run), run


def _centre_inside_pairs(boxes: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """All ``(object, prior)`` pairs whose prior centre lies inside the object's box (edges and a
    small slack included): ``boxes (K, 4)`` xyxy, ``centres (P, 2)``. Returns two ``(Q,)`` index
    tensors.

    Priors lie on rows of equal centre y (one per grid row of each feature map, some shared). Sorted
    by (row, x), the priors of one row with centres in ``[x1, x2]`` are one run, found by two binary
    searches. So a box takes the rows inside ``[y1, y2]``, and in each row one run: the pairs come
    out directly, with no candidate filtered afterwards. The search keys are float64 so that the row
    offset does not eat the coordinates' precision.
    """
    cx, cy = centres.to(torch.float64).unbind(1)
    row_y, row = torch.unique(cy, sorted=True, return_inverse=True)
    x0 = cx.min()
    stride = float(cx.max() - x0) + 1.0  # > any x-range: rows never interleave
    key = row.to(torch.float64) * stride + (cx - x0)
    key, order = torch.sort(key, stable=True)
    x1, y1, x2, y2 = boxes.to(torch.float64).unbind(1)
    first_row = torch.searchsorted(row_y, y1 - _CENTRE_SLACK, right=False)
    last_row = torch.searchsorted(row_y, y2 + _CENTRE_SLACK, right=True)
    rows, box_of_run = _runs(first_row, (last_row - first_row).clamp_(min=0))  # (R,) one per (box, row)
    base = rows.to(torch.float64) * stride - x0
    lo = torch.searchsorted(key, base + (x1 - _CENTRE_SLACK).index_select(0, box_of_run), right=False)
    hi = torch.searchsorted(key, base + (x2 + _CENTRE_SLACK).index_select(0, box_of_run), right=True)
    pos, run = _runs(lo, (hi - lo).clamp_(min=0))
    return box_of_run.index_select(0, run), order.index_select(0, pos)


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
    obj = torch.nonzero(valid)  # (K, 2): image and slot of every real object, in (image, slot) order
    img, slot = obj[:, 0], obj[:, 1]
    boxes_k = gt_boxes[img, slot]  # (K, 4)
    priors_xyxy = cxcywh_to_xyxy(priors).to(gt_boxes.dtype)

    # Candidate (object, prior) pairs. A prior whose centre lies outside a box overlaps it by at
    # most half the prior, which caps the IoU at 1/2 (reached only when the box is exactly that
    # half): so with a threshold >= 0.5 every pair that can be positive has the prior's centre
    # inside the box, a few percent of all pairs. Lower thresholds take every pair.
    sparse = iou_threshold >= 0.5
    if sparse:
        pair_obj, pair_prior = _centre_inside_pairs(boxes_k, priors[:, :2])
    else:
        pair_obj = torch.arange(len(obj), device=device).repeat_interleave(p)
        pair_prior = torch.arange(p, device=device).repeat(len(obj))
    iou = _pair_iou(boxes_k, priors_xyxy, pair_obj, pair_prior)  # (Q,)

    # Rule 1: a prior takes, of the objects reaching the threshold, the one it overlaps most
    # (ties: the lowest slot, as argmax over objects would).
    hit = (iou >= iou_threshold).nonzero().squeeze(1)
    h_obj, h_iou = pair_obj.index_select(0, hit), iou.index_select(0, hit)
    h_cell = img.index_select(0, h_obj) * p + pair_prior.index_select(0, hit)  # flat (image, prior)
    cell_best = torch.full((n * p,), -1.0, dtype=iou.dtype, device=device).scatter_reduce(
        0, h_cell, h_iou, reduce="amax")
    top = h_iou == cell_best[h_cell]
    cell_slot = torch.full((n * p,), m, dtype=torch.long, device=device).scatter_reduce(
        0, h_cell[top], slot[h_obj[top]], reduce="amin")
    best_object = torch.where(cell_slot < m, cell_slot, torch.zeros_like(cell_slot)).view(n, p)
    best_iou_hit = cell_slot.view(n, p) < m

    # Rule 2 needs each object's best prior over all priors (the lowest index on ties). When an
    # object's best candidate reaches the threshold, every prior at least as good is a candidate
    # too; the others (tiny or odd boxes) are searched over every prior.
    obj_best = torch.full((len(obj),), -1.0, dtype=iou.dtype, device=device).scatter_reduce(
        0, pair_obj, iou, reduce="amax")
    on_max = (iou == obj_best.index_select(0, pair_obj)).nonzero().squeeze(1)
    best_prior_k = torch.full((len(obj),), p, dtype=torch.long, device=device).scatter_reduce(
        0, pair_obj.index_select(0, on_max), pair_prior.index_select(0, on_max), reduce="amin")
    weak = obj_best < iou_threshold
    if sparse and bool(weak.any()):
        best_prior_k[weak] = box_iou(boxes_k[weak], priors_xyxy).argmax(dim=1)
    best_prior = torch.zeros(n, m, dtype=torch.long, device=device)
    best_prior[img, slot] = best_prior_k

    # Rule 2: each valid object forces its best prior. scatter_reduce(amax) over the
    # object index makes the highest-indexed object win ties, deterministically.
    obj_ids = torch.arange(m, device=device).expand(n, m)
    src = torch.where(valid, obj_ids, torch.full_like(obj_ids, -1))
    forced = torch.full((n, p), -1, dtype=torch.long, device=device)
    forced = forced.scatter_reduce(1, best_prior, src, reduce="amax", include_self=True)
    is_forced = forced >= 0
    best_object = torch.where(is_forced, forced, best_object)
    positive = is_forced | best_iou_hit

    labels = torch.gather(gt_labels, 1, best_object)
    labels = torch.where(positive, labels, torch.zeros_like(labels))
    boxes = torch.gather(gt_boxes, 1, best_object.unsqueeze(-1).expand(n, p, 4))
    object_index = torch.where(positive, best_object, torch.full_like(best_object, -1))
    return Matches(labels, boxes, object_index)
