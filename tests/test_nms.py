import math

import pytest
import torch

from multibox.core.boxes import box_iou, clip_boxes, decode_boxes
from multibox.core.nms import batched_nms, greedy_nms_mask
from multibox.core.postprocess import postprocess, vote_boxes
from multibox.core.priors import ssd300_priors


def reference_nms(boxes, scores, thr):
    """Textbook greedy NMS: indices kept, best first."""
    iou = box_iou(boxes, boxes).tolist()
    order = scores.argsort(descending=True).tolist()
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        order = [j for j in order if iou[i][j] <= thr]
    return keep


def reference_postprocess(loc, logits, priors, thr=0.01, nms=0.45, top=200, cand=400, sizes=None, vote=False):
    """Per image, per class loop in the style of public SSD code; with ``vote``, each kept box
    becomes the score-weighted mean of the class's candidates with IoU above ``nms`` with it."""
    out = []
    scores_all = torch.softmax(logits, -1)
    for i in range(loc.shape[0]):
        boxes = clip_boxes(decode_boxes(loc[i], priors))
        dets = []
        for c in range(1, logits.shape[-1]):
            s = scores_all[i, :, c]
            idx = (s > thr).nonzero().flatten()
            idx = idx[s[idx].argsort(descending=True)][:cand]
            kept = reference_nms(boxes[idx], s[idx], nms)
            if vote:
                iou = box_iou(boxes[idx], boxes[idx])
                for k in kept:
                    w = s[idx] * (iou[k] > nms)
                    dets.append((float(s[idx[k]]), c, (w[:, None] * boxes[idx]).sum(0) / w.sum()))
            else:
                dets += [(float(s[idx[k]]), c, boxes[idx[k]]) for k in kept]
        dets.sort(key=lambda d: -d[0])
        dets = dets[:top]
        b = torch.stack([d[2] for d in dets]) if dets else torch.zeros(0, 4)
        if sizes is not None:
            h, w = sizes[i].tolist()
            b = b * torch.tensor([w, h, w, h])
        out.append((b, torch.tensor([d[0] for d in dets]), torch.tensor([d[1] for d in dets], dtype=torch.long)))
    return out


def test_greedy_mask_chain_by_hand():
    # A suppresses B, B would suppress C but B is gone, so C survives: keep A, C
    iou = torch.tensor([[[1.0, 0.6, 0.1], [0.6, 1.0, 0.6], [0.1, 0.6, 1.0]]])
    keep = greedy_nms_mask(iou, torch.ones(1, 3, dtype=torch.bool), 0.5)
    assert keep.tolist() == [[True, False, True]]


def test_batched_nms_equals_reference_per_group():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(300, 2, generator=g)
    boxes = torch.cat((xy, xy + torch.rand(300, 2, generator=g) * 0.3), 1)
    scores = torch.rand(300, generator=g)
    groups = torch.randint(0, 4, (300,), generator=g)
    got = batched_nms(boxes, scores, groups, 0.5)
    expected = []
    for c in range(4):
        idx = (groups == c).nonzero().flatten()
        expected += idx[reference_nms(boxes[idx], scores[idx], 0.5)].tolist()
    assert sorted(got.tolist()) == sorted(expected)
    assert (scores[got][:-1] >= scores[got][1:]).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_postprocess_equals_per_class_reference(seed):
    g = torch.Generator().manual_seed(seed)
    priors = ssd300_priors()
    n, c = 3, 6
    loc = torch.randn(n, len(priors), 4, generator=g) * 0.5
    logits = torch.randn(n, len(priors), c, generator=g) * 2
    logits[..., 0] += 5.0  # mostly background, as a trained model: a few hundred candidates
    sizes = torch.tensor([[480.0, 640.0], [300.0, 300.0], [1371.0, 2048.0]])
    det = postprocess(loc, logits, priors, image_sizes=sizes)
    ref = reference_postprocess(loc, logits, priors, sizes=sizes)
    for i, d in enumerate(det.per_image()):
        rb, rs, rl = ref[i]
        assert len(d["scores"]) == len(rs) > 0
        assert torch.allclose(d["scores"], rs)
        assert torch.equal(d["labels"], rl)
        assert torch.allclose(d["boxes"], rb, atol=1e-3)


