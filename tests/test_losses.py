import math

import pytest
import torch
import torch.nn.functional as F

from multibox.core.boxes import encode_boxes, xyxy_to_cxcywh
from multibox.core.losses import FocalLoss, MultiBoxLoss, hard_negative_mask, prior_probability_bias, sigmoid_focal_loss
from multibox.core.matching import match_priors
from multibox.core.priors import ssd300_priors

PRIORS = xyxy_to_cxcywh(
    torch.tensor(
        [[0.0, 0.0, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.3, 0.3]]
    )
)


def test_multibox_loss_by_hand():
    # one object exactly on prior 0 -> 1 positive, 3 hard negatives of 4 negatives
    gt = torch.tensor([[[0.0, 0.0, 0.5, 0.5]]])
    labels = torch.tensor([[1]])
    loc = torch.zeros(1, 5, 4)
    loc[0, 0] = torch.tensor([0.5, -2.0, 0.0, 0.0])  # target is 0: smooth L1 = 0.5*0.25 + (2 - 0.5) = 1.625
    logits = torch.zeros(1, 5, 3)
    logits[0, 4, 0] = 5.0  # prior 4 is a confident background: the easiest negative, not mined
    out = MultiBoxLoss(PRIORS)(loc, logits, gt, labels)
    ce_uniform = math.log(3)
    assert out.num_positives.item() == 1
    assert out.loc.item() == pytest.approx(1.625)
    # positive + 3 hardest negatives (priors 1, 2, 3) each cost log 3
    assert out.conf.item() == pytest.approx(4 * ce_uniform, rel=1e-6)
    assert out.loss.item() == pytest.approx(1.625 + 4 * ce_uniform, rel=1e-6)


def test_no_positive_batch_is_finite_zero_and_differentiable():
    loc = torch.randn(2, 5, 4, requires_grad=True)
    logits = torch.randn(2, 5, 3, requires_grad=True)
    out = MultiBoxLoss(PRIORS)(loc, logits, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.fixture(params=["compiled", "tensor"])
def mining(request, monkeypatch):
    """Run a test with the compiled hard negative selection (skipped without Numba) and with
    the tensor one that replaces it elsewhere."""
    import multibox.core.losses as losses
    from multibox._kernels import loops

    if request.param == "compiled" and not loops.available():
        pytest.skip("compiled loops unavailable (no Numba, or MULTIBOX_NO_NUMBA=1)")
    if request.param == "tensor":
        monkeypatch.setattr(losses, "hard_negatives", lambda *a: None)
    return request.param


def test_hard_negatives_never_include_positives_and_respect_ratio(mining):
    conf = torch.tensor([[9.0, 8.0, 1.0, 2.0, 3.0, 0.5, 7.0]])
    pos = torch.tensor([[True, False, False, False, False, False, True]])
    neg = hard_negative_mask(conf, pos, 3)
    # 2 positives -> 6 wanted, only 5 negatives exist -> all 5
    assert neg.tolist() == [[False, True, True, True, True, True, False]]
    neg = hard_negative_mask(conf, pos, 1)
    assert neg.tolist() == [[False, True, False, False, True, False, False]]


def _slow_multibox_loss(loc, logits, gt, labels, priors, thr=0.5, ratio=3):
    """Independent per-image implementation with explicit sorting."""
    total_loc, total_conf, total_pos = 0.0, 0.0, 0
    matches = match_priors(gt, labels, priors, thr)
    for i in range(loc.shape[0]):
        lab = matches.labels[i]
        pos = lab > 0
        npos = int(pos.sum())
        total_pos += npos
        if npos:
            t = encode_boxes(matches.boxes[i][pos], priors[pos])
            d = (loc[i][pos] - t).abs()
            total_loc += float(torch.where(d < 1, 0.5 * d**2, d - 0.5).sum())
        ce = [float(-F.log_softmax(logits[i, p], -1)[lab[p]]) for p in range(len(lab))]
        neg_losses = sorted((ce[p] for p in range(len(lab)) if not pos[p]), reverse=True)
        total_conf += sum(ce[p] for p in range(len(lab)) if pos[p]) + sum(neg_losses[: ratio * npos])
    n = max(total_pos, 1)
    return total_loc / n, total_conf / n


def test_multibox_loss_matches_slow_reference_on_ssd300():
    g = torch.Generator().manual_seed(1)
    priors = ssd300_priors()
    n, m = 3, 5
    xy = torch.rand(n, m, 2, generator=g) * 0.6
    gt = torch.cat((xy, xy + torch.rand(n, m, 2, generator=g) * 0.35 + 0.03), -1)
    labels = torch.randint(1, 21, (n, m), generator=g)
    labels[0, 2:] = 0
    labels[2] = 0  # an image with no objects
    loc = torch.randn(n, len(priors), 4, generator=g)
    logits = torch.randn(n, len(priors), 21, generator=g)
    out = MultiBoxLoss(priors)(loc, logits, gt, labels)
    ref_loc, ref_conf = _slow_multibox_loss(loc, logits, gt, labels, priors)
    assert out.loc.item() == pytest.approx(ref_loc, rel=1e-5)
    assert out.conf.item() == pytest.approx(ref_conf, rel=1e-5)


def test_sigmoid_focal_loss_by_hand():
    x = torch.tensor([0.0, 0.0, 2.0])
    t = torch.tensor([1.0, 0.0, 0.0])
    got = sigmoid_focal_loss(x, t, alpha=0.25, gamma=2.0)
    p2 = 1 / (1 + math.exp(-2))
    expected = [0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2), 0.75 * p2**2 * -math.log(1 - p2)]
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    # gamma 0 and alpha disabled is plain BCE
    assert sigmoid_focal_loss(x, t, alpha=-1, gamma=0).tolist() == pytest.approx(
        F.binary_cross_entropy_with_logits(x, t, reduction="none").tolist()
    )


