import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("MULTIBOX_DATA", ROOT.parent / "shared" / "datasets"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# exports in tests use the quick TorchScript-based ONNX exporter (1.5 s, not 14 s); the tests
# that name an exporter check that the torch.export-based one, the default, gives the same graph
os.environ.setdefault("MULTIBOX_ONNX_EXPORTER", "legacy")


def dataset_dir(name: str) -> Path:
    """Path of a real dataset, or skip the test with the reason."""
    p = DATASETS / name
    if not p.is_dir():
        pytest.skip(f"dataset {name!r} not found at {p} (set MULTIBOX_DATA to its parent folder)")
    return p
