"""Weighted sums of ``exp(logits)`` over each row, the cheap part of a softmax on CPUs.

Hard negative mining needs every prior's background cross-entropy, and post-processing
needs to know which priors can hold a score above the threshold. Both reduce each row of
``(R, C)`` logits with ``exp`` and a few weighted sums, which this module computes as one
``exp`` and one matrix product per chunk of rows: the chunk stays in cache, one buffer is
reused, and the product does the short row sums that an elementwise kernel does slowly.
"""

from __future__ import annotations

import torch
from torch import Tensor

ROWS_PER_CHUNK = 16384


@torch.no_grad()
def exp_row_sums(logits: Tensor, weights: Tensor) -> Tensor:
    """``exp(logits) @ weights`` for ``(R, C)`` logits and ``(C, W)`` weights, chunk by chunk.

    No shift by the row maximum: ``exp`` overflows to ``inf`` for logits above ~88 and
    underflows to 0 below ~-103; callers check for that and handle those rows exactly.
    """
    r, c = logits.shape
    out = logits.new_empty(r, weights.shape[1])
    work = logits.new_empty(min(r, ROWS_PER_CHUNK), c)
    for start in range(0, r, ROWS_PER_CHUNK):
        w = torch.exp(logits[start : start + ROWS_PER_CHUNK], out=work[: min(ROWS_PER_CHUNK, r - start)])
        torch.mm(w, weights, out=out[start : start + ROWS_PER_CHUNK])
    return out
