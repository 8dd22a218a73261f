"""Layers shared by the backbones and heads.

:class:`DepthwiseConv2d` is an ``nn.Conv2d`` (same parameters, same state-dict
keys) whose backward pass runs in float32 on CPUs, also under ``torch.autocast``.
On CPUs with bf16 matrix units (AMX), autocast makes the pointwise (1x1)
convolutions of MobileNet-style blocks much faster, and oneDNN's bf16 depthwise
forward is fast too, but its bf16 depthwise backward pass is slower than the
float32 one (measurements: docs/benchmarks.md). So a depthwise layer that trains computes its forward pass in the
autocast dtype (output in that dtype, like every other convolution) and its
weight gradient in float32 from the saved bf16 input (:class:`MixedDepthwise`).
Its input gradient at stride 1 is itself a depthwise convolution, of the output
gradient with the spatially flipped kernel, so it runs as a bf16 forward pass
(faster than the float32 backward pass with its two casts); at other
strides it is computed in float32 too. Frozen layers and inference, forward
only, are plain autocast convolutions. On GPUs autocast applies as usual.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _flipped_conv_padding(weight: Tensor, stride, padding, dilation, groups: int) -> list[int] | None:
    """The padding that makes the input gradient of this convolution a plain convolution of the
    output gradient with the flipped kernel, or None where that does not hold (strided, dilated,
    not one filter per channel, or padding wider than the kernel)."""
    k = weight.shape[-2:]
    if (
        tuple(stride) != (1, 1)
        or tuple(dilation) != (1, 1)
        or weight.shape[1] != 1
        or weight.shape[0] != groups
        or any(p > kk - 1 for p, kk in zip(padding, k))
    ):
        return None
    return [kk - 1 - p for p, kk in zip(padding, k)]


class MixedDepthwise(torch.autograd.Function):
    """A grouped convolution computed in the input's (autocast) dtype. Its weight and bias
    gradients are computed in float32 (``grad`` and the saved input widened, the weight the
    float32 parameter itself). Its input gradient is the flipped-kernel convolution of ``grad``
    in the input's dtype where :func:`_flipped_conv_padding` allows, else also computed in
    float32 and narrowed back."""

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
        gx = gw = gb = None
        flip_pad = _flipped_conv_padding(weight, stride, padding, dilation, groups) if need[0] else None
        if flip_pad is not None:
            flipped = weight.to(grad.dtype).flip(-2, -1)
            gx = F.conv2d(grad, flipped, None, 1, flip_pad, 1, groups).to(x.dtype)
            need[0] = False
        if any(need):
            # the input's values matter only to the weight gradient; otherwise only its shape and layout do
            x32 = x.float() if need[1] else torch.empty_like(x, dtype=torch.float32)
            gx32, gw, gb = torch.ops.aten.convolution_backward(
                grad.float(), x32, weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups, need
            )
            if gx32 is not None:
                gx = gx32.to(x.dtype)
        return gx, gw, gb, None, None, None, None


class DepthwiseConv2d(nn.Conv2d):
    """A grouped convolution whose gradients CPU autocast leaves in float32 (see the module docstring)."""

    def _needs_grad(self, x: Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.device.type != "cpu"
            or not torch.is_autocast_enabled("cpu")
            or not self._needs_grad(x)
            or isinstance(self.padding, str)
            or self.padding_mode != "zeros"
            or self.weight.dtype != torch.float32
        ):
            return super().forward(x)
        low = torch.get_autocast_dtype("cpu")
        return MixedDepthwise.apply(
            x.to(low), self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


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