def test_focal_loss_module_by_hand():
    gt = torch.tensor([[[0.0, 0.0, 0.5, 0.5]]])
    labels = torch.tensor([[2]])
    loc = torch.zeros(1, 5, 4)
    logits = torch.zeros(1, 5, 2)  # 2 classes, no background column
    out = FocalLoss(PRIORS)(loc, logits, gt, labels)
    # 1 positive (prior 0, class 2 -> column 1); 10 logits all p = 0.5:
    # 1 positive entry 0.25*0.25*ln2, 9 negative entries 0.75*0.25*ln2
    expected = (0.25 * 0.25 + 9 * 0.75 * 0.25) * math.log(2)
    assert out.conf.item() == pytest.approx(expected, rel=1e-6)
    assert out.loc.item() == 0.0


def test_prior_probability_bias():
    b = prior_probability_bias(0.01)
    assert 1 / (1 + math.exp(-b)) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        prior_probability_bias(1.5)


def test_background_loss_equals_log_softmax_including_extreme_logits_and_chunk_edges():
    from multibox._kernels.rowsums import ROWS_PER_CHUNK as _ROWS_PER_CHUNK
    from multibox.core.losses import background_loss

    g = torch.Generator().manual_seed(0)
    x = torch.randn(_ROWS_PER_CHUNK + 37, 5, generator=g) * 4  # a partial last chunk
    x[3] = torch.tensor([0.0, 120.0, 1.0, 2.0, 3.0])  # exp overflows: recomputed exactly
    x[4] = torch.tensor([-200.0, -150.0, -190.0, -300.0, -160.0])  # exp underflows to zero
    x[_ROWS_PER_CHUNK] = torch.tensor([50.0, -50.0, 0.0, 10.0, 49.0])  # first row of chunk 2
    expected = -torch.log_softmax(x.double(), dim=1)[:, 0]
    got = background_loss(x)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=2e-5)
    assert got[3].item() == pytest.approx(120.0 + math.log1p(math.exp(3 - 120.0)), rel=1e-6)
    assert got[4].item() == pytest.approx(50.0, rel=1e-5)


def test_hard_negatives_break_ties_by_prior_index_per_image(mining):
    conf = torch.tensor(
        [[5.0, 2.0, 2.0, 2.0, 2.0, 1.0, 9.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0], [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]]
    )
    pos = torch.tensor(
        [
            [True, False, False, False, False, False, False],
            [False, False, False, True, False, False, False],
            [False, False, False, False, False, False, False],
        ]
    )  # no positive: no negative
    neg = hard_negative_mask(conf, pos, 2)
    assert neg.tolist() == [
        [False, True, False, False, False, False, True],  # 9, then the first 2.0
        [True, True, False, False, False, False, False],
        [False] * 7,
    ]