def test_vote_boxes_by_hand():
    # group 0: a kept box and two it suppressed (IoU 0.6 and 0.8), one far away (IoU 0) that
    # does not vote; group 1: a box at the same place votes only in its own group.
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [0.0, 0.0, 10.0, 6.0],
            [0.0, 0.0, 10.0, 8.0],
            [20.0, 20.0, 30.0, 30.0],
            [0.0, 0.0, 10.0, 10.0],
            [2.0, 2.0, 12.0, 12.0],
        ]
    )
    scores = torch.tensor([0.9, 0.6, 0.3, 0.8, 0.5, 0.4])
    group = torch.tensor([0, 0, 0, 0, 1, 1])
    voted = vote_boxes(boxes, scores, group, torch.tensor([0, 3, 4]), 0.5)
    y2 = (0.9 * 10 + 0.6 * 6 + 0.3 * 8) / (0.9 + 0.6 + 0.3)  # 8.333...; x and y1 agree already
    assert torch.allclose(voted[0], torch.tensor([0.0, 0.0, 10.0, y2]))
    assert torch.equal(voted[1], boxes[3])  # alone in its neighbourhood: unchanged
    # box 5 overlaps box 4 by 64 / 136 = 0.47 < 0.5: it does not vote
    assert torch.equal(voted[2], boxes[4])
    assert torch.allclose(
        vote_boxes(boxes, scores, group, torch.tensor([4]), 0.45)[0], (0.5 * boxes[4] + 0.4 * boxes[5]) / 0.9
    )
    # a kept box of no area overlaps nothing, not even itself, and keeps its coordinates
    flat = torch.tensor([[1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 2.0, 5.0]])
    assert torch.equal(
        vote_boxes(flat, torch.tensor([0.5, 0.4]), torch.zeros(2, dtype=torch.long), torch.tensor([0]), 0.45), flat[:1]
    )


@pytest.mark.parametrize("crowded", [False, True])
def test_postprocess_box_voting_equals_per_class_reference(crowded):
    g = torch.Generator().manual_seed(11)
    priors = ssd300_priors()
    loc = torch.randn(2, len(priors), 4, generator=g) * 0.5
    logits = torch.randn(2, len(priors), 4, generator=g) * (0.1 if crowded else 2.0)
    if not crowded:
        logits[..., 0] += 5.0
    sizes = torch.tensor([[480.0, 640.0], [300.0, 300.0]])
    cap = 60 if crowded else 400
    det = postprocess(loc, logits, priors, image_sizes=sizes, box_voting=True, candidates_per_class=cap)
    plain = postprocess(loc, logits, priors, image_sizes=sizes, candidates_per_class=cap)
    ref = reference_postprocess(loc, logits, priors, sizes=sizes, vote=True, cand=cap)
    for i, d in enumerate(det.per_image()):
        rb, rs, rl = ref[i]
        assert len(d["scores"]) == len(rs) > 0
        assert torch.equal(d["scores"], plain.scores[i, : len(rs)]) and torch.equal(d["labels"], rl)
        assert torch.allclose(d["boxes"], rb, atol=1e-3)
        assert not torch.allclose(d["boxes"], plain.boxes[i, : len(rs)], atol=1e-2)  # voting moved boxes


