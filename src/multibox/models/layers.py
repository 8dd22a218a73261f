"""Layers shared by the backbones and heads.

:class:`DepthwiseConv2d` is an ``nn.Conv2d`` (same parameters, same state-dict
keys) that runs in float32 on CPUs, also under ``torch.autocast``. On CPUs with
bf16 matrix units (AMX), autocast makes the pointwise (1x1) convolutions of
MobileNet-style blocks 2-3x faster, but oneDNN's bf16 depthwise convolution is
about 4x slower than its float32 one in training (the weight gradient); keeping
depthwise layers that train in float32 gets the first without paying the second.
Frozen layers and inference, forward only, stay in bf16, where oneDNN's depthwise
kernel is fast. On GPUs autocast applies as usual.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class DepthwiseConv2d(nn.Conv2d):
    """A grouped convolution that CPU autocast leaves in float32 when it trains."""

    def _needs_grad(self, x: Tensor) -> bool:
        # Only the backward pass is slow in bf16: frozen layers and inference keep autocast
        # (their bf16 forward is about 2x the float32 one and saves two dtype conversions).
        return torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or not self._needs_grad(x):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            return super().forward(x.float())


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU has AMX tiles, where bf16 autocast speeds up training (elsewhere it slows it)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # pragma: no cover - probing is best effort
        return False
