"""Steps of post-processing and of the loss as compiled loops, for CPU tensors.

On a GPU the batched tensor formulations of :mod:`multibox.nms` and
:mod:`multibox.losses` win. On a CPU their cost is memory passes and many small
tensor operations, while the work itself is small: one look at every logit, a few
thousand overlap tests, one selection per image. With
`Numba <https://numba.pydata.org>`_ installed, this module compiles three loops (on
first use, cached on disk) that run for CPU tensors:

- :func:`candidate_rows` (post-processing): the priors whose row of logits can hold a
  score above the threshold, in one pass over the logits (two threads where PyTorch has two);
- :func:`greedy_nms_groups` (post-processing): greedy NMS over score-sorted groups;
- :func:`hard_negatives` (the MultiBox loss): each image's highest-loss negatives, by a
  radix selection over the float bits instead of a ``topk`` and a sort.

Without Numba, with ``MULTIBOX_NO_NUMBA=1`` in the environment, or for other devices,
dtypes, or NaN losses, each returns ``None`` and the tensor code runs instead. The
results are the same: candidate rows only ever add rows whose exact scores are then
computed and tested as before; the overlap test is the one of
:func:`multibox.nms.overlap_mask`, in float32, operation for operation
(``inter * (1 + t) > (area_a + area_b) * t``, NaN never overlapping); the negatives are
the same set as a stable descending sort cut at each image's count.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import Tensor


def _rows_above_background(logits, bound, mask):  # pragma: no cover - compiled
    """``mask[r]``: some class c > 0 of row r has ``l_c - l_0 > bound``. NaN compares false
    (a row with a NaN has no candidates: its softmax is all NaN)."""
    for r in numba.prange(logits.shape[0]):
        hit = False
        for c in range(1, logits.shape[1]):
            hit |= (logits[r, c] - logits[r, 0]) > bound
        mask[r] = hit


def _rows_above(logits, bound, mask):  # pragma: no cover - compiled
    """``mask[r]``: some class c of row r has ``l_c > bound``. (Its own kernel rather than a flag
    on the one above: a flag made the softmax pass about twice as slow; docs/benchmarks.md.)"""
    for r in numba.prange(logits.shape[0]):
        hit = False
        for c in range(logits.shape[1]):
            hit |= logits[r, c] > bound
        mask[r] = hit


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


def _highest_negatives(loss, positive, num_neg, chosen, has_nan):  # pragma: no cover - compiled
    """``chosen[i]``: the ``num_neg[i]`` non-positive priors of image i with the highest loss,
    ties to the lowest index. Float bits map to unsigned keys that order like the values
    (-0.0 as 0.0); a histogram of the keys' top 12 bits finds the bucket holding the cut,
    and only that bucket is sorted."""
    n, p = loss.shape
    bits = loss.view(np.int32)
    for i in numba.prange(n):
        keys = np.empty(p, np.uint32)
        hist = np.zeros(4096, np.int64)
        for j in range(p):
            b = bits[i, j]
            if b == -2147483648:  # -0.0
                b = 0
            key = np.uint32(b ^ 0x7FFFFFFF) if b < 0 else np.uint32(b) | np.uint32(0x80000000)
            keys[j] = key
            if loss[i, j] != loss[i, j]:
                has_nan[i] = True
            if not positive[i, j]:
                hist[key >> np.uint32(20)] += 1
        need = min(num_neg[i], hist.sum())  # never more than the image's negatives
        if need <= 0:
            for j in range(p):
                chosen[i, j] = False
            continue
        above = 0
        top = 4095
        while above + hist[top] < need:
            above += hist[top]
            top -= 1
        bucket = np.empty(hist[top], np.uint32)
        q = 0
        for j in range(p):
            if not positive[i, j] and (keys[j] >> np.uint32(20)) == top:
                bucket[q] = keys[j]
                q += 1
        bucket.sort()
        cut = bucket[q - (need - above)]  # the need-th largest key
        for j in range(q):
            above += bucket[j] > cut
        ties = need - above  # how many priors at the cut are taken, lowest index first
        for j in range(p):
            take = False
            if not positive[i, j]:
                if keys[j] > cut:
                    take = True
                elif keys[j] == cut and ties > 0:
                    take = True
                    ties -= 1
            chosen[i, j] = take


numba = None  # imported on first use: Numba's import alone takes ~0.4 s
_compiled: dict | None = None  # the compiled loops by name; {} where Numba is missing


def _loops() -> dict:
    global _compiled, numba
    if _compiled is None:
        try:
            if os.environ.get("MULTIBOX_NO_NUMBA", "0") not in ("", "0"):
                raise ImportError("compiled loops turned off by MULTIBOX_NO_NUMBA")
            import numba as _numba
        except ImportError:  # Numba missing or turned off: the tensor code runs everywhere
            _compiled = {}
        else:
            numba = _numba
            if not any(k in os.environ for k in ("NUMBA_THREADING_LAYER", "NUMBA_THREADING_LAYER_PRIORITY")):
                # OpenMP, PyTorch's own, first: Numba would take TBB where another library (OpenVINO)
                # has loaded it, and its TBB pool crashes the process at a later fork
                numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
            _compiled = {
                "softmax": _jit(_rows_above_background, parallel=True),
                "sigmoid": _jit(_rows_above, parallel=True),
                "greedy_groups": _jit(_greedy_groups, parallel=False),
                "negatives": _jit(_highest_negatives, parallel=True),
            }
    return _compiled


def _jit(fn, parallel: bool):
    try:
        return numba.njit(cache=True, nogil=True, parallel=parallel)(fn)
    except RuntimeError:  # pragma: no cover - no writable cache location: compile anew in each process
        return numba.njit(nogil=True, parallel=parallel)(fn)


def available() -> bool:
    """Whether the compiled loops can run (Numba is installed)."""
    return bool(_loops())


def _on_cpu(*tensors: Tensor) -> bool:
    """CPU tensors, outside ``torch.compile`` tracing (which traces the tensor code instead)."""
    return all(t.device.type == "cpu" for t in tensors) and not torch.compiler.is_compiling()


def _use_torch_threads() -> None:
    """Run parallel loops on as many threads as PyTorch uses (and Numba has)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def candidate_rows(logits: Tensor, threshold: float, score_type: str) -> Tensor | None:
    """Ascending indices of the rows of CPU ``logits (R, C)`` that may hold a class score above
    ``threshold``; ``None`` where the loop cannot run (or ``threshold <= 0``: every row may).

    A softmax score ``exp(l_c) / sum_j exp(l_j)`` is below ``exp(l_c - l_0)``, so it can pass
    only if ``l_c - l_0 > log(threshold)``; a sigmoid score only if ``l_c > logit(threshold)``.
    The tests use a margin of 1e-3 (float32 differences near ``log(threshold)`` are exact to
    ~1e-6), so no row that passes is ruled out; the rows kept get their exact scores after.
    """
    loops = _loops()
    if not loops or not _on_cpu(logits) or logits.dtype != torch.float32 or not threshold > 0:
        return None
    if score_type == "softmax":
        bound = math.log(threshold)
    else:
        bound = math.log(threshold / (1 - threshold)) if threshold < 1 else math.inf
    mask = np.empty(logits.shape[0], np.bool_)
    _use_torch_threads()
    loops[score_type](logits.detach().contiguous().numpy(), np.float32(bound - 1e-3), mask)
    return torch.from_numpy(np.flatnonzero(mask).astype(np.int64, copy=False))


