"""The detection-output stage of SSD: network outputs of a whole batch to detections.

:func:`postprocess` turns per-prior offsets and logits into per-image detections:
class scores (softmax without background, or sigmoid), a score threshold, at most
``candidates_per_class`` candidates per (image, class), decoding, greedy NMS per
(image, class) group (:mod:`multibox.core.nms`) and a final top-k per image, all
batched. Exact class scores are computed only for the priors that can pass the
threshold; on CPUs with Numba that row test is one compiled pass over the logits
(:mod:`multibox._kernels.loops`). Optional box voting (:func:`vote_boxes`) then moves
each kept box to the score-weighted mean of the candidates it overlaps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .._kernels.loops import candidate_rows
from .._kernels.ranges import concat_ranges
from .._kernels.rowsums import exp_row_sums
from .._kernels.select import where
from .boxes import DEFAULT_VARIANCES, clip_boxes, decode_boxes
from .nms import nms_sorted_groups, overlaps_above


def _class_scores(logits: Tensor, score_type: str) -> Tensor:
    """Class scores ``(..., C)`` from logits: softmax without the background column 0, or sigmoid."""
    if score_type == "softmax":
        return torch.softmax(logits, dim=-1)[..., 1:]
    return torch.sigmoid(logits)


def _candidate_rows(logits: Tensor, score_type: str, threshold: float) -> tuple[Tensor, Tensor]:
    """The priors that may have a class score above ``threshold``, as flat indices
    ``image * P + prior`` (ascending), and the class scores ``(R, C)`` of those rows.

    A cheap necessary test rules out the rows that cannot hold a candidate, so the exact
    scores are computed for the other rows only: a few hundred per image once a model is
    trained, instead of every prior and class. On CPUs with Numba it is one compiled pass
    over the logits (:func:`multibox.loops.candidate_rows`), elsewhere the tensor tests of
    :func:`_rows_that_may_pass`; either may keep a few rows more than the other, never one
    with a passing score.
    """
    n, p, k = logits.shape
    flat = logits.reshape(n * p, k)
    if threshold <= 0:
        rows = torch.arange(n * p, device=logits.device)
    else:
        rows = candidate_rows(flat, threshold, score_type)
        if rows is None:
            rows = _rows_that_may_pass(flat, score_type, threshold)
    if rows.numel() == n * p:  # e.g. an untrained model: no row can be ruled out
        return rows, _class_scores(flat, score_type)
    return rows, _class_scores(flat.index_select(0, rows), score_type)


def _rows_that_may_pass(flat: Tensor, score_type: str, threshold: float) -> Tensor:
    """Ascending indices of the rows of ``flat (R, C)`` logits that may hold a score above
    ``threshold > 0``, by tensor operations.

    A softmax score ``exp(l_c) / sum_j exp(l_j)`` is below ``exp(l_c) / exp(l_0)``, so a row
    can pass only if its foreground exponentials sum to more than ``threshold * exp(l_0)``;
    a sigmoid score passes only if ``l_c > logit(threshold)``. A small margin absorbs
    ``exp`` rounding.
    """
    if score_type == "softmax":
        # sum_{c>0} exp(l_c) - t exp(l_0) > 0 is necessary (the sum is at least the largest
        # term): one weighted row sum of exp(logits). A row is ruled out only by a finite sum of
        # at most -1e-30: then exp(l_0) is a normal float (no overflow, no underflow), the
        # margin absorbs rounding and the 1e-30 the foreground terms that underflowed to zero.
        # Every other row is kept: NaN (inf - inf), -inf (exp(l_0) overflowed), and sums near
        # zero (exp(l_0) too small to trust). Exact scores follow for every kept row.
        weights = flat.new_ones(flat.shape[1], 1)
        weights[0] = -threshold * 0.999  # the margin absorbs exp and summation rounding
        return where(lambda s: ~((s <= -1e-30) & (s > -math.inf)), exp_row_sums(flat, weights).squeeze(1))
    if threshold >= 1:
        return torch.zeros(0, dtype=torch.long, device=flat.device)
    return where(lambda m: m > math.log(threshold / (1 - threshold)) - 1e-3, flat.amax(dim=1))


class Detections(NamedTuple):
    """Padded detections of a batch, best first.

    boxes: ``(N, D, 4)`` xyxy; scores: ``(N, D)``; labels: ``(N, D)`` classes ``1..C``;
    num: ``(N,)`` how many rows of each image are real (the rest are zeros).
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    num: Tensor

    def per_image(self) -> list[dict[str, Tensor]]:
        """Unpad into one ``{"boxes", "scores", "labels"}`` dict per image."""
        return [
            {"boxes": b[:n], "scores": s[:n], "labels": l[:n]}
            for b, s, l, n in zip(self.boxes, self.scores, self.labels, self.num.tolist())
        ]


