"""Exponential moving average of a model's weights.

After every optimiser step ``e <- d e + (1 - d) w`` for each weight and floating-point
buffer (BatchNorm statistics included; integer buffers are copied). The decay ramps up
as ``d_n = min(decay, (1 + n) / (10 + n))`` over the first updates, so the average is
not anchored to the random or ImageNet weights it started from. The averaged weights
are the ones to evaluate and ship; the raw ones keep training.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) (0 turns averaging off), got {decay}")
        self.decay = decay
        self.updates = 0
        self.state = {
            k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()
        }

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        floats_e, floats_w = [], []
        for k, w in model.state_dict().items():
            e = self.state[k]
            if w.is_floating_point():
                floats_e.append(e)
                floats_w.append(w.float())
            else:
                e.copy_(w)
        torch._foreach_lerp_(floats_e, floats_w, 1.0 - d)  # e + (1 - d)(w - e)

    def averaged_state(self, like: nn.Module) -> dict[str, Tensor]:
        """The averaged weights in the dtypes of ``like``'s state dict."""
        ref = like.state_dict()
        return {k: v.to(ref[k].dtype) for k, v in self.state.items()}

    def load(self, state: dict[str, Tensor], updates: int) -> None:
        for k, v in state.items():
            self.state[k].copy_(v)
        self.updates = int(updates)
