"""Integer ranges laid end to end: the index arithmetic behind sparse matching and NMS.

Listing "for each object, the priors in a range" or "for each box, the later boxes of its
group" without a Python loop comes down to one operation: concatenate the ranges
``starts[r], ..., starts[r] + counts[r] - 1`` and remember which range each value came from.
"""

from __future__ import annotations

import torch
from torch import Tensor


def concat_ranges(starts: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """The ranges ``starts[r] .. starts[r] + counts[r] - 1`` end to end, and for each value its
    range ``r``; both in the dtype of ``starts``."""
    dtype, device = starts.dtype, starts.device
    run = torch.repeat_interleave(counts.to(dtype))  # counts[r] copies of r: faster than repeating an arange
    shift = starts - (torch.cumsum(counts, 0, dtype=dtype) - counts)  # range start in values - in output
    return torch.arange(len(run), dtype=dtype, device=device) + shift.index_select(0, run), run
