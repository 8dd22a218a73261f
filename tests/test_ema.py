import pytest
import torch
from torch import nn

from multibox.engine.ema import WeightAverage


def test_average_follows_the_ramped_recursion_by_hand():
    m = nn.BatchNorm1d(2)
    avg = WeightAverage(m, decay=0.5)
    e = m.weight.detach().clone()
    for n, value in enumerate([2.0, -1.0, 4.0], start=1):
        with torch.no_grad():
            m.weight.fill_(value)
            m.running_mean.fill_(value)
        m.num_batches_tracked.fill_(n)
        avg.update(m)
        d = min(0.5, (1 + n) / (10 + n))  # 2/11, 3/12, 4/13
        e = d * e + (1 - d) * value
        assert avg.current_decay() == d
        torch.testing.assert_close(avg.state["weight"], e)
    e1 = 2 / 11 * 1.0 + 9 / 11 * 2.0  # BatchNorm weights start at 1
    e2 = 3 / 12 * e1 + 9 / 12 * -1.0
    torch.testing.assert_close(avg.state["weight"], torch.full((2,), 4 / 13 * e2 + 9 / 13 * 4.0))
    assert avg.state["num_batches_tracked"].item() == 3  # integers are copied, not averaged
    assert avg.averaged_state(m)["num_batches_tracked"].dtype == torch.int64


def test_decay_must_be_a_fraction():
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage(nn.Linear(2, 2), 1.0)
