"""Datasets, image reading, augmentation and loaders."""

from .image import ImageReadError, read_image

__all__ = ["ImageReadError", "read_image"]
