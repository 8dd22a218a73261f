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
the box and whose areas differ by at most a factor 2 can be positive, so IoU is
computed for those pairs (about 1% of all object x prior pairs) rather than for
the full ``(N, M, P)`` grid; the result is identical to the dense rules above
(tests compare with a loop).

:func:`match_atss` is the alternative a config can name (``train.matcher=atss``): ATSS's
per-object threshold over the priors nearest each object's centre on every feature map.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from .._kernels.ranges import concat_ranges
from .._kernels.select import where
from .boxes import box_iou, check_boxes, cxcywh_to_xyxy, iou_from_coordinates


class Matches(NamedTuple):
    """Per-prior targets of a batch.

    labels: ``(N, P)`` long, 0 for background, else the matched object's class.
    object_index: ``(N, P)`` long index into ``M`` of the matched object, -1 if none.
    gt_boxes: ``(N, M, 4)`` the padded boxes that were matched.
    """

    labels: Tensor
    object_index: Tensor
    gt_boxes: Tensor

    @property
    def boxes(self) -> Tensor:
        """``(N, P, 4)`` xyxy box of each prior's object; zeros for background priors."""
        n, p = self.object_index.shape
        index = self.object_index.clamp(min=0).unsqueeze(-1).expand(n, p, 4)
        boxes = torch.gather(self.gt_boxes, 1, index) if self.gt_boxes.shape[1] else self.gt_boxes.new_zeros(n, p, 4)
        return boxes.masked_fill(self.object_index.unsqueeze(-1) < 0, 0.0)

    def positive_boxes(self, flat_index: Tensor) -> Tensor:
        """``(Q, 4)`` boxes of the objects matched to the priors at ``flat_index`` (``image * P +
        prior``, positives only): the regression targets, without the dense ``boxes``."""
        n, p = self.object_index.shape
        m = self.gt_boxes.shape[1]
        obj = self.object_index.reshape(-1).index_select(0, flat_index)
        return self.gt_boxes.reshape(n * m, 4).index_select(
            0, torch.div(flat_index, p, rounding_mode="floor") * m + obj
        )


# (gt_boxes, gt_labels, priors) -> Matches: match_priors with its threshold bound, or match_atss
# with its levels bound
Matcher = Callable[[Tensor, Tensor, Tensor], Matches]


def _pair_iou(boxes: Tensor, priors_xyxy: Tensor, pair_obj: Tensor, pair_prior: Tensor) -> Tensor:
    """IoU ``(Q,)`` of the pairs ``(boxes[pair_obj[q]], priors_xyxy[pair_prior[q]])`` (xyxy rows):
    :func:`multibox.boxes.box_iou` for listed pairs instead of a full matrix."""
    # gathered as (4, Q) coordinate rows: contiguous operands for the arithmetic
    b = boxes.t().contiguous().index_select(1, pair_obj)
    p = priors_xyxy.t().contiguous().index_select(1, pair_prior)
    return iou_from_coordinates(*b, *p)


# Slack on the "prior centre inside the box" test, far above float rounding of coordinates in [0, 1].
_CENTRE_SLACK = 1e-5


class _PriorIndex(NamedTuple):
    """Priors sorted by (area bin, centre row, x) for :func:`_candidate_pairs` (float64 keys)."""

    bin_min: Tensor  # (B,) smallest prior area in each bin, ascending with the bins
    bin_max: Tensor  # (B,) largest
    row_key: Tensor  # (R,) bin * y_span + (cy - y0) of every distinct (bin, centre row), sorted
    key: Tensor  # (P,) row * x_span + (cx - x0), sorted
    order: Tensor  # (P,) prior index of each sorted key
    y0: float
    y_span: float
    x0: float
    x_span: float


_INDEX_CACHE: tuple = ()  # (priors, their version, their _PriorIndex): losses match one prior set many times


