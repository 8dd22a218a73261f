"""Weights users already have: torchvision's COCO ``ssd300_vgg16`` as a multibox model.

torchvision's SSD300 is the paper's network with its own choices, which the import
reproduces so the outputs are the same:

- prior scales 0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05 with cell steps of
  8, 16, 32, 64, 100 and 300 pixels, prior widths/heights capped at 1;
- inputs normalised as ``pixel - 255 * (0.48235, 0.45882, 0.40784)`` (no std);
- 91 logits: background + COCO's 90 category ids (10 of them unused, "N/A").

Key mapping (torchvision -> multibox)::

    backbone.features.N              -> backbone.features.N        conv1_1 .. conv4_3
    backbone.scale_weight            -> backbone.l2norm.weight
    backbone.extra.0.{1,3,5}         -> backbone.features.{24,26,28}  conv5_1 .. conv5_3
    backbone.extra.0.7.{1,3}         -> backbone.conv{6,7}         atrous fc6, fc7
    backbone.extra.{1..4}.{0,2}      -> extras.{0..3}.{0,2}        conv8_2 .. conv11_2
    head.{regression,classification}_head.module_list.K -> head.{regression,classification}.K

ImageNet backbones in torchvision layout are loaded by the model zoo itself
(``backbone_weights=`` of ``ssd300_vgg16`` and ``ssd_resnet*``).
"""

from __future__ import annotations

import os

from torch import Tensor

from ..models import SSD, create_model
from ..models.weights import read_state_dict

TORCHVISION_SSD300_KWARGS = {
    "priors": "torchvision",  # DefaultBoxGenerator's scales and steps, sizes capped at 1 (core.priors)
    "mean": [0.48235 * 255, 0.45882 * 255, 0.40784 * 255],
    "std": [1.0, 1.0, 1.0],
}

# COCO category names by id 1..90 ("N/A" for the ids COCO does not use).
COCO91_NAMES = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "N/A",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "N/A",
    "backpack",
    "umbrella",
    "N/A",
    "N/A",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "N/A",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "N/A",
    "dining table",
    "N/A",
    "N/A",
    "toilet",
    "N/A",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "N/A",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]


def _rename(key: str) -> str | None:
    parts = key.split(".")
    if key == "backbone.scale_weight":
        return "backbone.l2norm.weight"
    if parts[:2] == ["backbone", "features"]:
        return key
    if parts[:2] == ["backbone", "extra"]:
        block = int(parts[2])
        if block == 0:
            if parts[3] in ("1", "3", "5"):
                return f"backbone.features.{23 + int(parts[3])}.{parts[4]}"
            if parts[3] == "7" and parts[4] in ("1", "3"):
                return f"backbone.conv{6 if parts[4] == '1' else 7}.{parts[5]}"
            return None
        return f"extras.{block - 1}.{parts[3]}.{parts[4]}"
    if parts[0] == "head" and parts[2] == "module_list":
        kind = {"regression_head": "regression", "classification_head": "classification"}.get(parts[1])
        return f"head.{kind}.{parts[3]}.{parts[4]}" if kind else None
    return None


def convert_torchvision_ssd300(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision ``ssd300_vgg16`` state dict into multibox ``ssd300_vgg16`` keys.
    Raises ``KeyError`` naming any key that has no place."""
    out = {}
    unknown = []
    for key, value in state_dict.items():
        new = _rename(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise KeyError(
            f"not a torchvision ssd300_vgg16 state dict: no place for {unknown[:5]}"
            + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        )
    return out


def ssd300_from_torchvision(state_dict: dict[str, Tensor] | str | os.PathLike) -> tuple[SSD, list[str]]:
    """A multibox ``ssd300_vgg16`` equal to torchvision's, with its class names (COCO ids 1..90)."""
    if not isinstance(state_dict, dict):
        state_dict = read_state_dict(state_dict)
    converted = convert_torchvision_ssd300(state_dict)
    cls_bias = converted.get("head.classification.0.bias")
    if cls_bias is None or cls_bias.shape[0] % 4:
        raise KeyError("not a torchvision ssd300_vgg16 state dict: no classification head")
    num_classes = cls_bias.shape[0] // 4 - 1
    model = create_model("ssd300_vgg16", num_classes=num_classes, **TORCHVISION_SSD300_KWARGS)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise KeyError(
            f"torchvision ssd300_vgg16 weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    names = COCO91_NAMES if num_classes == 90 else [f"class{i}" for i in range(1, num_classes + 1)]
    return model, list(names)


def import_torchvision_ssd300(weights: str | os.PathLike, out: str | os.PathLike) -> str:
    """Convert a torchvision ``ssd300_vgg16`` weights file into a multibox checkpoint."""
    from .checkpoint import atomic_save

    model, names = ssd300_from_torchvision(weights)
    atomic_save(
        {
            "model": model.state_dict(),
            "model_name": "ssd300_vgg16",
            "model_kwargs": dict(TORCHVISION_SSD300_KWARGS),
            "class_names": names,
            "source": f"torchvision ssd300_vgg16 weights {os.path.basename(os.fspath(weights))}",
        },
        out,
    )
    return os.fspath(out)
