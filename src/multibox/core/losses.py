"""Training objectives.

* :class:`MultiBoxLoss` - SSD's loss (eq. 1): Smooth L1 on the offsets of
  positive priors plus softmax cross-entropy over positives and the hardest
  negatives (at most 3 per positive), both divided by the number of positives.
  The logits have a background column 0.
* :class:`FocalLoss` - the walkthrough's alternative for sigmoid heads without a
  background column: sigmoid focal loss (Lin et al. 2017) over every prior and
  class, plus the same Smooth L1, divided by the number of positives.

Both take raw model outputs and padded targets (see :mod:`multibox.matching`),
match inside, and return a :class:`LossOutput`. Everything is batched: there is
no Python loop over images or priors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._kernels.loops import hard_negatives
from .._kernels.rowsums import exp_row_sums
from .._kernels.select import where
from .boxes import DEFAULT_VARIANCES, encode_boxes
from .matching import Matcher, Matches, match_priors


class LossOutput(NamedTuple):
    loss: Tensor  # scalar: loc + conf
    loc: Tensor  # scalar localisation part (already weighted by alpha)
    conf: Tensor  # scalar confidence part
    num_positives: Tensor  # scalar count of positive priors in the batch


def _localization_loss(loc: Tensor, matches: Matches, priors: Tensor, variances, index: Tensor) -> Tensor:
    """Summed Smooth L1 (beta 1) over the positive priors at flat ``index`` (``image * P + prior``).
    Only positives are encoded: background priors have no box."""
    n, p = matches.labels.shape
    target = encode_boxes(matches.positive_boxes(index), priors.index_select(0, index % p), variances)
    pred = loc.reshape(n * p, 4).index_select(0, index)
    return F.smooth_l1_loss(pred, target, beta=1.0, reduction="sum")


@torch.no_grad()
def background_loss(logits: Tensor) -> Tensor:
    """Cross-entropy of every row of ``(R, C)`` logits against class 0, ``-log softmax(x)_0``,
    without autograd: the loss by which hard negative mining ranks negatives.

    Computed as ``log(sum_c exp(x_c)) - log(exp(x_0))``: one ``exp`` and a matrix product that
    sums each row and picks its column 0, in chunks that stay in cache (:mod:`multibox.rowsums`),
    about twice as fast on CPUs as a log-softmax over every class (which also writes an
    ``(R, C)`` result). Rows whose sum overflows or underflows to zero (logits beyond about
    +-88) are recomputed with ``log_softmax``.
    """
    weights = logits.new_zeros(logits.shape[1], 2)
    weights[:, 0] = 1.0  # sum over every class
    weights[0, 1] = 1.0  # exp of the background logit
    sums = exp_row_sums(logits, weights)
    logs = sums.log_()
    loss = logs[:, 0] - logs[:, 1]
    if not bool(torch.isfinite(loss.sum())):  # the common case costs one sum
        bad = ~torch.isfinite(loss)
        loss[bad] = -torch.log_softmax(logits[bad], dim=1)[:, 0]
    return loss


def hard_negative_mask(conf_loss: Tensor, positive: Tensor, neg_pos_ratio: float) -> Tensor:
    """Per image, the ``neg_pos_ratio * num_positives`` negatives with the highest loss.

    ``conf_loss`` and ``positive`` are ``(N, P)``. Positives are never selected.
    Ties are broken by prior index (a stable sort), so the choice for an image does
    not depend on the other images of the batch; this keeps the loss separable over
    images, and data-parallel gradients equal to single-process ones.
    """
    num_pos = positive.view(torch.uint8).sum(dim=1, keepdim=True, dtype=torch.int32).long()
    num_neg = torch.minimum((num_pos * neg_pos_ratio).long(), positive.shape[1] - num_pos)
    k = int(num_neg.max()) if num_neg.numel() else 0
    if k == 0:
        return torch.zeros_like(positive)
    chosen = hard_negatives(conf_loss, positive, num_neg)  # CPU + Numba: one radix selection per image
    if chosen is not None:
        return chosen
    neg_loss = conf_loss.detach().masked_fill(positive, -math.inf)
    # The same set as a stable descending sort cut at num_neg, without sorting every prior:
    # the num_neg-th largest loss of each image (topk), everything at least as large, and when
    # that is too many (ties with it), of the tied priors the lowest-indexed ones.
    top = neg_loss.topk(k, dim=1, sorted=False).values.sort(dim=1, descending=True).values  # (N, k)
    kth = torch.gather(top, 1, (num_neg - 1).clamp(min=0))  # (N, 1)
    chosen = neg_loss >= kth
    excess = chosen.view(torch.uint8).sum(dim=1, keepdim=True, dtype=torch.int32) - num_neg
    if bool((excess > 0).any()):  # ties at the kth loss: keep only as many as needed
        need = num_neg - (top > kth).sum(dim=1, keepdim=True)  # every loss above kth is in top
        tied = (chosen & (neg_loss == kth)).nonzero()  # (T, 2) in (image, prior) order
        first = torch.searchsorted(tied[:, 0].contiguous(), torch.arange(len(positive), device=positive.device))
        rank = torch.arange(len(tied), device=tied.device) - first.index_select(0, tied[:, 0])
        drop = tied[rank >= need.squeeze(1).index_select(0, tied[:, 0])]
        chosen[drop[:, 0], drop[:, 1]] = False
    return chosen


class MultiBoxLoss(nn.Module):
    """SSD's MultiBox loss for softmax heads (class 0 = background).

    Args:
        priors: ``(P, 4)`` cxcywh priors (image fractions).
        iou_threshold: matching threshold (0.5).
        neg_pos_ratio: hard negatives per positive (3).
        alpha: weight of the localisation term (1).
        variances: offset encoding variances (0.1, 0.2).
        matcher: ``(gt_boxes, gt_labels, priors) -> Matches`` in place of SSD's matching
            (e.g. :func:`multibox.matching.match_atss` with its levels bound); ``iou_threshold``
            is then unused.
    """

    def __init__(
        self,
        priors: Tensor,
        iou_threshold: float = 0.5,
        neg_pos_ratio: float = 3.0,
        alpha: float = 1.0,
        variances: tuple[float, float] = DEFAULT_VARIANCES,
        matcher: Matcher | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("priors", priors.clone(), persistent=False)
        self.iou_threshold = iou_threshold
        self.neg_pos_ratio = neg_pos_ratio
        self.alpha = alpha
        self.variances = variances
        self.matcher = matcher

    def match(self, gt_boxes: Tensor, gt_labels: Tensor) -> Matches:
        if self.matcher is not None:
            return self.matcher(gt_boxes, gt_labels, self.priors)
        return match_priors(gt_boxes, gt_labels, self.priors, self.iou_threshold)

    def forward(self, loc: Tensor, logits: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> LossOutput:
        """``loc (N, P, 4)``, ``logits (N, P, C + 1)``, padded ``gt_boxes (N, M, 4)``, ``gt_labels (N, M)``."""
        return self.from_matches(loc, logits, self.match(gt_boxes, gt_labels))

    def from_matches(self, loc: Tensor, logits: Tensor, matches: Matches) -> LossOutput:
        n, p, c = logits.shape
        flat = logits.float().reshape(-1, c)
        positive = matches.labels > 0
        # Negatives are ranked by their loss without autograd; the cross-entropy that trains is
        # then taken over the positives and the chosen negatives only (a few percent of priors).
        negative = hard_negative_mask(background_loss(flat).view(n, p), positive, self.neg_pos_ratio)
        chosen = where(lambda pos, neg: pos | neg, positive, negative)
        chosen_labels = matches.labels.view(-1).index_select(0, chosen)
        conf_sum = F.cross_entropy(flat.index_select(0, chosen), chosen_labels, reduction="sum")
        pos_index = chosen[chosen_labels > 0]
        loc_sum = _localization_loss(loc.float(), matches, self.priors, self.variances, pos_index)
        num_pos = torch.tensor(len(pos_index), device=loc.device)
        # A batch without any object contributes zero loss rather than 0/0.
        denom = num_pos.clamp(min=1).to(conf_sum.dtype)
        conf_term = conf_sum / denom
        loc_term = self.alpha * loc_sum / denom
        return LossOutput(loc_term + conf_term, loc_term, conf_term, num_pos)


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss ``-alpha_t (1 - p_t)^gamma log(p_t)`` with ``p = sigmoid(logits)``.

    ``alpha`` weighs positives (``1 - alpha`` negatives); ``alpha < 0`` disables it.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


class FocalLoss(nn.Module):
    """Sigmoid focal loss + Smooth L1 for heads with one logit per class (no background).

    Column ``j`` of the logits is class ``j + 1``; a prior matched to background
    has all-zero targets. Both terms are divided by the number of positives.
    """

    def __init__(
        self,
        priors: Tensor,
        iou_threshold: float = 0.5,
        alpha: float = 0.25,
        gamma: float = 2.0,
        loc_weight: float = 1.0,
        variances: tuple[float, float] = DEFAULT_VARIANCES,
        matcher: Matcher | None = None,
    ) -> None:
        super().__init__()
        self.register_buffer("priors", priors.clone(), persistent=False)
        self.iou_threshold = iou_threshold
        self.alpha = alpha
        self.gamma = gamma
        self.loc_weight = loc_weight
        self.variances = variances
        self.matcher = matcher

    match = MultiBoxLoss.match

    def forward(self, loc: Tensor, logits: Tensor, gt_boxes: Tensor, gt_labels: Tensor) -> LossOutput:
        return self.from_matches(loc, logits, self.match(gt_boxes, gt_labels))

    def from_matches(self, loc: Tensor, logits: Tensor, matches: Matches) -> LossOutput:
        num_classes = logits.shape[-1]
        pos_index = where(lambda labels: labels > 0, matches.labels)
        loc_sum = _localization_loss(loc.float(), matches, self.priors, self.variances, pos_index)
        # one_hot over C + 1 columns then drop background column 0.
        targets = F.one_hot(matches.labels, num_classes + 1)[..., 1:].to(torch.float32)
        conf_sum = sigmoid_focal_loss(logits.float(), targets, self.alpha, self.gamma).sum()
        num_pos = torch.tensor(len(pos_index), device=loc.device)
        denom = num_pos.clamp(min=1).to(torch.float32)
        loc_term = self.loc_weight * loc_sum / denom
        conf_term = conf_sum / denom
        return LossOutput(loc_term + conf_term, loc_term, conf_term, num_pos)


def prior_probability_bias(prior: float = 0.01) -> float:
    """Bias that makes ``sigmoid(bias) == prior`` (RetinaNet's initialisation): -log((1-p)/p)."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior probability must be in (0, 1), got {prior}")
    return -math.log((1.0 - prior) / prior)
