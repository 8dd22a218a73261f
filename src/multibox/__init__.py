"""multibox: the Single Shot MultiBox Detector (SSD) in PyTorch."""
from .models import SSD, create_model, list_models

__version__ = "0.1.0"

__all__ = ["SSD", "create_model", "list_models", "Detector", "__version__"]


def __getattr__(name: str):
    # Detector pulls in image I/O (OpenCV/Pillow); import it lazily.
    if name == "Detector":
        from .inference.detector import Detector

        return Detector
    raise AttributeError(f"module 'multibox' has no attribute {name!r}")