def _prior_index(priors: Tensor) -> _PriorIndex:
    global _INDEX_CACHE
    try:
        version = priors._version
    except RuntimeError:  # inference tensors have no version counter: do not cache
        version = None
    if version is not None and _INDEX_CACHE and _INDEX_CACHE[0] is priors and _INDEX_CACHE[1] == version:
        return _INDEX_CACHE[2]
    cx, cy, w, h = priors.to(torch.float64).unbind(1)
    area = w * h
    bin_id = torch.floor(torch.log2(area.clamp(min=1e-30)) * 4)  # quarter octaves
    bin_key, bin_of = torch.unique(bin_id, sorted=True, return_inverse=True)
    nb = len(bin_key)
    bin_min = area.new_full((nb,), torch.inf).scatter_reduce(0, bin_of, area, reduce="amin")
    bin_max = area.new_zeros(nb).scatter_reduce(0, bin_of, area, reduce="amax")
    y0, x0 = float(cy.min()), float(cx.min())
    y_span = float(cy.max()) - y0 + 1.0  # > any y-range: bins never interleave
    x_span = float(cx.max()) - x0 + 1.0  # > any x-range: rows never interleave
    row_key, row = torch.unique(bin_of.to(torch.float64) * y_span + (cy - y0), sorted=True, return_inverse=True)
    key, order = torch.sort(row.to(torch.float64) * x_span + (cx - x0), stable=True)
    index = _PriorIndex(bin_min, bin_max, row_key, key, order, y0, y_span, x0, x_span)
    if version is not None:
        _INDEX_CACHE = (priors, version, index)
    return index


def _candidate_pairs(boxes: Tensor, priors: Tensor, min_area_ratio: float) -> tuple[Tensor, Tensor]:
    """The ``(object, prior)`` pairs that can reach an IoU of ``min_area_ratio`` (>= 0.5): those
    whose prior centre lies inside the object's box (edges and a small slack included) and whose
    areas are within a factor ``1 / min_area_ratio`` of each other, as IoU <= smaller area / larger
    area. ``boxes (K, 4)`` xyxy, ``priors (P, 4)`` cxcywh. Returns two ``(Q,)`` index tensors.

    The priors are sorted by (area bin, centre row, x): bins are quarter octaves of area, rows
    the distinct centre heights within a bin. A box takes the bins its area allows (one range, as
    bins are ordered), in each bin the rows inside ``[y1, y2]`` (two binary searches), and in each
    row the priors with centres in ``[x1, x2]`` (two more), so the pairs come out directly, with
    nothing filtered afterwards. Keys are float64 so that the bin and row offsets do not eat the
    coordinates' precision.
    """
    ix = _prior_index(priors)
    bin_min, bin_max, row_key, key, order = ix.bin_min, ix.bin_max, ix.row_key, ix.key, ix.order
    y0, y_span, x0, x_span = ix.y0, ix.y_span, ix.x0, ix.x_span
    x1, y1, x2, y2 = boxes.to(torch.float64).unbind(1)
    box_area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    slack = 1e-4  # relative, on areas: far above float32 rounding of the IoU
    first_bin = torch.searchsorted(bin_max, box_area * (min_area_ratio * (1 - slack)), right=False)
    last_bin = torch.searchsorted(bin_min, box_area * ((1 + slack) / min_area_ratio), right=True)
    bins, box_of_bin = concat_ranges(first_bin, (last_bin - first_bin).clamp_(min=0))  # one per (box, bin)

    base = bins.to(torch.float64) * y_span - y0
    lo = torch.searchsorted(row_key, base + (y1 - _CENTRE_SLACK).index_select(0, box_of_bin), right=False)
    hi = torch.searchsorted(row_key, base + (y2 + _CENTRE_SLACK).index_select(0, box_of_bin), right=True)
    rows, run = concat_ranges(lo, (hi - lo).clamp_(min=0))  # one per (box, bin, row)
    box_of_row = box_of_bin.index_select(0, run)

    base = rows.to(torch.float64) * x_span - x0
    lo = torch.searchsorted(key, base + (x1 - _CENTRE_SLACK).index_select(0, box_of_row), right=False)
    hi = torch.searchsorted(key, base + (x2 + _CENTRE_SLACK).index_select(0, box_of_row), right=True)
    pos, run = concat_ranges(lo, (hi - lo).clamp_(min=0))
    return box_of_row.index_select(0, run), order.index_select(0, pos)


