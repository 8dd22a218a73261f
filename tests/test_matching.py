import pytest
import torch

from multibox.core.boxes import xyxy_to_cxcywh
from multibox.core.matching import match_priors
from multibox.core.priors import ssd300_priors


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
    from multibox.core.boxes import box_iou

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
    from multibox.core.boxes import cxcywh_to_xyxy

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
    from multibox.core.boxes import box_iou, cxcywh_to_xyxy

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
    from multibox.core.boxes import box_iou

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
    from multibox.core.boxes import cxcywh_to_xyxy
    from multibox.core.priors import grid_feature_maps, make_priors

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
    want = torch.where(
        (expected >= 0).unsqueeze(-1), torch.gather(gt, 1, expected.clamp(min=0).unsqueeze(-1).expand(-1, -1, 4)), 0.0
    )
    assert torch.equal(got.boxes, want)


def test_repeated_matching_with_the_same_priors_reuses_nothing_stale():
    """The prior index is cached per priors tensor; editing the tensor in place invalidates it."""
    priors = PRIORS.clone()
    gt = torch.tensor([[[0.5, 0.5, 1.0, 1.0]]])
    assert match_priors(gt, torch.tensor([[1]]), priors).labels.tolist() == [[0, 0, 0, 1, 0]]
    priors[3] = priors[0]  # prior 3 now sits where prior 0 was
    priors[0] = xyxy_to_cxcywh(torch.tensor([0.5, 0.5, 1.0, 1.0]))
    assert match_priors(gt, torch.tensor([[1]]), priors).labels.tolist() == [[1, 0, 0, 0, 0]]


# --- ATSS ---------------------------------------------------------------------------------


def _two_maps():
    """A 4x4 grid of 0.25 squares (priors 0-15) and a 2x2 grid of 0.5 squares (16-19)."""
    from multibox.core.priors import FeatureMapPriors, make_priors

    maps = [FeatureMapPriors((4, 4), ((0.25, 0.25),)), FeatureMapPriors((2, 2), ((0.5, 0.5),))]
    return maps, make_priors(maps).float()


def test_atss_by_hand():
    """Box (0.3, 0.3, 0.7, 0.6), centre (0.5, 0.45), top_k = 3. Nearest priors: on the 4x4 map
    5 and 6 (0.125 by 0.075 away), then 9 (ties with 10, lower index first); on the 2x2 map 16,
    17, then 18. Overlaps: 5 and 6: 0.04 / 0.1425; 9: 0.02 / 0.1625; 16 and 17: 0.04 / 0.33;
    18: 0.02 / 0.35. Threshold = mean + std of those six; 5 and 6 reach it (centres inside)."""
    from multibox.core.matching import match_atss

    maps, priors = _two_maps()
    gt = torch.tensor([[[0.3, 0.3, 0.7, 0.6]]])
    ious = torch.tensor([0.04 / 0.1425, 0.04 / 0.1425, 0.02 / 0.1625, 0.04 / 0.33, 0.04 / 0.33, 0.02 / 0.35])
    threshold = ious.mean() + ious.std()
    assert 0.125 < threshold < 0.04 / 0.1425  # only the two best pass
    m = match_atss(gt, torch.tensor([[2]]), priors, [16, 4], top_k=3)
    assert (m.labels[0] > 0).nonzero().flatten().tolist() == [5, 6]
    assert m.labels[0, 5] == 2 and m.object_index[0, 6] == 0
    # SSD's rule finds no overlap >= 0.5 and forces only the best prior (5, the lower of a tie)
    assert (match_priors(gt, torch.tensor([[2]]), priors).labels[0] > 0).nonzero().flatten().tolist() == [5]


