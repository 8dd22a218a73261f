"""Image reading: any common file to an upright RGB uint8 ``(H, W, 3)`` array.

Grayscale, RGBA (alpha dropped), palette, 16-bit and CMYK images become 8-bit
RGB; EXIF orientation is applied so the pixels are upright, as a viewer shows
them (annotation tools label the displayed image). The header is checked
before decoding so an image too large to decode safely is refused.
"""

from __future__ import annotations

import os
import warnings

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


def read_image(path: str | os.PathLike, max_pixels: int = MAX_IMAGE_PIXELS, max_side: int | None = None) -> np.ndarray:
    """Read ``path`` as an upright RGB uint8 array of shape ``(H, W, 3)``.

    With ``max_side``, an image whose longer side exceeds it comes back reduced to fit it,
    decoded at reduced size where the format allows (JPEG: 1/2, 1/4 or 1/8 scale in the
    decoder), so a huge photo never costs its full-size pixels; compare the array's shape with
    :func:`image_size` for the scale."""
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
    if max_side is not None and max(h, w) > max_side:
        return _read_reduced(path, h, w, max_side)
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


_REDUCED = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}


def _read_reduced(path: str, h: int, w: int, max_side: int) -> np.ndarray:
    """An ``(h, w)`` image read to fit ``max_side``: JPEGs decoded at 1/2, 1/4 or 1/8 scale by the
    decoder itself; other formats decoded one at a time in their own mode (one byte per pixel
    for grey or palette images), reduced, then converted to RGB."""
    factor = max([f for f in (2, 4, 8) if max(h, w) / f >= max_side] or [1])
    image = None
    with Image.open(path) as im:
        is_jpeg, narrow = im.format == "JPEG", im.mode in ("1", "L", "LA", "P", "PA", "I;16", "I;16B", "I;16L", "I")
    if factor > 1 and not narrow:  # OpenCV: JPEG scaled in the decoder, others decoded once then reduced
        bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), _REDUCED[factor])
        if bgr is not None and abs(bgr.shape[0] - h / factor) <= 1 and abs(bgr.shape[1] - w / factor) <= 1:
            image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        del bgr
    if image is None:
        try:
            with Image.open(path) as im:
                if is_jpeg:
                    im.draft("RGB", (im.size[0] // factor, im.size[1] // factor))
                with warnings.catch_warnings():  # the size was checked against max_pixels above
                    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                    im.load()
                exif = im.getexif()
                image = np.asarray(_reduce_in_bands(im, factor))
                image = np.asarray(_apply_orientation(image, exif.get(0x0112, 1)))
        except Exception as e:
            raise ImageReadError(f"{path}: could not decode image ({type(e).__name__}: {e})") from None
    scale = max_side / max(image.shape[:2])
    if scale < 1:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image)


def _reduce_in_bands(im: Image.Image, factor: int, band: int = 1024) -> Image.Image:
    """A loaded image reduced ``factor`` times, as ``L`` or ``RGB``, converting a band of rows at a
    time (palette, 16-bit or CMYK pixels never exist at full size in RGB)."""
    w, h = im.size
    mode = "L" if im.mode in ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I", "F") else "RGB"
    band -= band % factor
    top = 0
    out = Image.new(mode, (-(-w // factor), -(-h // factor)))
    peak = 1.0
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        peak = max(float(np.asarray(im).max()), 1.0)
    while top < h:
        part = im.crop((0, top, w, min(h, top + band)))
        if part.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            part = Image.fromarray((np.asarray(part, dtype=np.float32) / peak * 255.0).astype(np.uint8))
        elif part.mode != mode:
            part = part.convert(mode)
        if factor > 1:
            part = part.reduce(factor)
        out.paste(part, (0, top // factor))
        top += band
    return out


def _apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels of an ``(H, W[, 3])`` array turned upright for its EXIF orientation tag (1-8)."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](image)) if orientation in ops else image
