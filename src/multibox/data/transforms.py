"""SSD data augmentation (paper section 2.2 "Data augmentation" and 3.6), on uint8 with OpenCV.

Training samples go through, in order:

1. **zoom out** (p = 0.5): the image is placed at a random spot of a canvas up
   to ``max_expand`` (4x) its size, filled with the model's mean colour;
2. **random crop**: a mode is drawn from {whole image, min IoU 0.1, 0.3, 0.5,
   0.7, 0.9, any}; crops of 0.3-1 of each side with aspect ratio in [1/2, 2] are
   tried until one overlaps some object by at least the minimum IoU; the
   objects whose centres fall inside are kept and clipped to it;
3. **horizontal flip** (p = 0.5) and, off by default, **vertical flip** (``vflip_prob``:
   for data without an up, such as microscopy or aerial images);
4. **resize** to the network input;
5. **photometric distortion**: brightness, contrast, saturation, hue (each p = 0.5,
   contrast before or after the HSV steps) and a random channel order (p = 0.5).

Steps 1-4 are geometric and compose into one affine map from the original
image to the output, so they run as a single ``cv2.warpAffine`` on the original
pixels: the zoom-out canvas is never materialised and no intermediate image is
resized. Photometric distortion runs last, on the small output image, through
lookup tables (it therefore also tints the mean-filled border, which only
varies the padding colour). Randomness comes from a generator seeded by
``(seed, epoch, index)``, so a sample is the same whichever worker makes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..core.boxes import box_iou_numpy
from .base import DetectionDataset


@dataclass
class AugmentConfig:
    """Training augmentation settings (paper defaults)."""

    expand_prob: float = 0.5
    max_expand: float = 4.0
    crop: bool = True
    min_ious: tuple = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -1.0)  # None: keep whole image; -1: any crop
    crop_trials: int = 50
    min_crop_scale: float = 0.3
    flip_prob: float = 0.5
    vflip_prob: float = 0.0  # vertical flip; drawn only when > 0, so other settings keep their draws
    photometric: bool = True
    brightness: float = 32.0
    contrast: tuple = (0.5, 1.5)
    saturation: tuple = (0.5, 1.5)
    hue: float = 18.0  # degrees
    channel_swap_prob: float = 0.5


def random_crop_window(
    rng: np.random.Generator, width: float, height: float, boxes: np.ndarray, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Pick a crop window ``[x1, y1, x2, y2]`` of a ``width x height`` image and the mask of
    boxes kept (centre inside). Returns the whole image when the drawn mode says so or no trial fits."""
    whole = np.array([0.0, 0.0, width, height])
    keep_all = np.ones(len(boxes), dtype=bool)
    mode = cfg.min_ious[rng.integers(len(cfg.min_ious))]
    if mode is None or not cfg.crop:
        return whole, keep_all
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for _ in range(cfg.crop_trials):
        w = rng.uniform(cfg.min_crop_scale, 1.0) * width
        h = rng.uniform(cfg.min_crop_scale, 1.0) * height
        if not 0.5 <= h / w <= 2.0:
            continue
        x = rng.uniform(0, width - w)
        y = rng.uniform(0, height - h)
        win = np.array([x, y, x + w, y + h])
        if len(boxes) == 0:
            return win, keep_all
        if box_iou_numpy(win[None], boxes).max() < mode:
            continue
        inside = (
            (centres[:, 0] > win[0]) & (centres[:, 0] < win[2]) & (centres[:, 1] > win[1]) & (centres[:, 1] < win[3])
        )
        if not inside.any():
            continue
        return win, inside
    return whole, keep_all


