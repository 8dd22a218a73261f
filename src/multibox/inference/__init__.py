"""Using a trained detector: :class:`Detector` (checkpoints), image input handling, predicting
over files and videos, scoring a dataset, exports and their runtimes, weight interop."""

from .detector import Detector
from .results import Prediction

__all__ = ["Detector", "Prediction"]
