"""Non-maximum suppression and SSD post-processing for a whole batch at once.

Greedy NMS keeps the highest-scoring box and drops every box overlapping a kept
one by more than a threshold, in score order. It looks sequential, but the kept
set is the unique fixed point of

    keep[i] = not any(keep[j] and IoU[j, i] > t for j ranked before i)

and iterating that rule from "keep everything" reaches it; after ``t`` rounds the
first ``t`` boxes are final, and in practice a handful of rounds suffice because
suppression chains are short. Each round is one batched tensor operation over
every (image, class) group, so there is no Python loop over boxes, classes or
images. The result is identical to the textbook loop (tests check this).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .boxes import DEFAULT_VARIANCES, box_iou, clip_boxes, decode_boxes


def greedy_nms_mask(iou: Tensor, valid: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS on groups of score-sorted boxes.

    Args:
        iou: ``(G, K, K)`` pairwise IoU of each group's boxes, sorted by score descending.
        valid: ``(G, K)`` which entries are real boxes (padding is never kept and never suppresses).
        iou_threshold: a box overlapping a kept, higher-scored box by more than this is dropped.

    Returns:
        ``(G, K)`` bool mask of kept boxes.
    """
    k = iou.shape[-1]
    # overlaps[g, j, i]: box j (earlier) would suppress box i (later).
    earlier = torch.ones(k, k, dtype=torch.bool, device=iou.device).triu(diagonal=1)
    overlaps = (iou > iou_threshold) & earlier & valid.unsqueeze(-1)
    keep = valid.clone()
    for _ in range(k + 1):  # converges in at most K rounds; usually a few
        suppressed = torch.bmm(keep.unsqueeze(1).to(torch.float32), overlaps.to(torch.float32)).squeeze(1) > 0
        new_keep = valid & ~suppressed
        if torch.equal(new_keep, keep):
            break
        keep = new_keep
    return keep


def batched_nms(
    boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float
) -> Tensor:
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
) -> Detections:
    """Turn raw head outputs into detections, for the whole batch at once.

    Steps (SSD section 3 / the reference Caffe detection-output layer): class
    scores by softmax (dropping background column 0) or sigmoid; decode offsets
    against the priors and clip to the image; per image and class keep scores
    above ``score_threshold``, at most ``candidates_per_class`` best (Caffe's
    ``top_k=400``; ``None`` keeps all), greedy NMS at ``iou_threshold``; then the
    ``max_detections`` best over all classes.

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
    logits = logits.float()
    if score_type == "softmax":
        scores = torch.softmax(logits, dim=-1)[..., 1:]
    elif score_type == "sigmoid":
        scores = torch.sigmoid(logits)
    else:
        raise ValueError(f"score_type must be 'softmax' or 'sigmoid', got {score_type!r}")
    n, p, c = scores.shape
    boxes = clip_boxes(decode_boxes(loc.float(), priors.float(), variances))  # (N, P, 4)

    # Candidates per (image, class): K = the most any group has above threshold,
    # capped; realistic batches have a few dozen, an untrained model all P.
    scores = scores.transpose(1, 2)  # (N, C, P)
    above = scores > score_threshold
    k = int(above.sum(-1).max()) if scores.numel() else 0
    if candidates_per_class is not None:
        k = min(k, candidates_per_class)
    if k == 0:
        z = loc.new_zeros
        return Detections(z(n, 0, 4), z(n, 0), torch.zeros(n, 0, dtype=torch.long, device=loc.device),
                          torch.zeros(n, dtype=torch.long, device=loc.device))
    # A stable sort, not topk: equal scores keep prior order, so ties resolve the same
    # way everywhere (ONNX's TopK and NonMaxSuppression also prefer the lower index).
    top_scores, top_idx = scores.sort(dim=-1, descending=True, stable=True)
    top_scores, top_idx = top_scores[..., :k], top_idx[..., :k]  # (N, C, K)
    valid = top_scores > score_threshold
    cand = torch.gather(boxes.unsqueeze(1).expand(n, c, p, 4), 2, top_idx.unsqueeze(-1).expand(n, c, k, 4))

    flat_boxes = cand.reshape(n * c, k, 4)
    keep = greedy_nms_mask(box_iou(flat_boxes, flat_boxes), valid.reshape(n * c, k), iou_threshold)
    keep = keep.view(n, c, k)

    kept_scores = torch.where(keep, top_scores, torch.full_like(top_scores, -1.0)).reshape(n, c * k)
    d = min(max_detections, c * k)
    best_scores, best = kept_scores.sort(dim=1, descending=True, stable=True)
    best_scores, best = best_scores[:, :d], best[:, :d]  # (N, D)
    real = best_scores >= 0
    out_boxes = torch.gather(cand.reshape(n, c * k, 4), 1, best.unsqueeze(-1).expand(n, d, 4))
    out_labels = best // k + 1
    if image_sizes is not None:
        hw = image_sizes.to(out_boxes)
        scale = torch.stack((hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]), dim=-1).unsqueeze(1)
        out_boxes = out_boxes * scale
    zero = torch.zeros((), dtype=out_boxes.dtype, device=out_boxes.device)
    return Detections(
        torch.where(real.unsqueeze(-1), out_boxes, zero),
        torch.where(real, best_scores, zero),
        torch.where(real, out_labels, torch.zeros_like(out_labels)),
        real.sum(dim=1),
    )