def _check_targets(gt_boxes: Tensor, gt_labels: Tensor, priors: Tensor, validate: bool) -> None:
    """Shapes of a matcher's inputs, and (``validate``) the real boxes themselves."""
    if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be (N, M, 4), got {tuple(gt_boxes.shape)}")
    if gt_labels.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_labels must be (N, M) = {tuple(gt_boxes.shape[:2])}, got {tuple(gt_labels.shape)}")
    if priors.ndim != 2 or priors.shape[-1] != 4:
        raise ValueError(f"priors must be (P, 4), got {tuple(priors.shape)}")
    if validate:
        check_boxes(gt_boxes[gt_labels > 0], "gt_boxes")


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
    _check_targets(gt_boxes, gt_labels, priors, validate)
    n, m = gt_labels.shape
    p = priors.shape[0]
    device = gt_boxes.device
    if m == 0:
        return Matches(
            torch.zeros(n, p, dtype=torch.long, device=device),
            torch.full((n, p), -1, dtype=torch.long, device=device),
            gt_boxes,
        )

    valid = gt_labels > 0  # (N, M)
    obj = torch.nonzero(valid)  # (K, 2): image and slot of every real object, in (image, slot) order
    img, slot = obj[:, 0], obj[:, 1]
    boxes_k = gt_boxes[img, slot]  # (K, 4)
    priors_xyxy = cxcywh_to_xyxy(priors).to(gt_boxes.dtype)

    # Candidate (object, prior) pairs. A prior whose centre lies outside a box overlaps it by at
    # most half the prior, which caps the IoU at 1/2 (reached only when the box is exactly that
    # half), and no pair's IoU exceeds its smaller area over its larger one: so with a threshold
    # >= 0.5 every pair that can be positive has the prior's centre inside the box and an area
    # ratio of at least the threshold, about 1% of all pairs. Lower thresholds take every pair.
    sparse = iou_threshold >= 0.5
    if sparse:
        pair_obj, pair_prior = _candidate_pairs(boxes_k, priors, iou_threshold)
    else:
        pair_obj = torch.arange(len(obj), device=device).repeat_interleave(p)
        pair_prior = torch.arange(p, device=device).repeat(len(obj))
    iou = _pair_iou(boxes_k, priors_xyxy, pair_obj, pair_prior)  # (Q,)

    # Rule 1: a prior takes, of the objects reaching the threshold, the one it overlaps most
    # (ties: the lowest slot, as argmax over objects would). Pairs come in object order, i.e.
    # (image, slot); sorted stably by (image, prior) cell and, within a cell, by descending IoU
    # (one float64 key, cell + (1 - IoU) / 2, which holds a float32 IoU exactly), the first hit
    # of each cell is its winner.
    hit = where(lambda v: v >= iou_threshold, iou)
    h_obj = pair_obj.index_select(0, hit)
    h_cell = img.index_select(0, h_obj) * p + pair_prior.index_select(0, hit)  # flat (image, prior)
    h_key = h_cell.to(torch.float64) + (1.0 - iou.index_select(0, hit).to(torch.float64)) / 2
    order = torch.sort(h_key, stable=True).indices
    win_cell, win_obj = _first_of_each_run(h_cell.index_select(0, order), h_obj.index_select(0, order))

    # Rule 2 needs each object's best prior over all priors (the lowest index on ties). When an
    # object's best candidate reaches the threshold, every prior at least as good is a candidate
    # too; the others (tiny or odd boxes) are searched over every prior.
    obj_best = torch.full((len(obj),), -1.0, dtype=iou.dtype, device=device).scatter_reduce(
        0, pair_obj, iou, reduce="amax"
    )
    on_max = where(lambda v, best: v == best, iou, obj_best.index_select(0, pair_obj))
    best_prior_k = torch.full((len(obj),), p, dtype=torch.long, device=device).scatter_reduce(
        0, pair_obj.index_select(0, on_max), pair_prior.index_select(0, on_max), reduce="amin"
    )
    weak = obj_best < iou_threshold
    if sparse and bool(weak.any()):
        best_prior_k[weak] = box_iou(boxes_k[weak], priors_xyxy).argmax(dim=1)

    # Rule 2: each object forces its best prior, overriding rule 1; when objects share one,
    # the highest slot wins. Winners then forced priors, sorted stably by cell: the last entry
    # of each cell is its object.
    cell = torch.cat((win_cell, img * p + best_prior_k))
    cell_obj = torch.cat((win_obj, torch.arange(len(obj), device=device)))
    order = torch.sort(cell, stable=True).indices
    cell, cell_obj = _first_of_each_run(cell.index_select(0, order).flip(0), cell_obj.index_select(0, order).flip(0))

    labels = torch.zeros(n * p, dtype=torch.long, device=device)
    labels[cell] = gt_labels[img, slot].index_select(0, cell_obj)
    object_index = torch.full((n * p,), -1, dtype=torch.long, device=device)
    object_index[cell] = slot.index_select(0, cell_obj)
    return Matches(labels.view(n, p), object_index.view(n, p), gt_boxes)


