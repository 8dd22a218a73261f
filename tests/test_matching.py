import pytest
import torch

from multibox.boxes import xyxy_to_cxcywh
from multibox.matching import match_priors
from multibox.priors import ssd300_priors


def _priors(xyxy):
    return xyxy_to_cxcywh(torch.tensor(xyxy, dtype=torch.float32))


PRIORS = _priors(
    [
        [0.0, 0.0, 0.5, 0.5],  # 0
        [0.5, 0.0, 1.0, 0.5],  # 1
        [0.0, 0.5, 0.5, 1.0],  # 2
        [0.5, 0.5, 1.0, 1.0],  # 3
        [0.0, 0.0, 0.4, 0.5],  # 4: IoU 0.8 with prior 0
    ]
)


def test_threshold_and_best_prior():
    gt = torch.tensor([[[0.0, 0.0, 0.5, 0.5]]])
    m = match_priors(gt, torch.tensor([[2]]), PRIORS)
    # prior 0 is identical (IoU 1), prior 4 has IoU 0.8 >= 0.5, the rest 0
    assert m.labels.tolist() == [[2, 0, 0, 0, 2]]
    assert m.object_index.tolist() == [[0, -1, -1, -1, 0]]
    assert m.boxes[0, 4].tolist() == [0.0, 0.0, 0.5, 0.5]


def test_object_below_threshold_keeps_its_best_prior():
    # a small box inside prior 3: IoU = 0.04/0.25 = 0.16 < 0.5, still matched to prior 3 only
    gt = torch.tensor([[[0.6, 0.6, 0.8, 0.8]]])
    m = match_priors(gt, torch.tensor([[1]]), PRIORS)
    assert m.labels.tolist() == [[0, 0, 0, 1, 0]]


def test_two_objects_sharing_a_best_prior_later_wins_and_priors_take_best_object():
    gt = torch.tensor([[[0.6, 0.6, 0.8, 0.8], [0.55, 0.55, 0.85, 0.85], [0.0, 0.0, 0.45, 0.5]]])
    labels = torch.tensor([[1, 2, 3]])
    m = match_priors(gt, labels, PRIORS)
    # objects 0 and 1 both have prior 3 as best: object 1 (later) wins
    # object 2: IoU with prior 0 = 0.225/0.25 = 0.9, with prior 4 = 0.2/0.225 = 0.889
    assert m.labels.tolist() == [[3, 0, 0, 2, 3]]
    assert m.object_index.tolist() == [[2, -1, -1, 1, 2]]


def test_padding_and_empty_images_in_one_batch():
    gt = torch.zeros(3, 2, 4)
    labels = torch.zeros(3, 2, dtype=torch.long)
    gt[0, 0] = torch.tensor([0.5, 0.5, 1.0, 1.0])
    labels[0, 0] = 4
    gt[2, 1] = torch.tensor([0.5, 0.0, 1.0, 0.5])
    labels[2, 1] = 7
    m = match_priors(gt, labels, PRIORS)
    assert m.labels.tolist() == [[0, 0, 0, 4, 0], [0, 0, 0, 0, 0], [0, 7, 0, 0, 0]]


def test_batch_with_no_objects_at_all():
    m = match_priors(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), PRIORS)
    assert m.labels.shape == (2, 5) and m.labels.sum() == 0
    assert (m.object_index == -1).all()


def _reference_match(gt, labels, priors_xyxy, thr):
    """Straightforward per-image version of the SSD matching loop."""
    from multibox.boxes import box_iou

    out = []
    for g, l in zip(gt, labels):
        keep = l > 0
        g, l = g[keep], l[keep]
        res = torch.zeros(len(priors_xyxy), dtype=torch.long)
        if len(g) == 0:
            out.append(res)
            continue
        iou = box_iou(g, priors_xyxy)
        best_iou, best_obj = iou.max(0)
        for j in range(len(g)):
            p = int(iou[j].argmax())
            best_obj[p] = j
            best_iou[p] = 2.0
        res = l[best_obj].clone()
        res[best_iou < thr] = 0
        out.append(res)
    return torch.stack(out)


def test_matches_reference_loop_on_ssd300_priors():
    g = torch.Generator().manual_seed(0)
    priors = ssd300_priors()
    from multibox.boxes import cxcywh_to_xyxy

    n, m = 4, 6
    xy = torch.rand(n, m, 2, generator=g) * 0.7
    wh = torch.rand(n, m, 2, generator=g) * 0.3 + 0.02
    gt = torch.cat((xy, xy + wh), -1)
    labels = torch.randint(1, 5, (n, m), generator=g)
    labels[1, 3:] = 0
    labels[2] = 0
    got = match_priors(gt, labels, priors).labels
    assert torch.equal(got, _reference_match(gt, labels, cxcywh_to_xyxy(priors), 0.5))


def test_bad_targets_raise_clear_errors():
    with pytest.raises(ValueError, match=r"x2 < x1"):
        match_priors(torch.tensor([[[0.5, 0.5, 0.1, 0.9]]]), torch.tensor([[1]]), PRIORS)
    with pytest.raises(ValueError, match="non-finite"):
        match_priors(torch.tensor([[[0.1, float("nan"), 0.2, 0.9]]]), torch.tensor([[1]]), PRIORS)
    with pytest.raises(ValueError, match=r"\(N, M, 4\)"):
        match_priors(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), PRIORS)
    with pytest.raises(ValueError, match="gt_labels"):
        match_priors(torch.zeros(1, 2, 4), torch.zeros(1, 3, dtype=torch.long), PRIORS)


