"""Index selection on small tensors: ``nonzero`` and ``searchsorted``, fast on CPUs.

Post-processing and the loss pick a few hundred rows out of tens of thousands several
times per batch. On CPUs NumPy does that work several times faster than PyTorch's
comparison kernels and ``nonzero`` on the same memory (a CPU tensor's ``.numpy()`` is a
view, not a copy; figures in docs/benchmarks.md). So the test is written once, with operators
that both libraries share, and runs in NumPy when every tensor is on the CPU:

    rows = where(lambda s: s > 0.01, scores)    # torch.nonzero((scores > 0.01).view(-1)).squeeze(1)

Searching a few thousand sorted int64 keys is the same story (NumPy's ``searchsorted`` is
faster for the 2,000-odd NMS candidates of a batch of 8), so
:func:`searchsorted` takes that path for CPU tensors and PyTorch's elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

_NUMPY_DTYPES = {
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.float32,
    torch.float64,
}  # not bfloat16: NumPy has none


def _numpy_can_take(*tensors: Tensor) -> bool:
    """Whether every tensor is on the CPU in a dtype NumPy has (so ``.numpy()`` is a view)."""
    return all(t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES for t in tensors)


def where(test: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
    """Ascending int64 indices ``i`` where ``test(*tensors).reshape(-1)[i]`` is true.

    ``test`` maps tensors of one shape to a boolean result of that shape using only operators
    (``<``, ``==``, ``&``, ``~``, arithmetic) that mean the same on NumPy arrays and tensors,
    including for NaN and infinities. Gradients are not tracked (the result is indices).
    """
    if _numpy_can_take(*tensors):
        with np.errstate(all="ignore"):
            mask = test(*(t.detach().numpy() for t in tensors))
        return torch.from_numpy(np.flatnonzero(mask).astype(np.int64, copy=False))
    return torch.nonzero(test(*tensors).reshape(-1)).squeeze(1)


def searchsorted(sorted_sequence: Tensor, values: Tensor, right: bool = False) -> Tensor:
    """``torch.searchsorted`` for a 1-D ascending ``sorted_sequence``: int64 insertion points."""
    if _numpy_can_take(sorted_sequence, values):
        side = "right" if right else "left"
        found = np.searchsorted(sorted_sequence.detach().numpy(), values.detach().numpy(), side=side)
        return torch.from_numpy(found.astype(np.int64, copy=False))
    return torch.searchsorted(sorted_sequence, values, right=right)