def test_postprocess_top_k_and_candidate_cap_match_reference():
    g = torch.Generator().manual_seed(7)
    priors = ssd300_priors()
    loc = torch.randn(2, len(priors), 4, generator=g) * 0.2
    logits = torch.randn(2, len(priors), 4, generator=g) * 0.1  # untrained: every prior above 0.01
    det = postprocess(loc, logits, priors, max_detections=50, candidates_per_class=60)
    ref = reference_postprocess(loc, logits, priors, top=50, cand=60)
    for i, d in enumerate(det.per_image()):
        assert len(d["scores"]) == 50
        assert torch.allclose(d["scores"], ref[i][1])
        assert torch.equal(d["labels"], ref[i][2])


def test_postprocess_sigmoid_and_empty():
    priors = ssd300_priors()
    loc = torch.zeros(2, len(priors), 4)
    logits = torch.full((2, len(priors), 3), -10.0)  # every score below threshold
    det = postprocess(loc, logits, priors, score_type="sigmoid")
    assert det.num.tolist() == [0, 0]
    logits[1, 100, 2] = 3.0
    det = postprocess(loc, logits, priors, score_type="sigmoid")
    assert det.num.tolist() == [0, 1]
    assert det.labels[1, 0].item() == 3
    assert det.scores[1, 0].item() == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())


def test_postprocess_rejects_bad_shapes():
    priors = ssd300_priors()
    with pytest.raises(ValueError, match="loc"):
        postprocess(torch.zeros(2, 4), torch.zeros(2, 3), priors)
    with pytest.raises(ValueError, match="priors"):
        postprocess(torch.zeros(1, 10, 4), torch.zeros(1, 10, 3), priors)
    with pytest.raises(ValueError, match="score_type"):
        postprocess(torch.zeros(1, len(priors), 4), torch.zeros(1, len(priors), 3), priors, score_type="relu")


@pytest.fixture(params=["compiled", "tensor"])
def row_test(request, monkeypatch):
    """Run a test with the compiled candidate-row pass (skipped without Numba) and with the
    tensor tests that replace it elsewhere."""
    import multibox.core.postprocess as postprocess_module
    from multibox._kernels import loops

    if request.param == "compiled" and not loops.available():
        pytest.skip("compiled loops unavailable (no Numba, or MULTIBOX_NO_NUMBA=1)")
    if request.param == "tensor":
        monkeypatch.setattr(postprocess_module, "candidate_rows", lambda *a: None)
    return request.param


@pytest.mark.parametrize("score_type", ["softmax", "sigmoid"])
@pytest.mark.parametrize("threshold", [0.0, 0.01, 0.3, 0.9])
def test_candidate_rows_keep_every_score_above_the_threshold(score_type, threshold, row_test):
    from multibox.core.postprocess import _candidate_rows

    g = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 500, 5, generator=g) * 3
    logits[..., 0] += 4.0 * torch.rand(3, 500, generator=g)  # background strong on some priors only
    full = torch.softmax(logits, -1)[..., 1:] if score_type == "softmax" else torch.sigmoid(logits)
    full = full.reshape(1500, -1)
    rows, scores = _candidate_rows(logits, score_type, threshold)
    passing = (full > threshold).any(1).nonzero().squeeze(1)
    assert set(passing.tolist()) <= set(rows.tolist())  # no passing prior is dropped
    assert torch.equal(scores, full[rows])  # and the kept rows carry the exact scores
    if threshold >= 0.3:
        assert len(rows) < 1500  # the cheap test did rule rows out