def test_object_index_matches_reference_loop_with_crowded_overlapping_objects():
    from multibox.boxes import box_iou, cxcywh_to_xyxy

    g = torch.Generator().manual_seed(5)
    priors = ssd300_priors()
    pxy = cxcywh_to_xyxy(priors)
    n, m = 3, 12
    xy = 0.3 + torch.rand(n, m, 2, generator=g) * 0.2  # objects piled on each other
    wh = 0.05 + torch.rand(n, m, 2, generator=g) * 0.3
    gt = torch.cat((xy, (xy + wh).clamp(max=1)), -1)
    labels = torch.randint(1, 3, (n, m), generator=g)
    labels[0, 8:] = 0
    got = match_priors(gt, labels, priors)
    for i in range(n):
        k = int((labels[i] > 0).sum())
        iou = box_iou(gt[i, :k], pxy)
        best_iou, best_obj = iou.max(0)
        for j in range(k):
            best_obj[int(iou[j].argmax())] = j
            best_iou[int(iou[j].argmax())] = 2.0
        expected = torch.where(best_iou >= 0.5, best_obj, torch.full_like(best_obj, -1))
        assert torch.equal(got.object_index[i], expected)
        assert (got.object_index[i] >= 0).sum() > k  # many priors above the threshold, not only forced ones


def _reference_object_index(gt, labels, priors_xyxy, thr):
    """Per-image loop: every prior takes its best object at >= thr, then every object forces its
    best prior (the later object wins a shared one); -1 for background."""
    from multibox.boxes import box_iou

    out = []
    for g, l in zip(gt, labels):
        k = int((l > 0).sum())
        res = torch.full((len(priors_xyxy),), -1, dtype=torch.long)
        if k:
            iou = box_iou(g[:k], priors_xyxy)
            best_iou, best_obj = iou.max(0)
            for j in range(k):
                best_obj[int(iou[j].argmax())] = j
                best_iou[int(iou[j].argmax())] = 2.0
            res = torch.where(best_iou >= thr, best_obj, res)
        out.append(res)
    return torch.stack(out)


@pytest.mark.parametrize("thr", [0.5, 0.7])
@pytest.mark.parametrize("prior_set", ["ssd300", "ssd300_clipped", "grid"])
def test_candidate_pairs_lose_nothing_on_many_shapes(thr, prior_set):
    """The sparse candidate search (centre inside the box, area ratio >= thr) gives exactly the
    dense rules, for boxes of every size and aspect (tiny, elongated, whole image), boxes that
    are copies of priors (IoU 1) and boxes at exactly IoU 0.5 and area ratio 0.5 with a prior."""
    from multibox.boxes import cxcywh_to_xyxy
    from multibox.priors import grid_feature_maps, make_priors

    if prior_set == "grid":
        priors = make_priors(grid_feature_maps((8, 4, 2, 1)), clip=True)
    else:
        priors = ssd300_priors(clip=prior_set.endswith("clipped"))
    pxy = cxcywh_to_xyxy(priors)
    g = torch.Generator().manual_seed(3)
    n, m = 6, 16
    xy = torch.rand(n, m, 2, generator=g) * 0.9
    wh = torch.rand(n, m, 2, generator=g) ** 3 * 0.9 + 0.002  # mostly small, some huge; odd aspects
    gt = torch.cat((xy, (xy + wh).clamp(max=1)), -1)
    gt[0, :4] = pxy[torch.randint(0, len(priors), (4,), generator=g)].clamp(0, 1)  # prior copies
    half = pxy[len(priors) // 2].clamp(0, 1)
    gt[1, 0] = torch.stack((half[0], half[1], half[2], (half[1] + half[3]) / 2))  # IoU 0.5, area ratio 0.5
    gt[2, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    labels = torch.randint(1, 4, (n, m), generator=g)
    labels[3, 5:] = 0
    labels[4] = 0
    got = match_priors(gt, labels, priors, thr)
    expected = _reference_object_index(gt, labels, pxy, thr)
    assert torch.equal(got.object_index, expected)
    assert torch.equal(got.labels, torch.where(expected >= 0, torch.gather(labels, 1, expected.clamp(min=0)), 0))
    # boxes: the matched object's box, zeros for background
    want = torch.where((expected >= 0).unsqueeze(-1), torch.gather(gt, 1, expected.clamp(min=0).unsqueeze(-1).expand(-1, -1, 4)), 0.0)
    assert torch.equal(got.boxes, want)


def test_repeated_matching_with_the_same_priors_reuses_nothing_stale():
    """The prior index is cached per priors tensor; editing the tensor in place invalidates it."""
    priors = PRIORS.clone()
    gt = torch.tensor([[[0.5, 0.5, 1.0, 1.0]]])
    assert match_priors(gt, torch.tensor([[1]]), priors).labels.tolist() == [[0, 0, 0, 1, 0]]
    priors[3] = priors[0]  # prior 3 now sits where prior 0 was
    priors[0] = xyxy_to_cxcywh(torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert match_priors(gt, torch.tensor([[1]]), priors).labels.tolist() == [[1, 0, 0, 0, 0]]
