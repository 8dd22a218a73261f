import pytest
import torch

from multibox import create_model
from multibox.core.boxes import cxcywh_to_xyxy, decode_boxes, encode_boxes
from multibox.core.priors import FeatureMapPriors, make_priors, ssd_feature_maps
from multibox.core.tta import TTA_MODES, merge_views, mirror_boxes, mirror_images, mirror_partners

MAPS = ssd_feature_maps([10, 5, 3, 1], [0.2, 0.4, 0.6, 0.8, 0.95], [(2,), (2, 3), (2,), (2,)])


@pytest.mark.parametrize("h,v", [(True, False), (False, True), (True, True)])
def test_partner_of_a_prior_is_its_mirror_image(h, v):
    priors = make_priors(MAPS)
    idx = mirror_partners(MAPS, h, v)
    assert sorted(idx.tolist()) == list(range(len(priors)))  # a permutation
    assert torch.equal(idx[idx], torch.arange(len(priors)))  # an involution
    expected = mirror_boxes(cxcywh_to_xyxy(priors), h, v)
    assert torch.allclose(cxcywh_to_xyxy(priors[idx]), expected, atol=1e-6)


@pytest.mark.parametrize("view", TTA_MODES["dihedral"])
def test_partner_in_every_dihedral_view_maps_back_onto_the_prior(view):
    """The view's prior that sees what prior i sees, mapped back from the view, is prior i."""
    priors = make_priors(MAPS)
    idx = mirror_partners(MAPS, *view)
    assert sorted(idx.tolist()) == list(range(len(priors)))
    back = mirror_boxes(cxcywh_to_xyxy(priors[idx]), *view)
    assert torch.allclose(back, cxcywh_to_xyxy(priors), atol=1e-6)


def test_transposed_view_shows_the_image_transposed():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    assert torch.equal(mirror_images(x, False, False, True), x.transpose(-1, -2))
    # mirrored left-right, then transposed: a quarter turn anticlockwise
    assert torch.equal(mirror_images(x, True, False, True), torch.rot90(x, 1, (-2, -1)))
    # a box in the top-right corner of the transposed view is at the bottom left of the image
    assert mirror_boxes(torch.tensor([0.6, 0.0, 1.0, 0.2]), False, False, True).tolist() == pytest.approx(
        [0.0, 0.6, 0.2, 1.0]
    )


def test_transposed_views_need_square_grids_and_closed_shape_sets():
    with pytest.raises(ValueError, match="square grids"):
        mirror_partners([FeatureMapPriors((4, 6), ((0.2, 0.2),))], False, False, True)
    with pytest.raises(ValueError, match="transpose among the shapes"):
        mirror_partners([FeatureMapPriors((4, 4), ((0.2, 0.2), (0.3, 0.1)))], False, False, True)
    assert len(mirror_partners([FeatureMapPriors((4, 6), ((0.2, 0.2),))], True, True)) == 24  # mirrors are fine


def test_merge_averages_boxes_and_probabilities_per_prior():
    torch.manual_seed(0)
    priors = make_priors(MAPS)
    n, p, k = 2, len(priors), 4
    idx = mirror_partners(MAPS, True, False)
    loc0, loc1 = torch.randn(n, p, 4) * 0.5, torch.randn(n, p, 4) * 0.5
    logit0, logit1 = torch.randn(n, p, k), torch.randn(n, p, k)
    loc, logits = merge_views(
        [(loc0, logit0), (loc1, logit1)], [None, idx], [(False, False), (True, False)], priors, "softmax", (0.1, 0.2)
    )
    # by hand for one prior: its own box, and its partner's box on the mirrored view mirrored back
    i = 17
    j = int(idx[i])
    own = decode_boxes(loc0[:, i], priors[i])
    x1, y1, x2, y2 = decode_boxes(loc1[:, j], priors[j]).unbind(-1)
    other = torch.stack((1 - x2, y1, 1 - x1, y2), -1)
    assert torch.allclose(decode_boxes(loc[:, i], priors[i]), (own + other) / 2, atol=1e-6)
    probs = (logit0[:, i].softmax(-1) + logit1[:, j].softmax(-1)) / 2
    assert torch.allclose(logits[:, i].softmax(-1), probs, atol=1e-6)


