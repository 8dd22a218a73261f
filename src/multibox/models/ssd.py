"""The SSD detector module: backbone -> extra layers -> heads, plus post-processing.

One forward pass, top to bottom:

1. normalise the ``(N, 3, H, W)`` float RGB image (0-255) with the backbone's mean/std;
2. the backbone returns its feature maps; those listed in ``backbone_maps`` go to
   the head, and the last one feeds the chain of extra layers, each adding a map;
3. the head predicts ``(N, P, 4)`` offsets and ``(N, P, K)`` logits over all maps.

:meth:`SSD.predict` adds decoding, score filtering, per-class NMS and top-k
(see :func:`multibox.nms.postprocess`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..core.boxes import DEFAULT_VARIANCES, decode_boxes, tanh_offsets
from ..core.postprocess import Detections, postprocess
from ..core.priors import FeatureMapPriors, make_priors
from ..core.tta import (
    TTA_MODES,
    check_tta,
    check_views,
    merge_views,
    mirror_images,
    mirror_partners,
    probabilities,
)
from .heads import SSDHead


@dataclass
class PostprocessConfig:
    """Post-processing defaults (the paper's evaluation settings)."""

    score_threshold: float = 0.01
    iou_threshold: float = 0.45
    max_detections: int = 200
    candidates_per_class: int | None = 400
    tta: str = "none"  # test-time mirroring: none | hflip | hvflip | dihedral (see multibox.tta)
    box_voting: bool = False  # kept boxes become the score-weighted mean of what they suppress (multibox.nms)


class SSD(nn.Module):
    """Single Shot MultiBox Detector.

    Args:
        backbone: module returning a list of feature maps.
        extras: modules applied in sequence to the backbone's last map; each output is a map.
        head: :class:`SSDHead` over the selected backbone maps followed by the extra maps.
        prior_maps: prior shapes per feature map, in head order.
        num_classes: object classes ``C`` (labels ``1..C``; background is implicit).
        image_size: ``(height, width)`` the model expects.
        score_type: ``"softmax"`` (logits have a background column) or ``"sigmoid"``.
        mean, std: per-channel normalisation in 0-255 pixel units.
        backbone_maps: indices of backbone outputs fed to the head.
        clip_priors: clip priors to the image.
    """

    def __init__(
        self,
        backbone: nn.Module,
        extras: Sequence[nn.Module],
        head: SSDHead,
        prior_maps: Sequence[FeatureMapPriors],
        num_classes: int,
        image_size: tuple[int, int],
        score_type: str = "softmax",
        mean: Sequence[float] = (123.675, 116.28, 103.53),
        std: Sequence[float] = (58.395, 57.12, 57.375),
        backbone_maps: Sequence[int] = (0, 1),
        clip_priors: bool | str = False,
        variances: tuple[float, float] = DEFAULT_VARIANCES,
        postprocess_config: PostprocessConfig | None = None,
        box_coding: str = "ssd",
    ) -> None:
        super().__init__()
        if score_type not in ("softmax", "sigmoid"):
            raise ValueError(f"score_type must be 'softmax' or 'sigmoid', got {score_type!r}")
        expected_logits = num_classes + 1 if score_type == "softmax" else num_classes
        if head.num_logits != expected_logits:
            raise ValueError(f"head has {head.num_logits} logits per prior, expected {expected_logits}")
        self.backbone = backbone
        self.extras = nn.ModuleList(extras)
        self.head = head
        self.prior_maps = list(prior_maps)
        self.num_classes = num_classes
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.score_type = score_type
        self.backbone_maps = tuple(backbone_maps)
        self.variances = variances
        if box_coding not in ("ssd", "tanh"):
            raise ValueError(f"box_coding must be 'ssd' or 'tanh', got {box_coding!r}")
        self.box_coding = box_coding  # tanh: the walkthrough's bounded offsets (core.boxes.tanh_offsets)
        self.postprocess_config = postprocess_config or PostprocessConfig()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("priors", make_priors(self.prior_maps, clip=clip_priors), persistent=False)
        check_views(self.prior_maps, self.postprocess_config.tta)  # a mode these maps cannot mirror fails here

    def freeze_backbone(self, n: int) -> int:
        """Freeze ``n`` backbone units from the input side (see the backbone's ``frozen_modules``):
        no gradients, and their BatchNorms stay in eval mode. Returns the parameters frozen."""
        modules = self.backbone.frozen_modules(n) if hasattr(self.backbone, "frozen_modules") else []
        if n > 0 and not modules:
            raise ValueError(f"{type(self.backbone).__name__} does not support freezing")
        self._frozen = modules
        count = 0
        for m in modules:
            for p in m.parameters():
                p.requires_grad_(False)
                count += p.numel()
        self.train(self.training)
        return count

    def class_predictor_names(self) -> list[str]:
        """State-dict names of the last layer of each classification predictor: the tensors
        whose meaning is the class list (re-initialised when fine-tuning on other classes)."""
        names = []
        for i, block in enumerate(self.head.classification):
            last = len(block) - 1 if isinstance(block, nn.Sequential) else None
            prefix = f"head.classification.{i}." + (f"{last}." if last is not None else "")
            names += [prefix + n for n, _ in (block[last] if last is not None else block).named_parameters()]
        return names

    def freeze_depthwise(self, min_kernel: int = 5) -> int:
        """Freeze the backbone's depthwise kernels of at least ``min_kernel`` x ``min_kernel``
        (their BatchNorms and every pointwise layer still learn). Returns the parameters frozen.

        On CPUs the weight gradient of a 5x5 depthwise convolution costs several times its
        forward pass (oneDNN has a fast kernel for 3x3 only), so freezing them saves much of a
        training step at the same validation mAP on BCCD (docs/benchmarks.md, docs/experiments.md).
        """
        count = 0
        for m in self.backbone.modules():
            if (
                isinstance(m, nn.Conv2d)
                and m.groups > 1
                and m.groups == m.in_channels == m.out_channels
                and min(m.kernel_size) >= min_kernel
            ):
                m.weight.requires_grad_(False)
                count += m.weight.numel()
        return count

    def freeze_batchnorm(self) -> None:
        """Keep every BatchNorm layer in eval mode (running statistics, no updates)."""
        self._frozen = list(getattr(self, "_frozen", [])) + [
            m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]
        self.train(self.training)

    def train(self, mode: bool = True) -> SSD:
        super().train(mode)
        for m in getattr(self, "_frozen", []):
            m.eval()
        return self

    @property
    def num_priors(self) -> int:
        return self.priors.shape[0]

    def feature_maps(self, images: Tensor) -> list[Tensor]:
        x = torch.sub(images, self.mean).div_(self.std)  # one new tensor, same numbers
        maps = self.backbone(x)
        if isinstance(maps, Tensor):
            maps = [maps]
        selected = [maps[i] for i in self.backbone_maps]
        x = maps[-1]
        for layer in self.extras:
            x = layer(x)
            selected.append(x)
        return selected

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images (N, 3, H, W)`` float RGB in 0-255 -> ``(offsets (N, P, 4), logits (N, P, K))``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W), got {tuple(images.shape)}")
        maps = self.feature_maps(images)
        sizes = [tuple(m.shape[-2:]) for m in maps]
        expected = [pm.size for pm in self.prior_maps]
        if sizes != expected:
            raise ValueError(
                f"feature map sizes {sizes} do not match the priors {expected}; this model expects "
                f"{self.image_size[0]}x{self.image_size[1]} inputs, got {images.shape[-2]}x{images.shape[-1]}"
            )
        loc, logits = self.head(maps)
        if self.box_coding == "tanh":
            loc = tanh_offsets(loc, self.variances)
        return loc, logits

    @torch.no_grad()
    def predict(
        self,
        images: Tensor,
        image_sizes: Tensor | None = None,
        score_threshold: float | None = None,
        iou_threshold: float | None = None,
        max_detections: int | None = None,
        tta: str | None = None,
        box_voting: bool | None = None,
    ) -> Detections:
        """Detections for a batch; boxes in pixels of ``image_sizes`` ``(N, 2)`` (h, w) if given,
        else in pixels of the network input. ``tta`` (default: the model's
        ``postprocess_config.tta``) averages predictions over mirrored views; ``box_voting``
        (default: the model's setting) moves kept boxes to the mean of what they suppress."""
        cfg = self.postprocess_config
        loc, logits = self.forward_tta(images, tta)
        if image_sizes is None:
            image_sizes = torch.tensor([images.shape[-2:]], device=images.device).expand(images.shape[0], 2)
        return postprocess(
            loc,
            logits,
            self.priors,
            score_type=self.score_type,
            score_threshold=cfg.score_threshold if score_threshold is None else score_threshold,
            iou_threshold=cfg.iou_threshold if iou_threshold is None else iou_threshold,
            max_detections=cfg.max_detections if max_detections is None else max_detections,
            candidates_per_class=cfg.candidates_per_class,
            image_sizes=image_sizes,
            variances=self.variances,
            box_voting=cfg.box_voting if box_voting is None else box_voting,
        )

    def forward_tta(self, images: Tensor, tta: str | None = None, decoded: bool = False) -> tuple[Tensor, Tensor]:
        """The forward pass, averaged over mirrored views when ``tta`` (default: the model's
        ``postprocess_config.tta``) asks for them (see :mod:`multibox.tta`). ``decoded``:
        ``(boxes, probabilities)`` (xyxy image fractions, unclipped) instead of ``(offsets, logits)``."""
        mode = check_tta(self.postprocess_config.tta if tta is None else tta)
        if mode == "none":
            loc, logits = self(images)
            if not decoded:
                return loc, logits
            return decode_boxes(loc.float(), self.priors, self.variances), probabilities(
                logits.float(), self.score_type
            )
        flips = TTA_MODES[mode]
        inputs = [images] + [mirror_images(images, *flip) for flip in flips]
        partners = [None] + [mirror_partners(self.prior_maps, *flip).to(images.device) for flip in flips]
        if all(v.shape == images.shape for v in inputs):  # one pass over all views: larger, faster batches
            loc, logits = self(torch.cat(inputs))
            v = len(inputs)  # (a reshape keeps the batch dynamic in both ONNX exporters; chunk would not)
            views = list(
                zip(loc.reshape(v, -1, *loc.shape[1:]).unbind(0), logits.reshape(v, -1, *logits.shape[1:]).unbind(0))
            )
        else:  # transposed views of a non-square input
            views = [self(v) for v in inputs]
        flips = [(False, False, False), *flips]
        return merge_views(views, partners, flips, self.priors, self.score_type, self.variances, encode=not decoded)
