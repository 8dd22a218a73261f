"""Greedy NMS over score-sorted groups as one compiled loop, for CPU tensors.

Greedy NMS is sequential by nature: a box survives if no better-scored box of its
group that survived overlaps it. On a GPU the batched tensor formulations in
:mod:`multibox.nms` win; on a CPU with a few hundred candidates per image their
cost is a few hundred small tensor operations, while the loop itself is a few
thousand overlap tests. With `Numba <https://numba.pydata.org>`_ installed, this
module compiles that loop once (cached on disk) and :func:`multibox.nms.postprocess`
uses it for CPU tensors; without Numba, :func:`greedy_nms_groups` returns ``None``
and the tensor code runs instead. Both keep exactly the same boxes: the overlap
test is the one of :func:`multibox.nms.overlap_mask`, in float32, operation for
operation (``inter * (1 + t) > (area_a + area_b) * t``, NaN never overlapping).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

def _greedy_groups(x1, y1, x2, y2, group, t_plus_one, t, keep):  # pragma: no cover - compiled
    """Fill ``keep`` for boxes that run group by group, best first within a group."""
    k = len(x1)
    zero = np.float32(0.0)
    area = np.empty(k, np.float32)
    for i in range(k):
        area[i] = np.maximum(x2[i] - x1[i], zero) * np.maximum(y2[i] - y1[i], zero) + zero
    kept = np.empty(k, np.int64)  # the kept boxes of the current group
    start = 0
    while start < k:
        g = group[start]
        num_kept = 0
        j = start
        while j < k and group[j] == g:
            survives = True
            for m in range(num_kept):
                i = kept[m]
                iw = np.maximum(np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]), zero)
                ih = np.maximum(np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]), zero)
                if iw * ih * t_plus_one > (area[i] + area[j]) * t:
                    survives = False
                    break
            keep[j] = survives
            if survives:
                kept[num_kept] = j
                num_kept += 1
            j += 1
        start = j


_compiled = None  # the compiled loop, built on first use (Numba's import alone takes ~0.4 s); False: no Numba


def _loop():
    global _compiled
    if _compiled is None:
        try:
            import numba
        except ImportError:  # pragma: no cover - exercised where Numba is not installed
            _compiled = False
        else:
            _compiled = numba.njit(cache=True, nogil=True)(_greedy_groups)
    return _compiled


def available() -> bool:
    """Whether the compiled loop can run (Numba is installed)."""
    return bool(_loop())


def greedy_nms_groups(boxes: Tensor, group: Tensor, iou_threshold: float) -> Tensor | None:
    """The ``(K,)`` kept mask of greedy NMS for CPU ``boxes (K, 4)`` (xyxy) that run group by
    group (``group`` ascending), best first within a group; ``None`` where the loop cannot run
    (no Numba, or tensors not on the CPU)."""
    loop = _loop()
    if not loop or boxes.device.type != "cpu" or group.device.type != "cpu":
        return None
    x1, y1, x2, y2 = boxes.detach().float().t().contiguous().numpy()
    keep = np.empty(len(x1), np.bool_)
    loop(x1, y1, x2, y2, group.contiguous().numpy().astype(np.int64, copy=False),
         np.float32(1.0 + iou_threshold), np.float32(iou_threshold), keep)
    return torch.from_numpy(keep)
