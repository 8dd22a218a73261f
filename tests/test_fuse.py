import pytest
import torch
from torch import nn

import multibox.models.fuse as fuse
from multibox.models import create_model
from multibox.models.fuse import ConvAct, fuse_conv_bn
from multibox.models.layers import DepthwiseConv2d

needs_kernel = pytest.mark.skipif(fuse._POINTWISE_CONV is None, reason="this PyTorch has no oneDNN fused convolution")


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the calls of the fused oneDNN kernel."""
    calls = []
    real = fuse._POINTWISE_CONV

    def counted(*args):
        calls.append(args[-3])  # the post-op's name
        return real(*args)

    monkeypatch.setattr(fuse, "_POINTWISE_CONV", counted)
    return calls


CONVS = [  # in, out, kernel, stride, groups
    (3, 16, 3, 2, 1),
    (16, 48, 1, 1, 1),
    (24, 24, 3, 1, 24),
    (24, 24, 5, 2, 24),
]


@needs_kernel
@pytest.mark.parametrize("act", [nn.ReLU6(), nn.ReLU()])
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_act_equals_the_two_modules_bit_for_bit(act, autocast, channels_last, kernel_calls):
    torch.manual_seed(0)
    for cin, cout, k, s, g in CONVS:
        conv = (DepthwiseConv2d if g > 1 else nn.Conv2d)(cin, cout, k, s, k // 2, groups=g).requires_grad_(False)
        x = torch.randn(2, cin, 19, 19) * 3
        if channels_last:
            conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
        fused = ConvAct(conv, act)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            ref, got = act(conv(x)), fused(x)
        assert got.dtype == ref.dtype == (torch.bfloat16 if autocast else torch.float32)
        assert torch.equal(got, ref)
        assert got.min() >= 0 and (not isinstance(act, nn.ReLU6) or got.max() <= 6)
    assert kernel_calls == [fused.attr] * len(CONVS)


@needs_kernel
def test_conv_act_runs_the_modules_when_a_gradient_is_needed(kernel_calls):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    fused = ConvAct(conv, nn.ReLU6())
    x = torch.randn(1, 4, 7, 7, requires_grad=True)
    fused(x).sum().backward()  # trainable weights
    assert conv.weight.grad is not None and kernel_calls == []
    conv.requires_grad_(False)
    fused(x).sum().backward()  # frozen weights, but the input needs its gradient
    assert x.grad is not None and kernel_calls == []
    with torch.no_grad():
        fused(x)
    assert kernel_calls == ["hardtanh"]


# model: (input size, activations that follow a convolution (+ BatchNorm), all activations,
# BatchNorms that cannot fold: the walkthrough's extra layers put them after the ReLU)
FUSABLE = {
    "ssdlite_effl0": (160, 57, 58, 0),  # all but the unused one of the block without expansion
    "ssd300_vgg16": (300, 21, 21, 0),
    "ssd_resnet18": (224, 13, 22, 4),  # stem, the first of each block, 4 in the extras; not those after a sum
}


@needs_kernel
@pytest.mark.parametrize("name", list(FUSABLE))
def test_fusing_activations_does_not_change_a_model(name):
    """Fusing the activations changes nothing in SSDLite (bf16 autocast); in float32 the
    convolutions on small maps (SSD300's 5x5 to 1x1 extra maps) round differently (PyTorch
    computes those without oneDNN), by float32's last bits."""
    torch.manual_seed(0)
    size, fusable, acts, unfolded = FUSABLE[name]
    kw = {"image_size": 160} if name == "ssdlite_effl0" else {}
    model = create_model(name, num_classes=3, **kw).eval()
    x = (torch.rand(1, 3, size, size) * 255).contiguous(memory_format=torch.channels_last)
    plain = fuse_conv_bn(model, fuse_act=False).to(memory_format=torch.channels_last)
    fused = fuse_conv_bn(model).to(memory_format=torch.channels_last)
    assert sum(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in model.modules()) == acts
    assert sum(isinstance(m, ConvAct) for m in fused.modules()) == fusable
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.modules()) == unfolded
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "ssdlite_effl0"):
        for a, b in zip(plain(x), fused(x)):
            if name == "ssdlite_effl0":
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


def frozen_model() -> tuple[nn.Module, torch.Tensor]:
    """SSDLite with its stem and first four blocks frozen, and an input batch."""
    torch.manual_seed(0)
    model = create_model("ssdlite_effl0", num_classes=3, image_size=160)
    model.freeze_backbone(4)
    return model, (torch.rand(2, 3, 160, 160) * 255).contiguous(memory_format=torch.channels_last)


def trained_grads(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The gradients of the trained parameters for one bf16-autocast step on a toy loss."""
    model.train()
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loc, logits = model(x)
    (loc.float().square().mean() + logits.float().square().mean()).backward()
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


@needs_kernel
def test_frozen_prefix_runs_fused_and_trains_the_same(monkeypatch):
    """The frozen stem and blocks of a training model run as fused kernels; the loss and
    the gradients of the trained layers are the same as without fusion."""
    model, x = frozen_model()
    fused = trained_grads(model, x)
    assert any(isinstance(m, ConvAct) for f in model.backbone._frozen._fused for m in f.modules())
    monkeypatch.setattr(fuse, "_POINTWISE_CONV", None)
    model.backbone._frozen._key = None  # rebuild the fused prefix
    for a, b in zip(fused, trained_grads(model, x)):
        assert torch.equal(a, b)


@needs_kernel
def test_fused_modules_built_under_inference_mode_still_train():
    """Evaluating first (inference mode) builds the fused prefix from inference tensors; a
    training step afterwards must still run and give the same gradients."""
    model, x = frozen_model()
    reference = trained_grads(model, x)
    model.backbone._frozen._key = None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.eval()
        model(x)
    for a, b in zip(reference, trained_grads(model, x)):
        assert torch.equal(a, b)
