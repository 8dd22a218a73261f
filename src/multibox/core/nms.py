"""Greedy non-maximum suppression for groups of boxes, batched.

Greedy NMS keeps the highest-scoring box and drops every box overlapping a kept
one by more than a threshold, in score order. It looks sequential, but the kept
set is the unique fixed point of

    keep[i] = not any(keep[j] and IoU[j, i] > t for j ranked before i)

and iterating that rule from "keep everything" reaches it; after ``t`` rounds the
first ``t`` boxes are final, and in practice a handful of rounds suffice because
suppression chains are short. Each round is one batched tensor operation over
every group, so there is no Python loop over boxes, classes or images.

:func:`nms_sorted_groups` (used by :mod:`multibox.core.postprocess`) lists the
same-group pairs that can overlap (similar areas) and iterates over the
overlapping ones when groups are small (a trained model), and uses padded
``(G, K, K)`` overlap blocks when they are crowded (an untrained model); on CPUs
with Numba it runs as a compiled loop instead. All give the textbook loop's result
(tests check this).
"""

from __future__ import annotations

import bisect

import torch
from torch import Tensor

from .._kernels.loops import greedy_nms_groups
from .._kernels.ranges import concat_ranges
from .._kernels.select import searchsorted, where
from .boxes import box_iou


