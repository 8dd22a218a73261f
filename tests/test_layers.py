import torch
from torch import nn

from multibox.config import load_config
from multibox.models.fuse import fold_conv_bn
from multibox.models.layers import DepthwiseConv2d


def test_depthwise_conv_stays_float32_under_autocast_and_equals_conv2d():
    torch.manual_seed(0)
    dw = DepthwiseConv2d(8, 8, 5, padding=2, groups=8, bias=False)
    ref = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
    ref.load_state_dict(dw.state_dict())  # same keys and shapes
    x = torch.randn(2, 8, 12, 12)
    assert torch.equal(dw(x), ref(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ref(x).dtype == torch.bfloat16  # a plain conv is cast
        out = dw(x.bfloat16())  # bf16 input from a previous autocast layer
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref(x.bfloat16().float()))


def test_depthwise_conv_follows_autocast_when_nothing_needs_its_gradient():
    torch.manual_seed(0)
    dw = DepthwiseConv2d(8, 8, 3, padding=1, groups=8)
    x = torch.randn(2, 8, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():  # inference
            assert dw(x).dtype == torch.bfloat16
        dw.requires_grad_(False)  # a frozen layer on a plain input: forward only
        assert dw(x).dtype == torch.bfloat16
        # a frozen layer inside the trained part still passes gradients back to its input
        assert dw(x.requires_grad_()).dtype == torch.float32


def test_folding_keeps_the_depthwise_class():
    dw = DepthwiseConv2d(4, 4, 3, padding=1, groups=4, bias=False)
    bn = nn.BatchNorm2d(4).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    fused = fold_conv_bn(dw, bn)
    assert type(fused) is DepthwiseConv2d
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(fused(x), bn(dw(x)), rtol=1e-5, atol=1e-5)


def test_amp_auto_on_cpu_follows_the_amx_probe(monkeypatch, tmp_path):
    from multibox.engine import trainer as trainer_module

    tr = trainer_module.Trainer.__new__(trainer_module.Trainer)
    tr.device = torch.device("cpu")
    monkeypatch.setattr(trainer_module, "cpu_has_fast_bf16", lambda: True)
    assert tr._amp_dtype("auto") == torch.bfloat16
    monkeypatch.setattr(trainer_module, "cpu_has_fast_bf16", lambda: False)
    assert tr._amp_dtype("auto") is None
    assert tr._amp_dtype("off") is None


def test_yaml_booleans_for_string_fields():
    # YAML 1.1 reads `off` as false; the amp field still gets the word it documents
    assert load_config(None, ["train.amp=off"]).train.amp == "off"
