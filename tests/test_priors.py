import math

import pytest
import torch

from multibox.core.priors import (
    grid_feature_maps,
    linear_scales,
    make_priors,
    ssd300_priors,
    ssd512_priors,
    ssd_feature_maps,
)


def test_ssd300_count_and_hand_coordinates():
    p = ssd300_priors()
    assert p.shape == (8732, 4)
    c = 0.5 / 38
    # first cell of conv4_3: square s=0.1, extra sqrt(0.1*0.2), then ratio 2 and 1/2
    assert p[0].tolist() == pytest.approx([c, c, 0.1, 0.1])
    assert p[1].tolist() == pytest.approx([c, c, math.sqrt(0.02), math.sqrt(0.02)])
    assert p[2].tolist() == pytest.approx([c, c, 0.1 * math.sqrt(2), 0.1 / math.sqrt(2)])
    assert p[3].tolist() == pytest.approx([c, c, 0.1 / math.sqrt(2), 0.1 * math.sqrt(2)])
    # second cell of the first row moves right by one step
    assert p[4].tolist() == pytest.approx([1.5 / 38, c, 0.1, 0.1])
    # conv7 starts after 38*38*4 = 5776 priors; 6 shapes, the 5th is ratio 3
    assert p[5776].tolist() == pytest.approx([0.5 / 19, 0.5 / 19, 0.2, 0.2])
    assert p[5776 + 4].tolist() == pytest.approx([0.5 / 19, 0.5 / 19, 0.2 * math.sqrt(3), 0.2 / math.sqrt(3)])
    # the last map is 1x1 with scale 0.9; last shape is ratio 1/2
    assert p[-1].tolist() == pytest.approx([0.5, 0.5, 0.9 / math.sqrt(2), 0.9 * math.sqrt(2)])
    assert p[-3].tolist() == pytest.approx([0.5, 0.5, math.sqrt(0.9), math.sqrt(0.9)])
    # per-map scales as in the seed
    starts = [0, 5776, 5776 + 2166, 5776 + 2166 + 600, 8692, 8728]
    assert [round(p[s, 2].item(), 4) for s in starts] == [0.1, 0.2, 0.375, 0.55, 0.725, 0.9]


def test_ssd512_count():
    assert ssd512_priors().shape == (24564, 4)


def test_grid_anchors_of_the_walkthrough():
    maps = grid_feature_maps()
    assert [m.num_priors_per_cell for m in maps] == [9, 9, 9]
    p = make_priors(maps)
    assert p.shape == (189, 4)
    assert p[0].tolist() == pytest.approx([0.125, 0.125, 0.7 * 0.25, 0.7 * 0.25])
    assert p[1].tolist() == pytest.approx([0.125, 0.125, 0.7 * 0.25, 0.35 * 0.25])
    assert p[8].tolist() == pytest.approx([0.125, 0.125, 0.65 * 0.25, 1.3 * 0.25])
    # the 1x1 map comes last: 16*9 + 4*9 = 180
    assert p[180].tolist() == pytest.approx([0.5, 0.5, 0.7, 0.7])
    assert p[188].tolist() == pytest.approx([0.5, 0.5, 0.65, 1.3])


def test_clipping_keeps_priors_inside_the_image():
    p = ssd300_priors(clip=True)
    xyxy = torch.cat((p[:, :2] - p[:, 2:] / 2, p[:, :2] + p[:, 2:] / 2), 1)
    assert xyxy.min() >= 0 and xyxy.max() <= 1 + 1e-6
    # the last (1x1, 0.636 x 1.273) prior is cut to height 1
    assert p[-1].tolist() == pytest.approx([0.5, 0.5, 0.9 / math.sqrt(2), 1.0])


def test_steps_override_centres():
    maps = ssd_feature_maps([2], [0.5, 1.0], [[]], steps=[0.4])
    p = make_priors(maps)
    assert p[:, 0].tolist() == pytest.approx([0.2, 0.2, 0.6, 0.6, 0.2, 0.2, 0.6, 0.6])


def test_linear_scales_rule():
    assert linear_scales(6, 0.2, 0.9) == pytest.approx((0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.04))


def test_bad_specs_raise():
    with pytest.raises(ValueError, match="scales"):
        ssd_feature_maps([38, 19], [0.1, 0.2], [[2], [2]])
    with pytest.raises(ValueError, match="positive"):
        ssd_feature_maps([3], [0.1, 0.2], [[-2]])


# --- the SSD300 prior variants ----------------------------------------------------------------------


