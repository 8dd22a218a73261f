"""ResNet-18/34/50 feature extractors, written without torchvision but with its
parameter names, so a torchvision-layout ImageNet state dict loads directly
(:func:`load_resnet_weights`). The classifier (``fc``) is not part of the
extractor; the output is ``layer4`` (stride 32).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..weights import check_state_dict


class BasicBlock(nn.Module):
    expansion = 1
    conv_bn_acts = (("conv1", "bn1", "relu1"),)  # for folding and fusing in inference copies
    conv_bn_pairs = (("conv2", "bn2"),)

    def __init__(self, in_ch: int, ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu1 = nn.ReLU(inplace=True)  # its own module, so that it can fuse into conv1
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.downsample = _downsample(in_ch, ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4
    conv_bn_acts = (("conv1", "bn1", "relu1"), ("conv2", "bn2", "relu2"))
    conv_bn_pairs = (("conv3", "bn3"),)

    def __init__(self, in_ch: int, ch: int, stride: int = 1) -> None:
        super().__init__()
        out = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)  # stride on the 3x3 (torchvision "v1.5")
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu1, self.relu2, self.relu = nn.ReLU(inplace=True), nn.ReLU(inplace=True), nn.ReLU(inplace=True)
        self.downsample = _downsample(in_ch, out, stride)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def _downsample(in_ch: int, out_ch: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_ch == out_ch:
        return None
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


_DEPTHS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """ResNet trunk up to ``layer4``; ``forward`` returns the stride-32 feature map."""

    conv_bn_acts = (("conv1", "bn1", "relu"),)

    def __init__(self, depth: int = 34) -> None:
        super().__init__()
        if depth not in _DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose from {sorted(_DEPTHS)}")
        block, layers = _DEPTHS[depth]
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        stages = []
        for i, (n, ch) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(block(in_ch, ch, stride))
                in_ch = ch * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def frozen_modules(self, n: int) -> list[nn.Module]:
        """The stem and the first ``n - 1`` of layer1..layer4 (n >= 1)."""
        if n <= 0:
            return []
        return [self.conv1, self.bn1, self.layer1, self.layer2, self.layer3, self.layer4][: n + 1]

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def load_resnet_weights(model: ResNet, state_dict: dict[str, Tensor]) -> None:
    """Load a torchvision-layout ResNet ImageNet state dict; ``fc.*`` is ignored.

    Every other key must match by name and shape, else a ``ValueError`` lists what differs.
    """
    sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
    check_state_dict(model.state_dict(), sd, f"not a torchvision ResNet-{model.depth} state dict")
    model.load_state_dict(sd, strict=True)
