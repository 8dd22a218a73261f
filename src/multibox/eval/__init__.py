"""Detection metrics: VOC AP (11-point and area) and COCO metrics, per-class reports."""

from .evaluator import EvalReport, Evaluator
from .voc import ClassResult, mean_ap, voc_ap

__all__ = ["Evaluator", "EvalReport", "ClassResult", "mean_ap", "voc_ap"]
