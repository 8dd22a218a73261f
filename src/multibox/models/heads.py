"""Extra feature layers and prediction heads.

A head turns each feature map ``(N, Ch, H, W)`` into ``(N, H*W*A, 4)`` offsets
and ``(N, H*W*A, K)`` logits, with ``A`` prior shapes per cell; the flattening
order (row, column, shape) matches :func:`multibox.priors.make_priors`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import DepthwiseConv2d, ReLU6


def flatten_head_output(x: Tensor, values_per_prior: int) -> Tensor:
    """``(N, A*K, H, W)`` -> ``(N, H*W*A, K)``."""
    n, _, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n, h * w * (x.shape[1] // values_per_prior), values_per_prior)


def depthwise_separable(in_ch: int, out_ch: int, bias: bool = True) -> nn.Sequential:
    """SSDLite's "lite" predictor: 3x3 depthwise + BN + ReLU6, then a 1x1 projection."""
    return nn.Sequential(
        DepthwiseConv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),
        nn.BatchNorm2d(in_ch),
        ReLU6(inplace=True),
        nn.Conv2d(in_ch, out_ch, 1, bias=bias),
    )


class SSDHead(nn.Module):
    """One regression and one classification predictor per feature map.

    Args:
        in_channels: channels of each feature map.
        priors_per_cell: prior shapes ``A`` of each map.
        num_logits: logits per prior (``C + 1`` for softmax heads, ``C`` for sigmoid heads).
        lite: depthwise-separable predictors (SSDLite) instead of 3x3 convolutions.
        class_bias: initial bias of every class logit (sigmoid heads: ``-log((1-p)/p)``);
            ``None`` leaves zero.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        priors_per_cell: Sequence[int],
        num_logits: int,
        lite: bool = False,
        class_bias: float | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(priors_per_cell):
            raise ValueError(f"{len(in_channels)} feature maps but {len(priors_per_cell)} prior counts")
        self.num_logits = num_logits

        def predictor(c: int, out: int) -> nn.Module:
            return depthwise_separable(c, out) if lite else nn.Conv2d(c, out, 3, padding=1)

        self.regression = nn.ModuleList(predictor(c, a * 4) for c, a in zip(in_channels, priors_per_cell))
        self.classification = nn.ModuleList(predictor(c, a * num_logits) for c, a in zip(in_channels, priors_per_cell))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if class_bias is not None:
            for block in self.classification:
                last = block[-1] if isinstance(block, nn.Sequential) else block
                nn.init.constant_(last.bias, class_bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        locs = [flatten_head_output(r(f), 4) for r, f in zip(self.regression, features)]
        logits = [flatten_head_output(c(f), self.num_logits) for c, f in zip(self.classification, features)]
        return torch.cat(locs, dim=1), torch.cat(logits, dim=1)


def ssd_extra_layers(in_channels: int, spec: Sequence[tuple[int, int, int, int, int]]) -> nn.ModuleList:
    """SSD's extra feature layers: each block is 1x1 conv to ``mid`` then a ``k x k`` conv
    to ``out`` with ``stride`` and ``padding``, both followed by ReLU.

    ``spec`` rows are ``(mid, out, kernel, stride, padding)``.
    """
    blocks = nn.ModuleList()
    c = in_channels
    for mid, out, k, s, p in spec:
        blocks.append(
            nn.Sequential(
                nn.Conv2d(c, mid, 1),
                nn.ReLU(inplace=True),
                nn.Conv2d(mid, out, k, stride=s, padding=p),
                nn.ReLU(inplace=True),
            )
        )
        c = out
    for m in blocks.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return blocks


# (mid, out, kernel, stride, padding) of conv8 ... conv11 (SSD300) and conv8 ... conv12 (SSD512)
SSD300_EXTRAS = ((256, 512, 3, 2, 1), (128, 256, 3, 2, 1), (128, 256, 3, 1, 0), (128, 256, 3, 1, 0))
SSD512_EXTRAS = (
    (256, 512, 3, 2, 1),
    (128, 256, 3, 2, 1),
    (128, 256, 3, 2, 1),
    (128, 256, 3, 2, 1),
    (128, 256, 4, 1, 1),
)


def lite_extra_layers(in_channels: int, out_channels: Sequence[int]) -> nn.ModuleList:
    """SSDLite extra layers: 1x1 to half width, 3x3 depthwise stride 2, 1x1 up; BN + ReLU6."""
    blocks = nn.ModuleList()
    c = in_channels
    for out in out_channels:
        mid = out // 2
        blocks.append(
            nn.Sequential(
                nn.Conv2d(c, mid, 1, bias=False),
                nn.BatchNorm2d(mid),
                ReLU6(inplace=True),
                DepthwiseConv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False),
                nn.BatchNorm2d(mid),
                ReLU6(inplace=True),
                nn.Conv2d(mid, out, 1, bias=False),
                nn.BatchNorm2d(out),
                ReLU6(inplace=True),
            )
        )
        c = out
    for m in blocks.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return blocks
