"""Layers shared by the backbones and heads.

:class:`DepthwiseConv2d` is an ``nn.Conv2d`` (same parameters, same state-dict
keys) whose backward pass runs in float32 on CPUs, also under ``torch.autocast``.
On CPUs with bf16 matrix units (AMX), autocast makes the pointwise (1x1)
convolutions of MobileNet-style blocks 2-3x faster, and oneDNN's bf16 depthwise
forward is fast too, but its bf16 depthwise backward pass is 1.5-6x slower than
the float32 one. So a depthwise layer that trains computes its forward pass in the
autocast dtype (output in that dtype, like every other convolution) and its
gradients in float32 from the saved bf16 input (:class:`MixedDepthwise`); frozen
layers and inference, forward only, are plain autocast convolutions. On GPUs
autocast applies as usual.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MixedDepthwise(torch.autograd.Function):
    """A grouped convolution computed in the input's (autocast) dtype, with its gradients
    computed in float32: ``grad`` and the saved input are widened, the weight is the float32
    parameter itself, and the input gradient is narrowed back to the input's dtype."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int):
        ctx.save_for_backward(x, weight)
        ctx.conv = (stride, padding, dilation, groups, None if bias is None else [bias.shape[0]])
        low = x.dtype
        return F.conv2d(x, weight.to(low), None if bias is None else bias.to(low), stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups, bias_sizes = ctx.conv
        need = list(ctx.needs_input_grad[:3])
        need[2] = need[2] and bias_sizes is not None
        # the input's values matter only to the weight gradient; otherwise only its shape and layout do
        x32 = x.float() if need[1] else torch.empty_like(x, dtype=torch.float32)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad.float(), x32, weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups, need)
        return (None if gx is None else gx.to(x.dtype)), gw, gb, None, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """A grouped convolution whose gradients CPU autocast leaves in float32 (see the module docstring)."""

    def _needs_grad(self, x: Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def forward(self, x: Tensor) -> Tensor:
        if (x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or not self._needs_grad(x)
                or isinstance(self.padding, str) or self.padding_mode != "zeros" or self.weight.dtype != torch.float32):
            return super().forward(x)
        low = torch.get_autocast_dtype("cpu")
        return MixedDepthwise.apply(x.to(low), self.weight, self.bias, self.stride, self.padding, self.dilation,
                                    self.groups)


class _ReLU6InPlace(torch.autograd.Function):
    """``clamp(x, 0, 6)`` in place, with the gradient mask read from the output:
    ``0 < y < 6`` exactly where ``0 < x < 6``, so nothing needs the input afterwards."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        F.hardtanh_(x, 0.0, 6.0)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.hardtanh_backward(grad, y, 0.0, 6.0)


class ReLU6(nn.ReLU6):
    """``nn.ReLU6`` whose in-place form also stays in place when it trains. PyTorch's
    in-place ReLU6 computes its gradient from its input, so autograd first copies that
    input (a full extra pass over every activation of a MobileNet-style block); the same
    gradient can be read from the output. Same numbers, bit for bit."""

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace and torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_tracing():
            return _ReLU6InPlace.apply(x)
        return super().forward(x)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has AMX tiles, where bf16 autocast speeds up training (elsewhere it slows it)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # pragma: no cover - probing is best effort
        return False