def _first_of_each_run(keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """For ``keys`` with equal entries adjacent, the first entry of each run and its value."""
    first = torch.ones_like(keys, dtype=torch.bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first], values[first]


def match_atss(
    gt_boxes: Tensor,
    gt_labels: Tensor,
    priors: Tensor,
    level_sizes: Sequence[int],
    top_k: int = 9,
    validate: bool = True,
) -> Matches:
    """Adaptive training sample selection (ATSS, Zhang et al. 2020), an alternative to SSD's
    fixed overlap threshold that sets a threshold per object from its own candidates.

    For every object: on each feature map (``level_sizes``: priors per map, in head order) the
    ``top_k`` priors whose centres lie nearest the object's centre are candidates (as in the
    paper's code also with several shapes per cell; ties in distance go to the lower index); the
    object's threshold is the mean plus the standard deviation of its candidates' overlaps; a
    candidate reaching it, whose centre lies inside the box, is positive. A prior positive for
    several objects takes the one it overlaps most (the lowest slot on ties). Small objects,
    whose overlaps with any prior are low, still get positives; large ones get the few priors
    that fit them best.

    Same inputs and output as :func:`match_priors`, except ``level_sizes`` and ``top_k``.
    """
    _check_targets(gt_boxes, gt_labels, priors, validate)
    p = priors.shape[0]
    if sum(level_sizes) != p:
        raise ValueError(f"level_sizes {list(level_sizes)} add up to {sum(level_sizes)}, not the {p} priors")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    n, m = gt_labels.shape
    device = gt_boxes.device
    labels = torch.zeros(n * p, dtype=torch.long, device=device)
    object_index = torch.full((n * p,), -1, dtype=torch.long, device=device)
    obj = torch.nonzero(gt_labels > 0)  # (K, 2) in (image, slot) order
    if len(obj) == 0:
        return Matches(labels.view(n, p), object_index.view(n, p), gt_boxes)
    img, slot = obj[:, 0], obj[:, 1]
    boxes_k = gt_boxes[img, slot]  # (K, 4)
    centres = (boxes_k[:, :2] + boxes_k[:, 2:]) / 2
    priors = priors.to(gt_boxes.dtype)
    dist = torch.cdist(centres, priors[:, :2])  # (K, P)

    candidates, start = [], 0
    for size in level_sizes:  # a handful of maps: the loop is over levels, never boxes
        # a stable sort keeps ties (the shapes of one cell share its centre) in prior order
        order = torch.sort(dist[:, start : start + size], dim=1, stable=True).indices[:, : min(top_k, size)]
        candidates.append(order + start)
        start += size
    cand = torch.cat(candidates, dim=1)  # (K, C)
    pair_obj = torch.arange(len(obj), device=device).repeat_interleave(cand.shape[1])
    iou = _pair_iou(boxes_k, cxcywh_to_xyxy(priors), pair_obj, cand.reshape(-1)).view_as(cand)  # (K, C)
    threshold = iou.mean(dim=1, keepdim=True) + iou.std(dim=1, keepdim=True)
    cx, cy = (priors[:, i].index_select(0, cand.reshape(-1)).view_as(cand) for i in (0, 1))
    inside = (cx > boxes_k[:, :1]) & (cx < boxes_k[:, 2:3]) & (cy > boxes_k[:, 1:2]) & (cy < boxes_k[:, 3:4])
    hit = (iou >= threshold) & inside & (iou > 0)
    k_idx, c_idx = hit.nonzero(as_tuple=True)
    h_cell = img.index_select(0, k_idx) * p + cand[k_idx, c_idx]
    h_iou = iou[k_idx, c_idx].to(torch.float64)
    # per (image, prior) cell the highest overlap wins; k_idx is in object order, so a stable
    # sort keeps the lowest slot first among equal overlaps
    order = torch.sort(h_cell.to(torch.float64) + (1.0 - h_iou) / 2, stable=True).indices
    cell, win = _first_of_each_run(h_cell.index_select(0, order), k_idx.index_select(0, order))
    labels[cell] = gt_labels[img, slot].index_select(0, win)
    object_index[cell] = slot.index_select(0, win)
    return Matches(labels.view(n, p), object_index.view(n, p), gt_boxes)


def make_matcher(name: str, maps: Sequence, top_k: int = 9) -> Matcher | None:
    """The matcher a training config names: ``"iou"`` gives ``None`` (the loss's own SSD
    matching at its threshold), ``"atss"`` :func:`match_atss` over the model's feature maps
    (``maps``: its :class:`multibox.priors.FeatureMapPriors`, in head order)."""
    if name == "iou":
        return None
    if name == "atss":
        return functools.partial(match_atss, level_sizes=[fm.num_priors for fm in maps], top_k=top_k)
    raise ValueError(f"matcher must be 'iou' or 'atss', got {name!r}")