@pytest.mark.parametrize("threshold", [1e-6, 0.01, 0.5])
def test_candidate_rows_survive_extreme_logits(threshold, row_test):
    """exp() overflows above ~88 and underflows below ~-103: such rows must still be kept
    whenever one of their scores passes."""
    from multibox.core.postprocess import _candidate_rows

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 600, 4, generator=g)
    logits[0, 0] = torch.tensor([200.0, 201.0, 0.0, 0.0])  # both overflow; class 1 scores 0.73
    logits[0, 1] = torch.tensor([-300.0, -299.0, -400.0, -400.0])  # all underflow; class 1 scores 0.73
    logits[0, 2] = torch.tensor([-80.0, -82.0, -200.0, -200.0])  # class 1 scores 0.12
    logits[0, 3] = torch.tensor([95.0, 80.0, -5.0, -5.0])  # background overflows alone: class 1 scores 3e-7
    logits[0, 4] = torch.tensor([89.0, 88.5, 0.0, 0.0])  # background overflows, class 1 does not: scores 0.38
    logits[0, 5] = torch.tensor([-95.0, -99.5, -200.0, -200.0])  # denormal exps: class 1 scores 0.011
    logits[0, 300] = torch.tensor([-math.inf, 0.0, 0.0, 0.0])  # no background at all: 1/3 each
    logits[0, 301] = torch.tensor([3e38, 3e38, -3e38, -3e38])  # huge differences overflow to -inf: 0.5
    logits[0, 302] = torch.tensor([0.0, float("nan"), 0.0, 0.0])  # NaN: no score passes
    logits[0, 6:300, 0] += 12.0  # confident background
    full = torch.softmax(logits.double(), -1)[..., 1:].reshape(600, -1)
    rows, scores = _candidate_rows(logits, "softmax", threshold)
    passing = (full > threshold).any(1).nonzero().squeeze(1)
    assert set(passing.tolist()) <= set(rows.tolist())
    assert {0, 1, 4, 300}.issubset(set(rows.tolist()))
    torch.testing.assert_close(scores.double(), full[rows], rtol=1e-5, atol=1e-7, equal_nan=True)
    if threshold >= 0.01:
        assert not set(range(6, 300)) & set(rows.tolist())  # the cheap test rules these out


def test_compiled_sparse_and_padded_nms_agree(monkeypatch):
    """Post-processing runs NMS as a compiled loop on CPUs with Numba; otherwise it lists
    same-group pairs when there are few and pads crowded groups into blocks. All three must
    give the same detections."""
    import multibox.core.nms as nms

    g = torch.Generator().manual_seed(4)
    priors = ssd300_priors()
    loc = torch.randn(2, len(priors), 4, generator=g) * 0.3
    logits = torch.randn(2, len(priors), 5, generator=g) * 2
    logits[..., 0] += 4.0
    default = postprocess(loc, logits, priors)
    monkeypatch.setattr(nms, "greedy_nms_groups", lambda *a: None)
    sparse = postprocess(loc, logits, priors)
    monkeypatch.setattr(nms, "_SPARSE_NMS_PAIRS", 0)
    padded = postprocess(loc, logits, priors)
    assert sparse.num.sum() > 50
    for a, b, c in zip(sparse, padded, default):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_sort_by_key_then_score_is_one_stable_lexicographic_sort():
    from multibox.core.postprocess import _sort_by_key_then_score

    key = torch.tensor([2, 0, 2, 1, 0, 0, 2])
    scores = torch.tensor([0.5, 0.25, 0.5, 1.0, 0.0, 0.75, 3e-20])
    order = _sort_by_key_then_score(key, scores)
    assert order.tolist() == [5, 1, 4, 3, 0, 2, 6]  # key up; score down; equal scores keep input order


