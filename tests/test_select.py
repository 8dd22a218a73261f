import math

import pytest
import torch

from multibox._kernels.select import where


def reference(test, *tensors):
    return torch.nonzero(test(*tensors).reshape(-1)).squeeze(1)


def test_where_by_hand_with_nan_and_infinities():
    s = torch.tensor([0.5, float("nan"), -math.inf, math.inf, -1.0, -1e-31, 0.0])
    idx = where(lambda v: ~((v <= -1e-30) & (v > -math.inf)), s)
    assert idx.tolist() == [0, 1, 2, 3, 5, 6]  # only -1.0 is ruled out; NaN compares false
    assert idx.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32])
def test_where_equals_nonzero_on_strided_tensors(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(50, 21, generator=g) * 4).to(dtype)[:, 1:]  # not contiguous
    y = (torch.randn(50, 21, generator=g) * 4).to(dtype)[:, 1:]
    for test in (lambda a: a > 1, lambda a, b: a >= b, lambda a, b: (a > b) | (a < -2)):
        args = (x,) if test.__code__.co_argcount == 1 else (x, y)
        assert torch.equal(where(test, *args), reference(test, *args))


def test_where_on_bool_tensors_and_tensors_that_need_grad():
    a = torch.tensor([[True, False], [False, True]])
    b = torch.tensor([[False, False], [True, False]])
    assert where(lambda p, q: p | q, a, b).tolist() == [0, 2, 3]
    w = torch.tensor([0.2, -0.3, 0.9], requires_grad=True)
    assert where(lambda v: v > 0, w).tolist() == [0, 2]
    assert where(lambda v: v > 5, w).tolist() == []


@pytest.mark.parametrize("right", [False, True])
def test_searchsorted_equals_torch_with_ties_and_out_of_range(right):
    from multibox._kernels.select import searchsorted

    seq = torch.tensor([-5, 0, 0, 0, 3, 7, 7, 2**40], dtype=torch.int64)
    values = torch.tensor([-9, -5, 0, 1, 7, 8, 2**40, 2**41], dtype=torch.int64)
    got = searchsorted(seq, values, right=right)
    assert got.dtype == torch.int64
    assert torch.equal(got, torch.searchsorted(seq, values, right=right))
    by_hand = [0, 0, 1, 4, 5, 7, 7, 8] if not right else [0, 1, 4, 4, 7, 7, 8, 8]
    assert got.tolist() == by_hand