def _sorted_negatives(conf, pos, ratio):
    """Independent: per image, a stable descending sort of the negatives' losses, cut."""
    out = torch.zeros_like(pos)
    for i in range(len(conf)):
        num_pos = int(pos[i].sum())
        num_neg = min(int(num_pos * ratio), conf.shape[1] - num_pos)
        idx = (~pos[i]).nonzero().squeeze(1)
        order = sorted(idx.tolist(), key=lambda j: -conf[i, j].item())  # Python's sort is stable
        out[i, order[:num_neg]] = True
    return out


@pytest.mark.parametrize("seed", range(4))
def test_compiled_and_tensor_hard_negatives_choose_the_same_priors(seed, monkeypatch):
    """Many ties (losses on a coarse grid), zeros of both signs, infinities, images without
    positives or without negatives: the compiled selection, the tensor one and a plain
    sorted cut agree prior for prior."""
    import multibox.core.losses as losses
    from multibox._kernels import loops

    g = torch.Generator().manual_seed(seed)
    conf = torch.randint(0, 40, (6, 3000), generator=g).float() / 8  # many exact ties
    conf[0, :50] = -0.0
    conf[0, 50:100] = 0.0
    conf[1, ::97] = math.inf
    conf[2] = 1.5  # all tied
    pos = torch.rand(6, 3000, generator=g) < 0.05
    pos[3] = False  # no positive: no negative
    pos[4] = True  # no negative
    pos[5, :2990] = True  # fewer negatives than wanted
    expected = _sorted_negatives(conf, pos, 3.0)
    default = hard_negative_mask(conf, pos, 3.0)  # the compiled selection where Numba is installed
    monkeypatch.setattr(losses, "hard_negatives", lambda *a: None)
    tensor = hard_negative_mask(conf, pos, 3.0)
    assert torch.equal(tensor, expected) and torch.equal(default, expected)
    if not loops.available():
        pytest.skip("compiled loops unavailable: only the tensor selection ran")
    num_neg = torch.minimum((pos.sum(1, keepdim=True) * 3.0).long(), 3000 - pos.sum(1, keepdim=True))
    assert torch.equal(loops.hard_negatives(conf, pos, num_neg), expected)  # it ran, and agrees
    everything = loops.hard_negatives(conf, pos, torch.full((6, 1), 10**6))  # more than there are
    assert torch.equal(everything, ~pos)
    conf[1, 7] = math.nan  # NaN: left to the tensor code
    assert loops.hard_negatives(conf, pos, num_neg) is None


def test_confidence_gradient_flows_only_through_positives_and_mined_negatives():
    """The cross-entropy is taken over the chosen priors only; its gradient must equal that of
    the dense per-prior loss masked to the same priors."""
    g = torch.Generator().manual_seed(2)
    priors = ssd300_priors()
    gt = torch.tensor([[[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]], [[0.2, 0.3, 0.7, 0.9], [0, 0, 0, 0]]])
    labels = torch.tensor([[3, 1], [2, 0]])
    loc = torch.randn(2, len(priors), 4, generator=g, requires_grad=True)
    logits = torch.randn(2, len(priors), 21, generator=g, requires_grad=True)
    fn = MultiBoxLoss(priors)
    out = fn(loc, logits, gt, labels)
    out.loss.backward()
    matches = match_priors(gt, labels, priors)
    pos = matches.labels > 0
    ce = F.cross_entropy(logits.detach().reshape(-1, 21), matches.labels.reshape(-1), reduction="none").view(2, -1)
    neg = hard_negative_mask(ce, pos, 3.0)
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(ref_logits.reshape(-1, 21), matches.labels.reshape(-1), reduction="none").view(2, -1)
    ((ref * (pos | neg)).sum() / pos.sum()).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-5, atol=1e-7)
    assert out.num_positives.item() == int(pos.sum())
    assert (loc.grad.abs().sum(-1) > 0).sum() == pos.sum()  # only positives regress
