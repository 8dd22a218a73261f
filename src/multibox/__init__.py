"""multibox: the Single Shot MultiBox Detector (SSD) in PyTorch.

    import multibox
    model = multibox.create_model("ssdlite_effl0", num_classes=3)
    det = multibox.Detector.from_checkpoint("runs/demo/last.pt")
    preds = det.predict(["photo.jpg"])

Messages go to the ``multibox`` logger (silent unless the application configures logging;
:func:`multibox.cli.show_logs` shows them as the command line does). Process-wide settings
are never changed on import: call :func:`keep_freed_memory` to opt into the malloc tuning
the command line applies.
"""

import logging

from .models import SSD, create_model, list_models

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

# name -> module that defines it; imported on first use (these pull in image I/O, training, ...)
_LAZY = {
    "Detector": "multibox.inference.detector",
    "Prediction": "multibox.inference.results",
    "OnnxDetector": "multibox.inference.runtime",
    "Evaluator": "multibox.eval.evaluator",
    "EvalReport": "multibox.eval.evaluator",
    "Config": "multibox.config",
    "load_config": "multibox.config",
    "list_presets": "multibox.config",
    "Trainer": "multibox.engine.trainer",
    "keep_freed_memory": "multibox.memory",
}

__all__ = ["SSD", "create_model", "list_models", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'multibox' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