def _reference_atss(gt, labels, priors, level_sizes, top_k):
    """ATSS one object at a time, in numpy float64."""
    import numpy as np

    from multibox.core.boxes import box_iou_numpy

    pr = priors.double().numpy()
    pr_xyxy = np.concatenate([pr[:, :2] - pr[:, 2:] / 2, pr[:, :2] + pr[:, 2:] / 2], axis=1)
    n, m = labels.shape
    out_idx = np.full((n, len(pr)), -1)
    outside_hits = 0
    for i in range(n):
        best = np.full(len(pr), -1.0)
        for j in range(m):
            if labels[i, j] <= 0:
                continue
            box = gt[i, j].double().numpy()
            centre = (box[:2] + box[2:]) / 2
            cand, start = [], 0
            for size in level_sizes:
                d = np.sqrt(((pr[start : start + size, :2] - centre) ** 2).sum(1))
                cand += list(np.argsort(d, kind="stable")[:top_k] + start)
                start += size
            cand = np.array(cand)
            iou = box_iou_numpy(box[None], pr_xyxy[cand])[0]
            thr = iou.mean() + iou.std(ddof=1)
            for c, v in zip(cand, iou):
                cx, cy = pr[c, :2]
                inside = box[0] < cx < box[2] and box[1] < cy < box[3]
                if v >= thr and v > 0 and not inside:
                    outside_hits += 1
                if v >= thr and v > 0 and inside and v > best[c]:  # strictly: the lowest slot keeps ties
                    best[c], out_idx[i, c] = v, j
    return out_idx, outside_hits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_atss_equals_a_per_object_loop(seed):
    from multibox.core.matching import match_atss
    from multibox.core.priors import make_priors, ssd_feature_maps

    maps = ssd_feature_maps([10, 5, 3, 1], [0.1, 0.25, 0.45, 0.7, 0.9], [(2,), (2, 3), (2,), ()])
    priors = make_priors(maps).double()
    g = torch.Generator().manual_seed(seed)
    n, m = 4, 12
    centre = torch.rand(n, m, 2, generator=g, dtype=torch.float64)
    size = torch.rand(n, m, 2, generator=g, dtype=torch.float64) * 0.5 + 0.02
    gt = torch.cat([centre - size / 2, centre + size / 2], -1).clamp(0, 1)
    labels = torch.randint(1, 4, (n, m), generator=g)
    labels[1, 7:] = 0  # padding
    labels[3] = 0  # an image without objects
    sizes = [fm.num_priors for fm in maps]
    got = match_atss(gt, labels, priors, sizes, top_k=5)
    want, outside = _reference_atss(gt, labels, priors, sizes, 5)
    assert torch.equal(got.object_index, torch.from_numpy(want))
    assert torch.equal(
        got.labels, torch.where(got.object_index >= 0, labels.gather(1, got.object_index.clamp(min=0)), 0)
    )
    assert (got.labels[3] == 0).all() and (got.object_index[1] < 7).all()
    assert outside > 0  # the centre-inside rule had something to reject


def test_atss_gives_small_objects_several_priors():
    """A platelet-sized box, too small for any prior to reach IoU 0.5: SSD's rule gives it its
    single best prior, ATSS those nearest its centre that overlap it best."""
    from multibox.core.matching import match_atss
    from multibox.core.priors import make_priors, ssd_feature_maps

    maps = ssd_feature_maps([20, 10, 5], [0.1, 0.3, 0.6, 0.9], [(2,), (2,), (2,)])
    priors = make_priors(maps)
    gt = torch.tensor([[[0.41, 0.42, 0.47, 0.49]]])
    ssd = match_priors(gt, torch.tensor([[1]]), priors)
    atss = match_atss(gt, torch.tensor([[1]]), priors, [fm.num_priors for fm in maps])
    assert int((ssd.labels > 0).sum()) == 1
    assert int((atss.labels > 0).sum()) >= 3
    assert bool(atss.labels[ssd.labels > 0].all())  # the best prior is among them


def test_atss_bad_arguments():
    from multibox.core.matching import make_matcher, match_atss

    maps, priors = _two_maps()
    gt, labels = torch.tensor([[[0.1, 0.1, 0.3, 0.3]]]), torch.tensor([[1]])
    with pytest.raises(ValueError, match="add up to 19, not the 20 priors"):
        match_atss(gt, labels, priors, [16, 3])
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        match_atss(gt, labels, priors, [16, 4], top_k=0)
    with pytest.raises(ValueError, match="x2 < x1"):
        match_atss(torch.tensor([[[0.5, 0.1, 0.3, 0.3]]]), labels, priors, [16, 4])
    with pytest.raises(ValueError, match="matcher must be 'iou' or 'atss', got 'hungarian'"):
        make_matcher("hungarian", maps)
    assert make_matcher("iou", maps) is None
    m = make_matcher("atss", maps, top_k=3)(torch.tensor([[[0.3, 0.3, 0.7, 0.6]]]), torch.tensor([[2]]), priors)
    assert (m.labels[0] > 0).nonzero().flatten().tolist() == [5, 6]


def test_atss_object_with_no_prior_centre_inside_gets_no_positive():
    """Unlike SSD's rule, ATSS forces no best prior: a box between the 4x4 centres stays unmatched."""
    from multibox.core.matching import match_atss

    maps, priors = _two_maps()
    gt = torch.tensor([[[0.26, 0.26, 0.3, 0.3], [0.3, 0.3, 0.7, 0.6]]])
    m = match_atss(gt, torch.tensor([[1, 2]]), priors, [16, 4], top_k=3)
    assert (m.labels[0] > 0).nonzero().flatten().tolist() == [5, 6]  # only the second object's
    assert set(m.object_index[0].tolist()) == {-1, 1}