def postprocess(
    loc: Tensor,
    logits: Tensor,
    priors: Tensor,
    score_type: str = "softmax",
    score_threshold: float = 0.01,
    iou_threshold: float = 0.45,
    max_detections: int = 200,
    candidates_per_class: int | None = 400,
    image_sizes: Tensor | None = None,
    variances: tuple[float, float] = DEFAULT_VARIANCES,
    box_voting: bool = False,
) -> Detections:
    """Turn raw head outputs into detections, for the whole batch at once.

    Steps (SSD section 3 / the reference Caffe detection-output layer): class
    scores by softmax (dropping background column 0) or sigmoid; decode offsets
    against the priors and clip to the image; per image and class keep scores
    above ``score_threshold``, at most ``candidates_per_class`` best (Caffe's
    ``top_k=400``; ``None`` keeps all), greedy NMS at ``iou_threshold``; then the
    ``max_detections`` best over all classes. With ``box_voting`` each detection's box
    becomes the score-weighted mean of its group's candidates that overlap it by more than
    ``iou_threshold`` (itself included; :func:`vote_boxes`); scores and ranks stay.

    Args:
        loc: ``(N, P, 4)`` predicted offsets; logits: ``(N, P, C')`` class logits.
        priors: ``(P, 4)`` cxcywh priors in image fractions.
        image_sizes: optional ``(N, 2)`` ``(height, width)`` in pixels; boxes are
            returned in those pixels, otherwise in image fractions.
    """
    if loc.ndim != 3 or loc.shape[-1] != 4:
        raise ValueError(f"loc must be (N, P, 4), got {tuple(loc.shape)}")
    if logits.shape[:2] != loc.shape[:2]:
        raise ValueError(f"logits {tuple(logits.shape)} and loc {tuple(loc.shape)} disagree on (N, P)")
    if priors.shape != loc.shape[1:]:
        raise ValueError(f"priors must be {(loc.shape[1], 4)}, got {tuple(priors.shape)}")
    if score_type not in ("softmax", "sigmoid"):
        raise ValueError(f"score_type must be 'softmax' or 'sigmoid', got {score_type!r}")
    n, p, _ = logits.shape
    logits = logits.float()

    # Candidates of each (image, class) group: its scores above the threshold, best first
    # and, among equal scores, lowest prior index first (so ties resolve the same way
    # everywhere; ONNX's TopK and NonMaxSuppression also prefer the lower index), at most
    # candidates_per_class. K = the most any group keeps: realistic batches have a few
    # dozen, an untrained model every prior.
    rows, row_scores = _candidate_rows(logits, score_type, score_threshold)  # (R,), (R, C)
    c = row_scores.shape[-1]
    flat = where(lambda s: s > score_threshold, row_scores)  # flat (row, class) indices, ascending
    row, cls = torch.div(flat, c, rounding_mode="floor"), flat % c
    flat_prior = rows.index_select(0, row)
    img, prior = torch.div(flat_prior, p, rounding_mode="floor"), flat_prior % p  # ascending (image, prior, class)
    gid = img * c + cls  # (image, class) group id
    counts = torch.bincount(gid, minlength=n * c)  # (N*C,)
    k = int(counts.max()) if counts.numel() else 0
    cap = k if candidates_per_class is None else min(k, candidates_per_class)
    if k == 0:
        z = loc.new_zeros
        return Detections(
            z(n, 0, 4),
            z(n, 0),
            torch.zeros(n, 0, dtype=torch.long, device=loc.device),
            torch.zeros(n, dtype=torch.long, device=loc.device),
        )
    if k > cap:  # crowded groups (untrained models): the cap best of every group by topk
        scores = row_scores.view(n, p, c) if rows.numel() == n * p else _class_scores(logits, score_type)
        per_group = scores.transpose(1, 2).reshape(n * c, p)
        _, top_prior = per_group.topk(cap, dim=1)
        top_prior = top_prior.sort(dim=1).values
        top_scores = torch.gather(per_group, 1, top_prior)
        top_scores, order = top_scores.sort(dim=1, descending=True, stable=True)
        top_prior = torch.gather(top_prior, 1, order)
        sel = where(lambda s: s > score_threshold, top_scores)
        group = torch.div(sel, cap, rounding_mode="floor")
        prior, cand_scores = top_prior.view(-1).index_select(0, sel), top_scores.view(-1).index_select(0, sel)
    else:  # every candidate fits: take exactly the ones above the threshold
        cand_scores = row_scores.reshape(-1).index_select(0, flat)
        order = _sort_by_key_then_score(gid, cand_scores)  # by group, then score, then prior
        group, prior, cand_scores = (
            gid.index_select(0, order),
            prior.index_select(0, order),
            cand_scores.index_select(0, order),
        )
    # Candidates now run group by group, best first. Decode (and clip) only their boxes.
    img = torch.div(group, c, rounding_mode="floor")
    cand = clip_boxes(
        decode_boxes(
            loc.float().reshape(n * p, 4).index_select(0, img * p + prior),
            priors.float().index_select(0, prior),
            variances,
        )
    )
    keep = nms_sorted_groups(cand, group, counts, cap, iou_threshold)

    # The max_detections best kept boxes of each image: by score, then class, then rank.
    kept = where(lambda k: k, keep)
    k_img, k_scores = img.index_select(0, kept), cand_scores.index_select(0, kept)
    order = _sort_by_key_then_score(k_img, k_scores)
    kept, k_img = kept.index_select(0, order), k_img.index_select(0, order)
    per_image = torch.bincount(k_img, minlength=n)
    rank = torch.arange(len(kept), device=kept.device) - (torch.cumsum(per_image, 0) - per_image).index_select(0, k_img)
    d = min(max_detections, c * cap)
    if int(per_image.max()) > d:  # some image kept more than d boxes: drop its worst
        take = where(lambda r: r < d, rank)
        kept, k_img, rank = kept.index_select(0, take), k_img.index_select(0, take), rank.index_select(0, take)
    out_boxes = loc.new_zeros(n, d, 4, dtype=torch.float32)
    out_scores = loc.new_zeros(n, d, dtype=torch.float32)
    out_labels = torch.zeros(n, d, dtype=torch.long, device=loc.device)
    out_boxes[k_img, rank] = (
        vote_boxes(cand, cand_scores, group, kept, iou_threshold) if box_voting else cand.index_select(0, kept)
    )
    out_scores[k_img, rank] = cand_scores.index_select(0, kept)
    out_labels[k_img, rank] = group.index_select(0, kept) % c + 1
    if image_sizes is not None:
        hw = image_sizes.to(out_boxes)
        scale = torch.stack((hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]), dim=-1).unsqueeze(1)
        out_boxes = out_boxes * scale
    return Detections(out_boxes, out_scores, out_labels, torch.clamp(per_image, max=d))


