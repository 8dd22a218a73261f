import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multibox.core.boxes import (
    box_area,
    box_iou,
    check_boxes,
    clip_boxes,
    cxcywh_to_xyxy,
    decode_boxes,
    encode_boxes,
    xyxy_to_cxcywh,
)


def test_conversions_by_hand():
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    assert xyxy_to_cxcywh(xyxy).tolist() == [[3.0, 6.0, 4.0, 8.0]]
    assert cxcywh_to_xyxy(torch.tensor([[3.0, 6.0, 4.0, 8.0]])).tolist() == [[1.0, 2.0, 5.0, 10.0]]
    assert box_area(xyxy).tolist() == [32.0]
    assert box_area(torch.tensor([[2.0, 2.0, 1.0, 5.0]])).tolist() == [0.0]  # degenerate -> 0


def test_iou_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [2.0, 0.0, 4.0, 2.0], [0.0, 0.0, 1.0, 2.0]])
    iou = box_iou(a, b)
    assert iou.shape == (1, 4)
    # overlap 1 / union 7; identical; touching edge; half contained
    assert iou[0].tolist() == pytest.approx([1 / 7, 1.0, 0.0, 0.5])


def test_iou_batched_broadcasts():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 5, 2, generator=g)
    a = torch.cat((a, a + torch.rand(3, 5, 2, generator=g)), -1)
    b = torch.rand(7, 2, generator=g)
    b = torch.cat((b, b + 0.5), -1)
    iou = box_iou(a, b)
    assert iou.shape == (3, 5, 7)
    for n in range(3):
        assert torch.allclose(iou[n], box_iou(a[n], b))


def test_iou_of_two_empty_boxes_is_zero():
    z = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
    assert box_iou(z, z).item() == 0.0


def test_encode_by_hand():
    prior = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    gt = torch.tensor([[0.45, 0.4, 0.65, 0.8]])  # cx .55 cy .6 w .2 h .4
    t = encode_boxes(gt, prior)
    assert t[0].tolist() == pytest.approx([2.5, 5.0, 0.0, math.log(2) / 0.2], abs=1e-5)


box_strategy = st.lists(
    st.tuples(st.floats(0.0, 0.9), st.floats(0.0, 0.9), st.floats(0.01, 1.0), st.floats(0.01, 1.0)),
    min_size=1,
    max_size=20,
)


# sizes within 20x of each other: decode clamps log-scales above log(1000/16) on purpose
sized_strategy = st.lists(
    st.tuples(st.floats(0.0, 0.9), st.floats(0.0, 0.9), st.floats(0.05, 1.0), st.floats(0.05, 1.0)),
    min_size=1,
    max_size=20,
)


@settings(max_examples=60, deadline=None)
@given(sized_strategy, sized_strategy)
def test_encode_decode_round_trip(gts, priors):
    n = min(len(gts), len(priors))
    g = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in gts[:n]], dtype=torch.float64)
    p = torch.tensor([[x + w / 2, y + h / 2, w, h] for x, y, w, h in priors[:n]], dtype=torch.float64)
    assert torch.allclose(decode_boxes(encode_boxes(g, p), p), g, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(box_strategy, box_strategy)
def test_iou_properties(a_list, b_list):
    a = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in a_list], dtype=torch.float64)
    b = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in b_list], dtype=torch.float64)
    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b))
    assert ((iou >= 0) & (iou <= 1 + 1e-12)).all()
    assert torch.allclose(iou, box_iou(b, a).T)  # symmetric
    assert torch.allclose(box_iou(a, a).diagonal(), torch.ones(len(a), dtype=torch.float64))
    # intersection can never exceed the smaller area
    inter_bound = torch.minimum(box_area(a)[:, None], box_area(b)[None]) / torch.maximum(
        box_area(a)[:, None], box_area(b)[None]
    )
    assert (iou <= inter_bound + 1e-12).all()


@settings(max_examples=40, deadline=None)
@given(box_strategy)
def test_conversion_round_trip(lst):
    b = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in lst], dtype=torch.float64)
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(b)), b, atol=1e-12)


def test_decode_is_finite_for_huge_offsets():
    prior = torch.tensor([[0.5, 0.5, 0.1, 0.1]])
    out = decode_boxes(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), prior)
    assert torch.isfinite(out).all()


def test_clip_boxes_per_image_sizes():
    b = torch.tensor([[[-5.0, -1.0, 700.0, 300.0]], [[10.0, 10.0, 20.0, 900.0]]])
    w = torch.tensor([[640.0], [100.0]])
    h = torch.tensor([[480.0], [200.0]])
    out = clip_boxes(b, w, h)
    assert out.tolist() == [[[0.0, 0.0, 640.0, 300.0]], [[10.0, 10.0, 20.0, 200.0]]]


@pytest.mark.parametrize("width, height", [(1.0, 1.0), (1, 1), (300.0, 300.0), (640.0, 480.0)])
def test_clip_boxes_with_scalar_sizes(width, height):
    b = torch.tensor([[-0.5, 0.25, 1.5, 700.0], [0.125, -3.0, 0.875, 0.5]])
    out = clip_boxes(b, width, height)
    by_hand = [[0.0, 0.25, min(1.5, width), min(700.0, height)], [0.125, 0.0, min(0.875, width), min(0.5, height)]]
    assert out.tolist() == by_hand


@pytest.mark.parametrize(
    "boxes, message",
    [
        (torch.tensor([[0.0, 0.0, 1.0]]), "shape"),
        (torch.tensor([[0.5, 0.0, 0.2, 1.0]]), "x2 < x1"),
        (torch.tensor([[0.0, float("nan"), 0.2, 1.0]]), "non-finite"),
        (torch.tensor([[0, 0, 1, 1]]), "floating point"),
    ],
)
def test_check_boxes_errors(boxes, message):
    with pytest.raises(ValueError, match=message):
        check_boxes(boxes)


def test_box_iou_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        box_iou(torch.zeros(3, 5), torch.zeros(2, 4))


def test_numpy_iou_equals_torch_iou():
    from multibox.core.boxes import box_iou_numpy

    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 2.0]], dtype=torch.float64)
    got = box_iou_numpy(a.numpy(), b.numpy())
    assert torch.allclose(torch.from_numpy(got), box_iou(a, b))
    assert got[0].tolist() == pytest.approx([1 / 7, 0.0, 0.5]) and got[1, 1] == 0.0
