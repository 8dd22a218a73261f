"""VGG16 "reduced" base network of SSD (paper section 3 and the seed implementation).

Changes to ImageNet VGG16: pool3 rounds up (ceil mode) so a 300 input gives a
38x38 conv4_3; pool5 becomes 3x3 stride 1; fc6 and fc7 become convolutions,
conv6 atrous (3x3, dilation 6, 1024 channels) and conv7 (1x1, 1024), with
weights subsampled ("decimated") from the fully connected layers; conv4_3's
output is L2-normalised per position and rescaled by a learnable per-channel
factor initialised at 20, since its activations are much larger than later ones.

Layer names follow torchvision's ``vgg16().features`` indices so an ImageNet
state dict loads by name (see :func:`convert_vgg16_imagenet`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# torchvision vgg16 "D" configuration; "M" is max pooling.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_CONV4_3_INDEX = 22  # index of conv4_3's ReLU in vgg16().features


class L2Norm(nn.Module):
    """Normalise each spatial position to unit L2 norm over channels, then scale per channel."""

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, p=2.0, dim=1, eps=self.eps) * self.weight.view(1, -1, 1, 1)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    pools = 0
    for v in _VGG16_CFG:
        if v == "M":
            pools += 1
            # pool3 rounds up: 75 -> 38 for a 300 input (the paper's 38x38 conv4_3).
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=(pools == 3)))
        else:
            layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = v
    return nn.Sequential(*layers)


class VGG16Reduced(nn.Module):
    """Returns ``[conv4_3 (L2-normalised), conv7]``: 512 and 1024 channels, strides 8 and 16."""

    out_channels = (512, 1024)

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_features()  # conv1_1 ... conv5_3 (+ReLU), same indices as torchvision
        self.pool5 = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)
        self.conv7 = nn.Conv2d(1024, 1024, kernel_size=1)
        self.l2norm = L2Norm(512, scale=20.0)

    def frozen_modules(self, n: int) -> list[nn.Module]:
        """The first ``n`` convolutions (the paper's fine-tuning freezes none; 4 = conv1 and conv2)."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        return convs[:n]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.features[: _CONV4_3_INDEX + 1](x)
        conv4_3 = self.l2norm(x)
        x = self.features[_CONV4_3_INDEX + 1 :](x)
        x = F.relu(self.conv6(self.pool5(x)), inplace=True)
        conv7 = F.relu(self.conv7(x), inplace=True)
        return [conv4_3, conv7]


def decimate(t: Tensor, steps: list[int | None]) -> Tensor:
    """Keep every ``steps[d]``-th element along dimension ``d`` (``None`` keeps all)."""
    for dim, step in enumerate(steps):
        if step is not None:
            t = t.index_select(dim, torch.arange(0, t.shape[dim], step, device=t.device))
    return t


def convert_vgg16_imagenet(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Turn a torchvision-layout ImageNet VGG16 state dict into :class:`VGG16Reduced` weights.

    ``features.*`` copy over unchanged. fc6 (``classifier.0``, 4096 x 25088) is
    viewed as a 7x7 convolution and decimated to 1024 x 512 x 3 x 3 (every 4th
    output, every 3rd tap); with dilation 6 it keeps fc6's receptive field.
    fc7 (``classifier.3``, 4096 x 4096) becomes 1024 x 1024 x 1 x 1. The L2Norm
    scale is not in the file and stays at its initial value 20.
    """
    expected = {
        "classifier.0.weight": (4096, 25088),
        "classifier.0.bias": (4096,),
        "classifier.3.weight": (4096, 4096),
        "classifier.3.bias": (4096,),
    }
    ref = VGG16Reduced().state_dict()
    for key, shape in list(expected.items()) + [
        (k, tuple(v.shape)) for k, v in ref.items() if k.startswith("features.")
    ]:
        if key not in state_dict:
            raise KeyError(f"not a torchvision VGG16 state dict: missing {key!r}")
        if tuple(state_dict[key].shape) != shape:
            raise ValueError(
                f"not a torchvision VGG16 state dict: {key!r} has shape "
                f"{tuple(state_dict[key].shape)}, expected {shape}"
            )
    out: dict[str, Tensor] = OrderedDict((k, state_dict[k]) for k in ref if k.startswith("features."))
    fc6_w = state_dict["classifier.0.weight"].view(4096, 512, 7, 7)
    out["conv6.weight"] = decimate(fc6_w, [4, None, 3, 3])
    out["conv6.bias"] = decimate(state_dict["classifier.0.bias"], [4])
    fc7_w = state_dict["classifier.3.weight"].view(4096, 4096, 1, 1)
    out["conv7.weight"] = decimate(fc7_w, [4, 4, None, None])
    out["conv7.bias"] = decimate(state_dict["classifier.3.bias"], [4])
    out["l2norm.weight"] = ref["l2norm.weight"]
    return out
