"""Image reading: any common file to an upright RGB uint8 ``(H, W, 3)`` array.

Grayscale, RGBA (alpha dropped), palette, 16-bit and CMYK images become 8-bit
RGB; EXIF orientation is applied so the pixels are upright, as a viewer shows
them (annotation tools label the displayed image). The header is checked
before decoding so an image too large to decode safely is refused.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image, ImageOps

# Refuse to decode images above this many pixels (about 16k x 16k): a malicious
# or corrupt header could otherwise claim gigabytes of memory.
MAX_IMAGE_PIXELS = 256_000_000

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

cv2.setNumThreads(1)  # data loader workers parallelise across images


class ImageReadError(ValueError):
    """An image file is missing, unreadable or unsafe to decode; the message names the file."""


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image as displayed (after EXIF rotation), reading only the header."""
    path = os.fspath(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: image file not found") from None
    except Exception as e:
        raise ImageReadError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def read_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read ``path`` as an upright RGB uint8 array of shape ``(H, W, 3)``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(f"{path}: image file not found")
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"{path}: image file is empty (0 bytes)")
    h, w = image_size(path)
    if h * w > max_pixels:
        raise ImageReadError(
            f"{path}: image is {w}x{h} = {h * w} pixels, above the safety limit of {max_pixels} "
            "(possible decompression bomb); raise max_pixels if the image is genuine"
        )
    # OpenCV decodes JPEG/PNG fastest and applies EXIF orientation with IMREAD_COLOR.
    data = np.fromfile(path, dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is not None and bgr.shape[:2] == (h, w):
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return _read_with_pillow(path)


def _read_with_pillow(path: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = (arr / max(arr.max(), 1.0) * 255.0).astype(np.uint8)
                return np.repeat(arr[..., None], 3, axis=2)
            return np.ascontiguousarray(np.asarray(im.convert("RGB")))
    except Exception as e:
        raise ImageReadError(f"{path}: could not decode image ({type(e).__name__}: {e})") from None
