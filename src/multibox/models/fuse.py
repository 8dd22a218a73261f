"""Folding BatchNorm into the preceding convolution, and the activation into the convolution
kernel, for frozen or inference-only layers.

In eval mode ``bn(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` and
``b' = (b - m) * g / sqrt(v + eps) + beta``: one memory pass instead of two. A ReLU or
ReLU6 that follows then runs inside oneDNN's convolution as a post-op
(:class:`ConvAct`), without a second pass over the output (a separate ReLU6 costs about
as much as a depthwise or small 1x1 convolution). The numbers are the same, bit for bit,
wherever PyTorch's own convolution runs in oneDNN too (always under bf16 autocast here);
tiny maps that PyTorch computes with other kernels differ in float32's last bits.
A module lists its ``(conv, bn)`` attribute pairs in ``conv_bn_pairs`` and its
``(conv, bn, activation)`` triples in ``conv_bn_acts``; ``nn.Sequential`` children are
paired when a Conv2d is directly followed by a BatchNorm2d and/or a ReLU/ReLU6.

:class:`FrozenPrefix` keeps folded copies of a backbone's frozen modules
outside the module tree (so ``state_dict`` is unchanged) and rebuilds them
whenever the original weights change (``Tensor._version``) or the device or
memory format does.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    # type(conv): a DepthwiseConv2d stays one (its gradients stay float32 under autocast)
    fused = type(conv)(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def _pointwise_conv():
    """oneDNN's convolution with a fused post-op, where this PyTorch build has it."""
    try:
        return torch.ops.mkldnn._convolution_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


class ConvAct(nn.Module):
    """``act(conv(x))`` for a frozen convolution followed by ReLU or ReLU6, computed by one
    oneDNN kernel on CPUs (the activation as a post-op: identical results, one pass less).

    Elsewhere (GPUs, gradients, tracing, export, ``torch.compile``) it runs the two modules.
    Under CPU autocast it computes in the autocast dtype, as ``nn.Conv2d`` would.
    """

    def __init__(self, conv: nn.Conv2d, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.act = conv, act
        self.attr, self.scalars = ("hardtanh", [0.0, 6.0]) if isinstance(act, nn.ReLU6) else ("relu", [])
        self._cache: tuple = (None, None, None)

    def _fused(self, x: Tensor) -> bool:
        return (
            x.device.type == "cpu"
            and x.dim() == 4
            and x.dtype in (torch.float32, torch.bfloat16)
            and self.conv.weight.dtype == torch.float32
            and self.conv.padding_mode == "zeros"
            and isinstance(self.conv.padding, tuple)  # not "same"
            and (x.dtype == torch.float32 or torch.is_autocast_enabled("cpu"))  # else conv2d's dtype error
            and not (torch.is_grad_enabled() and (x.requires_grad or self.conv.weight.requires_grad))
            and not torch.jit.is_tracing()
            and not torch.jit.is_scripting()
            and not torch.onnx.is_in_onnx_export()
            and not torch.compiler.is_compiling()
            and _POINTWISE_CONV is not None
        )

    def _weights(self, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        w, b = self.conv.weight, self.conv.bias
        key = (dtype, w.data_ptr(), None if w.is_inference() else w._version)  # inference tensors have none
        if self._cache[0] != key:  # cast once (autocast casts the weights on every call)
            self._cache = (key, w.to(dtype), None if b is None else b.to(dtype))
        return self._cache[1], self._cache[2]

    def forward(self, x: Tensor) -> Tensor:
        if not self._fused(x):
            return self.act(self.conv(x))
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        w, b = self._weights(dtype)
        c = self.conv
        return _POINTWISE_CONV(
            x.to(dtype), w, b, list(c.padding), list(c.stride), list(c.dilation), c.groups, self.attr, self.scalars, ""
        )


_POINTWISE_CONV = _pointwise_conv()
_FUSABLE_ACTS = (nn.ReLU, nn.ReLU6)


def _conv_bn_acts(m: nn.Module) -> list[tuple[str, str | None, str | None]]:
    """``(conv, bn, activation)`` attribute names in ``m`` (``None`` where there is none): the
    module's declared ``conv_bn_pairs`` and ``conv_bn_acts``, and for an ``nn.Sequential`` every
    Conv2d child with the BatchNorm2d and/or ReLU/ReLU6 right after it."""
    found = [(c, b, None) for c, b in getattr(m, "conv_bn_pairs", ())] + list(getattr(m, "conv_bn_acts", ()))
    if isinstance(m, nn.Sequential):
        children = list(m._modules.items())
        for i, (name, child) in enumerate(children):
            if not isinstance(child, nn.Conv2d):
                continue
            after = children[i + 1 : i + 3]
            bn = after.pop(0)[0] if after and isinstance(after[0][1], nn.BatchNorm2d) else None
            act = after[0][0] if after and isinstance(after[0][1], _FUSABLE_ACTS) else None
            found.append((name, bn, act))
    return found


@torch.no_grad()
def fuse_conv_bn(module: nn.Module, fuse_act: bool = True) -> nn.Module:
    """A deep copy of ``module`` (in eval mode) with every known conv+BN pair folded and, with
    ``fuse_act``, every conv(+BN)+ReLU/ReLU6 made one :class:`ConvAct`."""
    module = copy.deepcopy(module).eval()
    for m in list(module.modules()):
        for conv_name, bn_name, act_name in _conv_bn_acts(m):
            conv = getattr(m, conv_name, None)
            bn = getattr(m, bn_name, None) if bn_name else None
            act = getattr(m, act_name, None) if act_name else None
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                conv = fold_conv_bn(conv, bn)
                setattr(m, conv_name, conv)
                setattr(m, bn_name, nn.Identity())
            if fuse_act and isinstance(conv, nn.Conv2d) and isinstance(act, _FUSABLE_ACTS):
                setattr(m, conv_name, ConvAct(conv, act))
                setattr(m, act_name, nn.Identity())
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def inference_copy(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` for inference: BatchNorm folded into convolutions and,
    by default, channels-last weights (the fastest layout for oneDNN on CPUs; the input
    should be channels-last too). Outputs equal the original's up to float rounding."""
    fused = fuse_conv_bn(model)
    return fused.to(memory_format=torch.channels_last) if channels_last else fused


class FrozenPrefix:
    """Folded stand-ins for a list of frozen modules, rebuilt when the originals change."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self._key = None
        self._fused: list[nn.Module] = []

    def get(self, like: torch.Tensor) -> list[nn.Module]:
        channels_last = like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last)
        params = [t for m in self.modules for t in list(m.parameters()) + list(m.buffers())]
        versions = tuple(None if t.is_inference() else t._version for t in params)  # inference tensors have none
        key = (like.device, channels_last, versions, tuple(id(t) for t in params))
        if key != self._key:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            self._fused = [fuse_conv_bn(m).to(device=like.device, memory_format=fmt) for m in self.modules]
            self._key = key
        return self._fused