def test_sigmoid_scores_average_as_probabilities():
    priors = make_priors(MAPS)
    idx = mirror_partners(MAPS, False, True)
    loc = torch.zeros(1, len(priors), 4)
    a, b = torch.full((1, len(priors), 2), 2.0), torch.full((1, len(priors), 2), -1.0)
    _, logits = merge_views(
        [(loc, a), (loc, b)], [None, idx], [(False, False), (False, True)], priors, "sigmoid", (0.1, 0.2)
    )
    expected = (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    assert torch.allclose(logits.sigmoid(), expected.expand_as(logits))


def test_views_that_agree_merge_to_the_same_prediction():
    """A mirrored view predicting exactly the mirror image changes nothing."""
    torch.manual_seed(1)
    priors = make_priors(MAPS)
    idx = mirror_partners(MAPS, True, True)
    loc0, logit0 = torch.randn(1, len(priors), 4) * 0.3, torch.randn(1, len(priors), 3)
    boxes = decode_boxes(loc0, priors)
    loc1 = torch.empty_like(loc0)
    loc1[:, idx] = encode_boxes(mirror_boxes(boxes, True, True), priors[idx])
    logit1 = torch.empty_like(logit0)
    logit1[:, idx] = logit0
    loc, logits = merge_views(
        [(loc0, logit0), (loc1, logit1)], [None, idx], [(False, False), (True, True)], priors, "softmax", (0.1, 0.2)
    )
    assert torch.allclose(loc, loc0, atol=1e-4)
    assert torch.allclose(logits.softmax(-1), logit0.softmax(-1), atol=1e-6)


@pytest.mark.parametrize(
    "mode,view",
    [
        ("hflip", (True, False, False)),
        ("hvflip", (True, True, False)),
        ("dihedral", (True, False, True)),
        ("dihedral", (False, True, True)),
    ],
)
def test_mirroring_makes_the_detector_mirror_equivariant(mode, view):
    """With every view of the group among the views, detecting on a mirrored (or rotated) image
    gives the mirror image of the detections (an untrained model on its own is far from it)."""
    torch.manual_seed(0)
    model = create_model("ssd_resnet18", num_classes=3).eval()
    for layer in model.head.classification:  # no 1% class prior: scores spread around 0.5
        torch.nn.init.zeros_(layer.bias)
    x = torch.rand(1, 3, 224, 224) * 255
    a = model.predict(x, score_threshold=0.3, max_detections=50, tta=mode).per_image()[0]
    b = model.predict(mirror_images(x, *view), score_threshold=0.3, max_detections=50, tta=mode).per_image()[0]
    assert len(a["scores"]) > 0 and len(a["scores"]) == len(b["scores"])
    sa, sb = a["scores"].sort(descending=True), b["scores"].sort(descending=True)
    assert torch.allclose(sa.values, sb.values, atol=1e-5)
    mirrored = mirror_boxes(b["boxes"][sb.indices] / 224, *view) * 224
    assert torch.allclose(a["boxes"][sa.indices], mirrored, atol=1e-2)
    assert torch.equal(a["labels"][sa.indices], b["labels"][sb.indices])
    plain = model.predict(x, score_threshold=0.3, max_detections=50).per_image()[0]
    plain_b = model.predict(mirror_images(x, *view), score_threshold=0.3, max_detections=50).per_image()[0]
    assert len(plain["scores"]) != len(plain_b["scores"]) or not torch.allclose(
        plain["scores"].sort().values, plain_b["scores"].sort().values, atol=1e-3
    )


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="tta must be one of"):
        create_model("ssd_resnet18", num_classes=2, tta="rotate")


def test_partners_on_ssd300_steps_are_the_mirrored_cells():
    """SSD300's explicit steps do not tile 300 px exactly (38 x 8 = 304, 10 x 32 = 320 px): a
    partner is the mirrored cell, its centre off the exact mirror image by the grid's overhang."""
    from multibox.core.priors import SSD300_RATIOS, SSD300_SCALES, SSD300_SIZES

    steps = (8, 16, 32, 64, 100, 300)
    maps = ssd_feature_maps(SSD300_SIZES, SSD300_SCALES, SSD300_RATIOS, steps=[v / 300 for v in steps])
    priors = make_priors(maps)
    idx = mirror_partners(maps, True, False)
    assert torch.equal(priors[idx, 1:], priors[:, 1:])
    gap = (priors[idx, 0] - (1 - priors[:, 0])) * 300
    overhang = torch.cat(
        [torch.full((m.num_priors,), float(n * st - 300)) for m, n, st in zip(maps, SSD300_SIZES, steps)]
    )
    torch.testing.assert_close(gap, overhang, atol=1e-3, rtol=0)  # 4, 4, 20, 20, 0, 0 px


def test_a_model_whose_priors_cannot_be_transposed_refuses_dihedral_when_built():
    from multibox.models.ssd import SSD, PostprocessConfig

    parts = create_model("ssd_resnet18", num_classes=2)
    odd = [FeatureMapPriors((4, 4), ((0.2, 0.2), (0.3, 0.1)))]  # a wide shape without its tall twin
    args = (parts.backbone, parts.extras, parts.head, odd, 2, (224, 224), parts.score_type)
    SSD(*args, postprocess_config=PostprocessConfig(tta="hvflip"))  # mirrors need no twins
    with pytest.raises(ValueError, match=r"tta 'dihedral'.*0.3 x 0.1 has none"):
        SSD(*args, postprocess_config=PostprocessConfig(tta="dihedral"))


@pytest.mark.parametrize("dynamo", [False, True])
def test_mirrored_images_in_onnx_graphs_are_the_flips(tmp_path, dynamo):
    """In an ONNX export the mirrors are Gathers (runtimes run a reversing Slice slowly): the
    graph, at a batch other than the traced one, gives exactly torch's flips."""
    ort = pytest.importorskip("onnxruntime")
    if dynamo:
        pytest.importorskip("onnxscript")

    class Views(torch.nn.Module):
        def forward(self, x):
            return torch.cat([mirror_images(x, *flip) for flip in TTA_MODES["hvflip"]])

    x = torch.rand(2, 3, 5, 7)
    kwargs = {"dynamic_shapes": ({0: torch.export.Dim("b")},)} if dynamo else {"dynamic_axes": {"x": {0: "b"}}}
    torch.onnx.export(Views(), (x,), tmp_path / "v.onnx", dynamo=dynamo, input_names=["x"], **kwargs)
    y = torch.rand(3, 3, 5, 7)
    out = ort.InferenceSession(str(tmp_path / "v.onnx")).run(None, {"x": y.numpy()})[0]
    assert torch.equal(torch.from_numpy(out), torch.cat([y.flip(-1), y.flip(-2), y.flip([-2, -1])]))