def test_pair_nms_area_filter_keeps_pairs_at_the_area_ratio_bound():
    """The pair path lists only boxes whose areas are within 1/t of each other (IoU cannot
    exceed the area ratio). Nested boxes have IoU = area ratio exactly, so boxes just above,
    at and just below t (and zero-area boxes) must come out as the textbook loop says."""
    from multibox.core.nms import _nms_pairs

    t = 0.45
    g = torch.Generator().manual_seed(7)
    boxes, group = [], []
    for gi in range(40):
        # an outer box and inner boxes whose area ratio to it straddles t
        cx, cy = torch.rand(2, generator=g) * 0.5 + 0.25
        outer = torch.tensor([cx - 0.2, cy - 0.2, cx + 0.2, cy + 0.2])
        ratios = t + torch.tensor([-1e-3, -1e-6, 0.0, 1e-6, 1e-3]) + torch.randn(5, generator=g) * 1e-6
        members = [outer]
        for r in ratios[torch.randperm(5, generator=g)]:
            half = 0.2 * float(r) ** 0.5
            members.append(torch.tensor([cx - half, cy - half, cx + half, cy + half]))
        members.append(torch.tensor([cx, cy, cx, cy + 0.1]))  # zero area
        order = torch.randperm(len(members), generator=g)  # score order within the group
        boxes += [members[i] for i in order.tolist()]
        group += [gi] * len(members)
    boxes, group = torch.stack(boxes).float(), torch.tensor(group)
    keep = _nms_pairs(boxes, group, t)
    expected = torch.zeros(len(boxes), dtype=torch.bool)
    for gi in range(40):
        idx = (group == gi).nonzero().squeeze(1)
        kept = reference_nms(boxes[idx], -torch.arange(len(idx), dtype=torch.float32), t)
        expected[idx[kept]] = True
    assert 0 < int((~expected).sum()) < len(boxes)  # some suppressed, not all
    assert torch.equal(keep, expected)


def _awkward_groups(seed: int, num_groups: int = 60):
    """Score-sorted groups of boxes that make overlap tests hard: nested boxes whose area ratio
    straddles t, exact duplicates, zero-area boxes, NaN and infinite coordinates."""
    g = torch.Generator().manual_seed(seed)
    boxes, group = [], []
    for gi in range(num_groups):
        n = int(torch.randint(1, 30, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 0.6
        wh = torch.rand(n, 2, generator=g) * 0.4
        b = torch.cat([xy, xy + wh], 1)
        if n > 3:
            b[1] = b[0]  # a duplicate
            b[2, 2] = b[2, 0]  # zero width
            half = 0.5 * (0.47**0.5)  # nested: IoU = area ratio 0.47, just above t
            c, s = (b[0, :2] + b[0, 2:]) / 2, (b[0, 2:] - b[0, :2])
            b[3] = torch.cat([c - half * s, c + half * s])
        if gi % 7 == 3:
            b[0, 1] = float("nan")
        if gi % 11 == 5:
            b[-1, 2] = float("inf")
        boxes.append(b)
        group += [gi * 3] * n  # ids need not be contiguous
    return torch.cat(boxes).float(), torch.tensor(group)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_loop_pairs_and_padded_nms_keep_the_same_boxes(seed, monkeypatch):
    """The three NMS formulations of post-processing (compiled loop, listed pairs, padded
    blocks) keep exactly the same boxes, NaN and infinite ones included; on finite groups
    they agree with the textbook loop."""
    import multibox.core.nms as nms
    from multibox._kernels import loops

    t = 0.45
    boxes, group = _awkward_groups(seed)
    counts = torch.bincount(group)
    monkeypatch.setattr(nms, "greedy_nms_groups", lambda *a: None)
    pairs = nms.nms_sorted_groups(boxes, group, counts, int(counts.max()), t)
    monkeypatch.setattr(nms, "_SPARSE_NMS_PAIRS", -1)
    padded = nms.nms_sorted_groups(boxes, group, counts, int(counts.max()), t)
    assert torch.equal(pairs, padded)
    assert 0 < int((~pairs).sum()) < len(boxes)  # some suppressed, not all
    checked = 0
    for gi in group.unique().tolist():
        idx = (group == gi).nonzero().squeeze(1)
        if not torch.isfinite(boxes[idx]).all():
            continue
        kept = reference_nms(boxes[idx], -torch.arange(len(idx), dtype=torch.float32), t)
        assert pairs[idx].nonzero().squeeze(1).tolist() == sorted(kept)
        checked += 1
    assert checked > 40
    if not loops.available():
        pytest.skip("compiled loops unavailable: only the tensor formulations ran")
    loop = loops.greedy_nms_groups(boxes, group, t)
    assert loop.dtype == torch.bool and torch.equal(loop, pairs)