def _seed_create_prior_boxes():
    """The seed tutorial's ``create_prior_boxes``, transcribed (``torch.FloatTensor`` of Python floats)."""
    from math import sqrt

    fmap_dims = {"conv4_3": 38, "conv7": 19, "conv8_2": 10, "conv9_2": 5, "conv10_2": 3, "conv11_2": 1}
    obj_scales = {"conv4_3": 0.1, "conv7": 0.2, "conv8_2": 0.375, "conv9_2": 0.55, "conv10_2": 0.725, "conv11_2": 0.9}
    aspect_ratios = {
        "conv4_3": [1.0, 2.0, 0.5],
        "conv7": [1.0, 2.0, 3.0, 0.5, 0.333],
        "conv8_2": [1.0, 2.0, 3.0, 0.5, 0.333],
        "conv9_2": [1.0, 2.0, 3.0, 0.5, 0.333],
        "conv10_2": [1.0, 2.0, 0.5],
        "conv11_2": [1.0, 2.0, 0.5],
    }
    fmaps = list(fmap_dims.keys())
    prior_boxes = []
    for k, fmap in enumerate(fmaps):
        for i in range(fmap_dims[fmap]):
            for j in range(fmap_dims[fmap]):
                cx = (j + 0.5) / fmap_dims[fmap]
                cy = (i + 0.5) / fmap_dims[fmap]
                for ratio in aspect_ratios[fmap]:
                    prior_boxes.append([cx, cy, obj_scales[fmap] * sqrt(ratio), obj_scales[fmap] / sqrt(ratio)])
                    if ratio == 1.0:
                        try:
                            additional_scale = sqrt(obj_scales[fmap] * obj_scales[fmaps[k + 1]])
                        except IndexError:
                            additional_scale = 1.0
                        prior_boxes.append([cx, cy, additional_scale, additional_scale])
    prior_boxes = torch.FloatTensor(prior_boxes)
    prior_boxes.clamp_(0, 1)
    return prior_boxes


def test_seed_priors_bit_for_bit():
    from multibox import create_model
    from multibox.core.priors import ssd_prior_variant

    want = _seed_create_prior_boxes()
    assert want.shape == (8732, 4)
    assert torch.equal(make_priors(*ssd_prior_variant("seed")), want)
    assert torch.equal(create_model("ssd300_vgg16", num_classes=20, priors="seed").priors, want)
    # the default ("paper") differs where the issue says: the last extra square and the clamp
    paper = create_model("ssd300_vgg16", num_classes=20).priors
    assert not torch.equal(paper, want)


def test_caffe_priors_by_hand():
    from multibox.core.priors import ssd_prior_variant

    p = make_priors(*ssd_prior_variant("caffe")).double()
    # conv4_3, first cell: centre (0.5 * 8 / 300), min size 30, sqrt(30 * 60), then ratio 2 and 1/2
    c = 4 / 300
    torch.testing.assert_close(p[0], torch.tensor([c, c, 0.1, 0.1], dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(p[1, 2], torch.tensor(math.sqrt(30 * 60) / 300, dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(
        p[2, 2:], torch.tensor([0.1 * math.sqrt(2), 0.1 / math.sqrt(2)], dtype=torch.float64), atol=1e-7, rtol=0
    )
    # conv7 starts after 38 * 38 * 4 priors: centre (0.5 * 16 / 300), min size 60
    q = p[38 * 38 * 4]
    torch.testing.assert_close(q, torch.tensor([8 / 300, 8 / 300, 0.2, 0.2], dtype=torch.float64), atol=1e-7, rtol=0)
    # the 1 x 1 map (step 300): centred, min size 264, max size 315
    last = p[-4:]
    torch.testing.assert_close(last[0], torch.tensor([0.5, 0.5, 0.88, 0.88], dtype=torch.float64), atol=1e-7, rtol=0)
    assert abs(float(last[1, 2]) - math.sqrt(264 * 315) / 300) < 1e-7


def test_prior_variant_errors():
    from multibox import create_model
    from multibox.core.priors import ssd_prior_variant

    with pytest.raises(ValueError, match="priors must be one of paper, caffe for SSD512"):
        ssd_prior_variant("seed", 512)
    with pytest.raises(ValueError, match="not both"):
        create_model("ssd300_vgg16", num_classes=2, priors="caffe", scales=[0.1] * 7)
    assert create_model("ssd512_vgg16", num_classes=2, priors="caffe").priors.shape == (24564, 4)
