"""Image input handling shared by every runtime: paths, arrays and tensors to RGB arrays,
and batches resized to a model's input.

An image may be a file path, an ``(H, W, 3)`` uint8 RGB array (``(H, W)`` grey and
``(H, W, 4)`` RGBA are accepted), a ``(3, H, W)`` tensor (uint8 0-255, or float in 0-1), or a
PIL image (any mode).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.image import image_size, read_image

ImageInput = str | os.PathLike | np.ndarray | Tensor | Image.Image


def reading_limit(input_size: Sequence[int]) -> int:
    """The longest side at which images are read for a model of ``input_size`` (h, w): four
    times its input, at least 2048 px; larger files are decoded at reduced size."""
    return max(2048, 4 * max(input_size))


def to_rgb_array(image: ImageInput, max_side: int | None = None) -> np.ndarray:
    """Any supported input to an ``(H, W, 3)`` uint8 RGB array (with a clear error otherwise);
    a file larger than ``max_side`` is read reduced to it (see :func:`original_size`)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, max_side=max_side)
    if _is_pil(image):
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] != 3:
            raise ValueError(f"image tensors must be (3, H, W), got {tuple(t.shape)}")
        if t.is_floating_point():
            if not torch.isfinite(t).all():
                raise ValueError("image tensor contains NaN or inf")
            t = (t.clamp(0, 1) * 255).round()
        return np.ascontiguousarray(t.to(torch.uint8).permute(1, 2, 0).numpy())
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ValueError(f"image arrays must be (H, W, 3) RGB, got shape {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8 (0-255), got {image.dtype}")
        return np.ascontiguousarray(image[..., :3])
    raise TypeError(
        f"unsupported image type {type(image).__name__}; give a path, a numpy array, a tensor or a PIL image"
    )


def image_list(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """One image or many, as a list: a path, an array or a ``(3, H, W)`` tensor is one image;
    a ``(N, 3, H, W)`` tensor or any other iterable is many."""
    if _is_pil(images):
        return [images]
    if isinstance(images, (str, os.PathLike, np.ndarray, Tensor)) and not (
        isinstance(images, Tensor) and images.ndim == 4
    ):
        return [images]
    return list(images)


def resize_batch(images: Sequence[np.ndarray], size: tuple[int, int]) -> Tensor:
    """Resize RGB uint8 arrays to ``size`` (h, w) and stack into a ``(N, 3, h, w)`` uint8 tensor."""
    h, w = size
    out = np.empty((len(images), h, w, 3), dtype=np.uint8)
    for i, im in enumerate(images):
        out[i] = cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


def original_size(image: ImageInput, array: np.ndarray) -> tuple[int, int]:
    """``(height, width)`` of ``image`` as given: a file's from its header (its ``array`` may have
    been read reduced), else the array's."""
    if isinstance(image, (str, os.PathLike)):
        return image_size(image)
    return tuple(array.shape[:2])


def _is_pil(image) -> bool:
    return isinstance(image, Image.Image)