def vote_boxes(boxes: Tensor, scores: Tensor, group: Tensor, kept: Tensor, iou_threshold: float) -> Tensor:
    """Box voting (Gidaris and Komodakis, 2015): for candidates ``boxes (K, 4)`` with ``scores (K,)``
    that run group by group (``group`` ascending), the boxes of the ``kept`` ones, each replaced
    by the score-weighted mean of the candidates of its group that overlap it by more than
    ``iou_threshold`` (:func:`overlaps_above`; the box itself is one of them).
    Every kept box is paired with every candidate of its group: no loop over boxes or groups."""
    sizes = torch.bincount(group, minlength=int(group[-1]) + 1 if len(group) else 0)
    starts = torch.cumsum(sizes, 0) - sizes
    g = group.index_select(0, kept)
    other, owner = concat_ranges(starts.index_select(0, g), sizes.index_select(0, g))
    own = boxes.index_select(0, kept)
    b = boxes.index_select(0, other)
    weight = scores.index_select(0, other) * overlaps_above(own.index_select(0, owner), b, iou_threshold)
    total = torch.zeros(len(kept), dtype=boxes.dtype, device=boxes.device).index_add_(0, owner, weight)
    voted = torch.zeros(len(kept), 4, dtype=boxes.dtype, device=boxes.device).index_add_(
        0, owner, b * weight.unsqueeze(1)
    )
    # a box with no area overlaps nothing, not even itself: it keeps its own coordinates
    return torch.where(total.unsqueeze(1) > 0, voted / total.clamp(min=torch.finfo(total.dtype).tiny).unsqueeze(1), own)


def _sort_by_key_then_score(key: Tensor, scores: Tensor) -> Tensor:
    """The order that sorts by ``key`` (small non-negative integers) ascending, then by ``scores``
    (float32, >= 0) descending, ties in input order: one stable sort of an int64 key, as the
    bit patterns of non-negative floats order like their values."""
    bits = scores.contiguous().view(torch.int32).to(torch.int64)
    return torch.sort(key * 2**31 + (2**31 - 1 - bits), stable=True).indices
