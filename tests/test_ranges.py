import torch

from multibox._kernels.ranges import concat_ranges


def test_concat_ranges_by_hand_with_empty_ranges():
    starts = torch.tensor([5, 0, 9, 2])
    counts = torch.tensor([3, 0, 1, 2])
    values, run = concat_ranges(starts, counts)
    assert values.tolist() == [5, 6, 7, 9, 2, 3]
    assert run.tolist() == [0, 0, 0, 2, 3, 3]


def test_concat_ranges_keeps_int32_and_handles_nothing():
    values, run = concat_ranges(torch.tensor([1, 4], dtype=torch.int32), torch.tensor([2, 1], dtype=torch.int32))
    assert values.dtype == run.dtype == torch.int32
    assert values.tolist() == [1, 2, 4] and run.tolist() == [0, 0, 1]
    values, run = concat_ranges(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert values.numel() == 0 and run.numel() == 0
