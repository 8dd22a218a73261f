import pytest
import torch
import torch.nn.functional as F
from torch import nn

from multibox.config import load_config
from multibox.models.fuse import fold_conv_bn
from multibox.models.layers import DepthwiseConv2d, ReLU6


def test_depthwise_conv_equals_conv2d_without_autocast():
    torch.manual_seed(0)
    dw = DepthwiseConv2d(8, 8, 5, padding=2, groups=8, bias=False)
    ref = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
    ref.load_state_dict(dw.state_dict())  # same keys and shapes
    x = torch.randn(2, 8, 12, 12)
    assert torch.equal(dw(x), ref(x))


@pytest.mark.parametrize("stride,bias,frozen", [(1, False, False), (2, True, False), (1, False, True)])
def test_depthwise_conv_trains_forward_in_bf16_and_backward_in_float32(stride, bias, frozen):
    torch.manual_seed(0)
    dw = DepthwiseConv2d(8, 8, 3, stride=stride, padding=1, groups=8, bias=bias).requires_grad_(not frozen)
    x = torch.randn(2, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    xb = x.bfloat16().requires_grad_()  # bf16 input from a previous autocast layer
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dw(xb)
        assert out.dtype == torch.bfloat16  # like every other convolution under autocast
        assert torch.equal(
            out,
            F.conv2d(
                xb.detach(), dw.weight.bfloat16(), None if dw.bias is None else dw.bias.bfloat16(), stride, 1, 1, 8
            ),
        )
    grad = torch.randn_like(out)
    out.backward(grad)
    # the same weight and bias gradients as float32 on the widened tensors
    w = dw.weight.detach().requires_grad_()
    b = dw.bias.detach().requires_grad_() if bias else None
    x32 = xb.detach().float().requires_grad_()
    F.conv2d(x32, w, b, stride, 1, 1, 8).backward(grad.float())
    assert xb.grad.dtype == torch.bfloat16
    if stride == 2:  # the input gradient too, narrowed to bf16
        assert torch.equal(xb.grad, x32.grad.bfloat16())
    else:  # a bf16 convolution with the bf16 weight the forward pass used: float32's gradient, rounded once
        x32.grad = None
        F.conv2d(x32, dw.weight.detach().bfloat16().float(), None, stride, 1, 1, 8).backward(grad.float())
        ref = x32.grad
        assert not torch.equal(xb.grad.float(), x32.grad)  # it is bf16, not float32
        err = (xb.grad.float() - ref).abs()
        assert (err <= ref.abs() * 2**-8 + 1e-6).all()  # within half a bf16 step of each exact value
    if frozen:
        assert dw.weight.grad is None
    else:
        assert dw.weight.grad.dtype == torch.float32 and torch.equal(dw.weight.grad, w.grad)
    if bias:
        assert torch.equal(dw.bias.grad, b.grad)


def test_relu6_in_place_keeps_pytorchs_gradient_without_copying_its_input():
    base = torch.tensor([-1.0, 0.0, 0.5, 6.0, 7.0, 3.0, -0.0, 5.999])
    for dtype in (torch.float32, torch.bfloat16):
        x0 = torch.cat([base, torch.randn(500) * 5]).to(dtype).requires_grad_()
        grad = torch.randn(x0.shape).to(dtype)
        a = x0 * 1
        y = ReLU6(inplace=True)(a)
        assert y.data_ptr() == a.data_ptr()  # in place
        y.backward(grad)
        ours = x0.grad.clone()
        x0.grad = None
        ref = nn.ReLU6()(x0 * 1)
        ref.backward(grad)
        assert torch.equal(y, ref) and torch.equal(ours, x0.grad)

    def clones(act: nn.Module) -> int:
        x = torch.randn(50, requires_grad=True) * 4
        with torch.profiler.profile() as prof:
            act(x).sum().backward()
        return sum(e.name == "aten::clone" for e in prof.events())

    assert clones(nn.ReLU6(inplace=True)) > 0 and clones(ReLU6(inplace=True)) == 0
    with torch.no_grad():  # inference: the plain module
        z = torch.randn(10) * 8
        assert torch.equal(ReLU6(inplace=True)(z.clone()), z.clamp(0, 6))


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
        assert dw(x.requires_grad_()).grad_fn.name().endswith("MixedDepthwiseBackward")


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