def greedy_nms_groups(boxes: Tensor, group: Tensor, iou_threshold: float) -> Tensor | None:
    """The ``(K,)`` kept mask of greedy NMS for CPU ``boxes (K, 4)`` (xyxy) that run group by
    group (``group`` ascending), best first within a group; ``None`` where the loop cannot run
    (no Numba, or tensors not on the CPU)."""
    loop = _loops().get("greedy_groups")
    if loop is None or not _on_cpu(boxes, group):
        return None
    x1, y1, x2, y2 = boxes.detach().float().t().contiguous().numpy()
    keep = np.empty(len(x1), np.bool_)
    loop(
        x1,
        y1,
        x2,
        y2,
        group.contiguous().numpy().astype(np.int64, copy=False),
        np.float32(1.0 + iou_threshold),
        np.float32(iou_threshold),
        keep,
    )
    return torch.from_numpy(keep)


def hard_negatives(conf_loss: Tensor, positive: Tensor, num_neg: Tensor) -> Tensor | None:
    """``(N, P)`` bool: for each image, the ``num_neg (N, 1)`` priors that are not ``positive``
    with the highest ``conf_loss``, ties broken by the lower prior index (the set a stable
    descending sort cut at ``num_neg`` gives). ``None`` where the loop cannot run: no Numba,
    not float32 CPU tensors, or a NaN loss (whose order is PyTorch's to define)."""
    loop = _loops().get("negatives")
    if loop is None or not _on_cpu(conf_loss, positive, num_neg) or conf_loss.dtype != torch.float32:
        return None
    n, p = conf_loss.shape
    chosen = np.empty((n, p), np.bool_)
    has_nan = np.zeros(n, np.bool_)
    _use_torch_threads()
    loop(
        conf_loss.detach().contiguous().numpy(),
        positive.contiguous().numpy(),
        num_neg.reshape(-1).contiguous().numpy().astype(np.int64, copy=False),
        chosen,
        has_nan,
    )
    return None if has_nan.any() else torch.from_numpy(chosen)