def overlap_mask(boxes: Tensor, iou_threshold: float) -> Tensor:
    """``(G, K, K)`` bool: ``IoU(boxes[g, i], boxes[g, j]) > iou_threshold`` for ``boxes (G, K, 4)``.

    Computed as ``inter * (1 + t) > t * (area_i + area_j)`` (the same test, as
    ``union = area_i + area_j - inter``) without materialising the IoU matrix; the
    intermediates are ``(G, K, K)`` and updated in place, which matters on CPUs,
    where this is bound by memory traffic.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    iw = torch.minimum(x2.unsqueeze(-1), x2.unsqueeze(-2))
    iw -= torch.maximum(x1.unsqueeze(-1), x1.unsqueeze(-2))
    iw.clamp_(min=0)
    ih = torch.minimum(y2.unsqueeze(-1), y2.unsqueeze(-2))
    ih -= torch.maximum(y1.unsqueeze(-1), y1.unsqueeze(-2))
    ih.clamp_(min=0)
    inter = iw.mul_(ih)
    area = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    sums = area.unsqueeze(-1) + area.unsqueeze(-2)
    return inter.mul_(1.0 + iou_threshold) > sums.mul_(iou_threshold)


def overlaps_above(a: Tensor, b: Tensor, iou_threshold: float | Tensor, dim: int = -1) -> Tensor:
    """``IoU(a, b) > iou_threshold`` for broadcastable xyxy boxes with their coordinates along
    ``dim`` (``(..., 4)`` by default), pair by pair: the test of :func:`overlap_mask` without its
    in-place ``(G, K, K)`` blocks. ``dim`` elsewhere takes coordinate-major blocks such as
    ``(..., 4, K)``, whose coordinates are contiguous slices."""
    ax1, ay1, ax2, ay2 = a.unbind(dim)
    bx1, by1, bx2, by2 = b.unbind(dim)
    iw = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    ih = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    return iw * ih * (1.0 + iou_threshold) > (area_a + area_b) * iou_threshold


def greedy_nms_keep(overlaps: Tensor, valid: Tensor) -> Tensor:
    """Greedy NMS from a precomputed ``(G, K, K)`` overlap mask of score-sorted boxes.

    ``overlaps[g, j, i]``: box ``j`` overlaps box ``i`` above the threshold; ``valid (G, K)``
    marks real boxes (padding is never kept and never suppresses). Returns the kept mask.
    """
    k = overlaps.shape[-1]
    # suppressors[g, j, i]: box j (earlier, real) would suppress box i (later).
    earlier = torch.ones(k, k, dtype=torch.bool, device=overlaps.device).triu(diagonal=1)
    suppressors = (overlaps & earlier & valid.unsqueeze(-1)).to(torch.float32)
    keep = valid.clone()
    for _ in range(k + 1):  # converges in at most K rounds; usually a few
        suppressed = torch.bmm(keep.unsqueeze(1).to(torch.float32), suppressors).squeeze(1) > 0
        new_keep = valid & ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def greedy_nms_mask(iou: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS on groups of score-sorted boxes.

    Args:
        iou: ``(G, K, K)`` pairwise IoU of each group's boxes, sorted by score descending.
        valid: ``(G, K)`` which entries are real boxes (padding is never kept and never suppresses).
        iou_threshold: a box overlapping a kept, higher-scored box by more than this is dropped.

    Returns:
        ``(G, K)`` bool mask of kept boxes.
    """
    return greedy_nms_keep(iou > iou_threshold, valid)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS applied independently within each group id (e.g. class); returns kept indices
    sorted by decreasing score. ``boxes (K, 4)``, ``scores (K,)``, ``groups (K,)``."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True)
    g_sorted = groups[order]
    uniq, inverse, counts = torch.unique(g_sorted, return_inverse=True, return_counts=True)
    # position of every box within its group, preserving score order
    ranks = torch.zeros_like(order)
    group_order = torch.argsort(inverse, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    ranks[group_order] = torch.arange(len(order), device=boxes.device) - starts.repeat_interleave(counts)
    kmax = int(counts.max())
    padded = boxes.new_zeros(len(uniq), kmax, 4)
    valid = torch.zeros(len(uniq), kmax, dtype=torch.bool, device=boxes.device)
    padded[inverse, ranks] = boxes[order]
    valid[inverse, ranks] = True
    keep = greedy_nms_mask(box_iou(padded, padded), valid, iou_threshold)
    kept_sorted = keep[inverse, ranks]
    return order[kept_sorted]


_NMS_CHUNK_ELEMENTS = 2_000_000  # pairs per NMS call: groups x K x K
_SPARSE_NMS_PAIRS = 1_000_000  # above this many same-group pairs, NMS runs on padded (G, K, K) blocks


def nms_sorted_groups(boxes: Tensor, group: Tensor, counts: Tensor, cap: int, iou_threshold: float) -> Tensor:
    """Greedy NMS within groups for ``boxes (K, 4)`` that run group by group (``group`` ascending),
    best first within a group. ``counts`` holds the candidates of every group id (before the cap
    of ``cap`` per group). Returns the ``(K,)`` kept mask.

    On a CPU with Numba installed, one compiled loop (:mod:`multibox.loops`). Otherwise, few
    candidates per group (a trained model): the pairs of each group are listed and tested once,
    and the fixed point iterates over the overlapping pairs only; crowded groups: padded
    ``(G, K, K)`` overlap blocks of groups of similar size. All three keep the same boxes.
    """
    keep = greedy_nms_groups(boxes, group, iou_threshold)
    if keep is not None:
        return keep
    sizes = counts.clamp(max=cap)
    if int((sizes * (sizes - 1)).sum()) // 2 <= _SPARSE_NMS_PAIRS:
        return _nms_pairs(boxes, group, iou_threshold)
    sizes = sizes[sizes > 0]
    # padded blocks: candidate i of group g goes to row g, column rank
    rank, slot = concat_ranges(torch.zeros_like(sizes), sizes)
    k = int(sizes.max())
    padded = boxes.new_zeros(len(sizes), k, 4)
    padded[slot, rank] = boxes
    valid = torch.zeros(len(sizes), k, dtype=torch.bool, device=boxes.device)
    valid[slot, rank] = True
    return _nms_padded(padded, valid, iou_threshold)[slot, rank]


def _nms_pairs(boxes: Tensor, group: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS for score-sorted boxes in groups (``group`` ascending ids), pair by pair.

    Only pairs that can overlap by more than ``t`` are listed: ``IoU <= smaller area / larger
    area``, so a box is paired with the boxes of its group whose area lies in ``[a, a / t]``
    (in a sort by group, then area, they form one run). Boxes of different prior scales
    around one object, about half of a group's pairs in a benchmark, never meet.
    """
    k = len(boxes)
    dev = boxes.device
    x1, y1, x2, y2 = boxes.t().contiguous()  # float32
    area = (x2 - x1).clamp_(min=0).mul_((y2 - y1).clamp_(min=0)).add_(0.0)  # + 0.0: no -0.0 (its bits sort first)
    # Sort by (group, area) with one int64 key: non-negative float bits order like the values.
    # The slack on 1/t covers rounding in the overlap test below (inter <= smaller area holds
    # exactly in floats).
    base = group * 2**31
    key, by_area = torch.sort(base + area.view(torch.int32))
    # from here on boxes are in that order; overlapping pairs go back to score order at the end
    sx1, sy1, sx2, sy2, sarea = (v.index_select(0, by_area) for v in (x1, y1, x2, y2, area))
    top = key - sarea.view(torch.int32) + (sarea * ((1 + 1e-5) / iou_threshold)).view(torch.int32)
    pos = torch.arange(k, device=dev)  # int64 throughout: index_select is slower with int32 indices
    other, first = concat_ranges(pos + 1, searchsorted(key, top, right=True) - pos - 1)
    iw = torch.minimum(sx2.index_select(0, first), sx2.index_select(0, other))
    iw.sub_(torch.maximum(sx1.index_select(0, first), sx1.index_select(0, other))).clamp_(min=0)
    ih = torch.minimum(sy2.index_select(0, first), sy2.index_select(0, other))
    ih.sub_(torch.maximum(sy1.index_select(0, first), sy1.index_select(0, other))).clamp_(min=0)
    sums = sarea.index_select(0, first).add_(sarea.index_select(0, other))
    edge = where(
        lambda inter, s: inter > s,  # the overlap test of overlap_mask
        iw.mul_(ih).mul_(1.0 + iou_threshold),
        sums.mul_(iou_threshold),
    )
    a, b = by_area.index_select(0, first.index_select(0, edge)), by_area.index_select(0, other.index_select(0, edge))
    src, dst = torch.minimum(a, b), torch.maximum(a, b)  # the earlier (better-scored) box first
    keep = torch.ones(k, dtype=torch.bool, device=dev)
    for _ in range(k + 1):  # the fixed point of the header; a few rounds in practice
        hit = keep.index_select(0, src).view(torch.uint8)
        suppressed = torch.zeros(k, dtype=torch.uint8, device=dev).scatter_reduce_(0, dst, hit, "amax")
        new_keep = suppressed == 0
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def _nms_padded(boxes: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS on ``(G, K, 4)`` padded groups, taken in chunks of similar candidate counts so
    that a few crowded groups do not pad every other group to K x K."""
    g = len(boxes)
    counts = valid.sum(-1)
    by_count = counts.argsort(descending=True)
    sorted_counts = counts[by_count].tolist()
    neg_counts = [-v for v in sorted_counts]  # ascending, for bisect
    keep = torch.zeros_like(valid)
    start = 0
    while start < g and sorted_counts[start] > 0:
        kc = sorted_counts[start]
        if kc == 1:  # the remaining groups hold one candidate each: nothing to suppress
            keep[by_count[start:], 0] = valid[by_count[start:], 0]
            break
        # one call for the groups with more than kc/2 candidates (little padding), within
        # a bound on the (G, K, K) buffers
        similar = bisect.bisect_left(neg_counts, -(kc // 2), lo=start) - start
        size = max(1, min(similar, _NMS_CHUNK_ELEMENTS // (kc * kc)))
        idx = by_count[start : start + size]
        keep[idx, :kc] = greedy_nms_keep(overlap_mask(boxes[idx, :kc], iou_threshold), valid[idx, :kc])
        start += size
    return keep
