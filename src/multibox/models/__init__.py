"""Detector architectures. Use :func:`create_model` to build one by name."""

from .ssd import SSD, PostprocessConfig
from .zoo import create_model, list_models, offline_kwargs

__all__ = ["SSD", "PostprocessConfig", "create_model", "list_models", "offline_kwargs"]
