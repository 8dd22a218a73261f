"""Device names (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``) to ``torch.device``, checked.

    device = resolve_device("auto")   # cuda:LOCAL_RANK when a GPU is present, else cpu

A device this machine does not have is a ``ValueError`` that says which devices it has,
instead of an error from deep inside PyTorch at the first tensor moved there.
"""

from __future__ import annotations

import os

import torch


def available_devices() -> list[str]:
    """The device names this machine can run on, e.g. ``["cpu", "cuda:0"]``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto``: the GPU of this process (``LOCAL_RANK``) if there is one, else the CPU;
    any other name is checked against :func:`available_devices`."""
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(
            f"device {name!r} is not a device name; give auto, cpu, cuda, cuda:N or mps "
            f"(this machine: {', '.join(available_devices())})"
        ) from None
    have = available_devices()
    if device.type == "cuda":
        index = device.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} is not available on this machine (it has: {', '.join(have)})")
    elif device.type == "mps" and "mps" not in have:
        raise ValueError(f"device {name!r} is not available on this machine (it has: {', '.join(have)})")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} is not supported (this machine: {', '.join(have)})")
    return device