def _photometric(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Brightness/contrast/saturation/hue/channel-order jitter on a uint8 RGB image."""

    x = np.arange(256, dtype=np.float32)
    brightness = rng.uniform(-cfg.brightness, cfg.brightness) if rng.random() < 0.5 else 0.0
    contrast = rng.uniform(*cfg.contrast) if rng.random() < 0.5 else 1.0
    contrast_first = rng.random() < 0.5
    sat = rng.uniform(*cfg.saturation) if rng.random() < 0.5 else 1.0
    hue = rng.uniform(-cfg.hue, cfg.hue) if rng.random() < 0.5 else 0.0
    lut = x + brightness
    if contrast_first:
        lut = lut * contrast
    img = cv2.LUT(img, np.clip(lut, 0, 255).astype(np.uint8))
    if sat != 1.0 or hue != 0.0:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)  # hue in 0..255 for a full turn
        h_lut = ((np.arange(256) + hue * 256 / 360) % 256).astype(np.uint8)
        s_lut = np.clip(np.arange(256) * sat, 0, 255).astype(np.uint8)
        hsv[..., 0] = cv2.LUT(hsv[..., 0], h_lut)
        hsv[..., 1] = cv2.LUT(hsv[..., 1], s_lut)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    if not contrast_first and contrast != 1.0:
        img = cv2.LUT(img, np.clip(x * contrast, 0, 255).astype(np.uint8))
    if rng.random() < cfg.channel_swap_prob:
        img = np.ascontiguousarray(img[..., rng.permutation(3)])
    return img


class SSDTransform:
    """Sample dict -> network-ready sample: image ``(3, S, S)`` uint8 tensor, boxes in ``[0, 1]``.

    Args:
        size: network input ``(h, w)``.
        train: apply augmentation (else only resize).
        fill: RGB colour of the zoom-out canvas (the model's mean, 0-255).
        seed: base seed; ``set_epoch`` changes the draws each epoch.
    """

    def __init__(
        self,
        size: tuple[int, int],
        train: bool = True,
        fill=(124, 116, 104),
        config: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.train = train
        self.fill = tuple(float(v) for v in fill)
        self.cfg = config or AugmentConfig()
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def geometry(self, rng: np.random.Generator, width: int, height: int, boxes: np.ndarray):
        """The affine map (2x3) from original pixels to output pixels (a negative diagonal entry
        mirrors that axis), and which boxes survive."""
        cfg = self.cfg
        out_h, out_w = self.size
        left = top = 0.0
        cw, ch = float(width), float(height)
        if self.train and rng.random() < cfg.expand_prob and cfg.max_expand > 1:
            r = rng.uniform(1.0, cfg.max_expand)
            cw, ch = width * r, height * r
            left, top = rng.uniform(0, cw - width), rng.uniform(0, ch - height)
        shifted = boxes + np.array([left, top, left, top], dtype=boxes.dtype)
        if self.train:
            win, keep = random_crop_window(rng, cw, ch, shifted, cfg)
        else:
            win, keep = np.array([0.0, 0.0, cw, ch]), np.ones(len(boxes), dtype=bool)
        sx, sy = out_w / (win[2] - win[0]), out_h / (win[3] - win[1])
        flip = self.train and rng.random() < cfg.flip_prob
        # x_out = sx * (x + left - win_x1), optionally mirrored: out_w - x_out (y likewise)
        m = np.array([[sx, 0.0, sx * (left - win[0])], [0.0, sy, sy * (top - win[1])]])
        if flip:
            m[0] = [-sx, 0.0, out_w - sx * (left - win[0])]
        if self.train and cfg.vflip_prob > 0 and rng.random() < cfg.vflip_prob:
            m[1] = [0.0, -sy, out_h - sy * (top - win[1])]
        return m, keep

    def __call__(self, sample: dict, index: int = 0) -> dict:
        img = sample["image"]
        h, w = img.shape[:2]
        boxes = sample["boxes"].astype(np.float64).reshape(-1, 4)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        m, keep = self.geometry(rng, w, h, boxes)
        out_h, out_w = self.size
        if not self.train:
            out = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
        else:
            # m maps continuous coordinates (pixel i covers [i, i+1)); warpAffine works on pixel
            # indices (centres at integers): u = i + 0.5 turns the translation b into b + 0.5 a - 0.5
            mi = m.copy()
            mi[0, 2] += 0.5 * m[0, 0] - 0.5
            mi[1, 2] += 0.5 * m[1, 1] - 0.5
            out = cv2.warpAffine(
                img, mi, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=self.fill
            )
        b = boxes[keep]
        x = b[:, [0, 2]] * m[0, 0] + m[0, 2]
        y = b[:, [1, 3]] * m[1, 1] + m[1, 2]
        if m[0, 0] < 0:  # mirrored: the left edge comes from x2
            x = x[:, ::-1]
        if m[1, 1] < 0:
            y = y[:, ::-1]
        nb = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1) if len(b) else np.zeros((0, 4))
        nb = np.clip(nb, 0, [out_w, out_h, out_w, out_h]) / np.array([out_w, out_h, out_w, out_h])
        labels = sample["labels"][keep]
        difficult = sample["difficult"][keep]
        valid = (nb[:, 2] - nb[:, 0] > 1e-3) & (nb[:, 3] - nb[:, 1] > 1e-3)
        if self.train:  # difficult / crowd objects are evaluated leniently, not learned
            valid &= ~difficult
        if self.train and self.cfg.photometric:
            out = _photometric(out, rng, self.cfg)
        result = dict(sample)
        result.update(
            image=torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1),
            boxes=torch.from_numpy(nb[valid].astype(np.float32)),
            labels=torch.from_numpy(labels[valid].astype(np.int64)),
            difficult=torch.from_numpy(difficult[valid].astype(bool)),
        )
        return result


def collate(samples: list[dict]) -> dict:
    """Stack images ``(N, 3, S, S)`` uint8 and pad targets: ``boxes (N, M, 4)``, ``labels (N, M)``
    (0 = padding); metadata (ids, paths, original sizes) stays in lists.

    The images keep the samples' pixel-interleaved layout (``torch.channels_last`` strides):
    stacking is then a plain copy, and so is the float conversion the model's
    channels-last input needs."""
    n = len(samples)
    m = max((len(s["labels"]) for s in samples), default=0)
    boxes = torch.zeros(n, m, 4)
    labels = torch.zeros(n, m, dtype=torch.long)
    difficult = torch.zeros(n, m, dtype=torch.bool)
    for i, s in enumerate(samples):
        k = len(s["labels"])
        boxes[i, :k], labels[i, :k], difficult[i, :k] = s["boxes"], s["labels"], s["difficult"]
    return {
        "images": torch.stack([s["image"].permute(1, 2, 0) for s in samples]).permute(0, 3, 1, 2),
        "boxes": boxes,
        "labels": labels,
        "difficult": difficult,
        "image_ids": [s["image_id"] for s in samples],
        "paths": [s["path"] for s in samples],
        "sizes": torch.tensor([s["size"] for s in samples], dtype=torch.float32),
    }


def set_transform_epoch(dataset: DetectionDataset, epoch: int) -> None:
    t = getattr(dataset, "transform", None)
    if hasattr(t, "set_epoch"):
        t.set_epoch(epoch)
