"""Folding BatchNorm into the preceding convolution, for frozen or inference-only layers.

In eval mode ``bn(conv(x)) = conv'(x)`` with ``w' = w * g / sqrt(v + eps)`` and
``b' = (b - m) * g / sqrt(v + eps) + beta``: one memory pass instead of two.
A module lists its (conv, bn) attribute pairs in ``conv_bn_pairs``;
``nn.Sequential`` children are paired when a Conv2d is directly followed by a
BatchNorm2d.

:class:`FrozenPrefix` keeps folded copies of a backbone's frozen modules
outside the module tree (so ``state_dict`` is unchanged) and rebuilds them
whenever the original weights change (``Tensor._version``) or the device or
memory format does.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    # type(conv): a DepthwiseConv2d stays one (it keeps float32 under autocast)
    fused = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode).to(conv.weight)
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


@torch.no_grad()
def fuse_conv_bn(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` (in eval mode) with every known conv+BN pair folded."""
    module = copy.deepcopy(module).eval()
    for m in list(module.modules()):
        for conv_name, bn_name in getattr(m, "conv_bn_pairs", ()):
            conv, bn = getattr(m, conv_name, None), getattr(m, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(m, conv_name, fold_conv_bn(conv, bn))
                setattr(m, bn_name, nn.Identity())
        if isinstance(m, nn.Sequential):
            children = list(m._modules.items())
            for (n1, c1), (n2, c2) in zip(children, children[1:]):
                if isinstance(c1, nn.Conv2d) and isinstance(c2, nn.BatchNorm2d):
                    m._modules[n1] = fold_conv_bn(c1, c2)
                    m._modules[n2] = nn.Identity()
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
        key = (like.device, channels_last, tuple(t._version for t in params), tuple(id(t) for t in params))
        if key != self._key:
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            self._fused = [fuse_conv_bn(m).to(device=like.device, memory_format=fmt) for m in self.modules]
            self._key = key
        return self._fused
