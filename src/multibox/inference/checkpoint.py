"""Checkpoints: atomic writes and safe reads.

A checkpoint is a plain dict of tensors and plain data (numbers, strings,
lists, dicts), so it loads with ``torch.load(weights_only=True)``: nothing in
it can run code. It holds everything needed to rebuild the detector (model
name and arguments, class names) and to resume training exactly.
"""

from __future__ import annotations

import os
import pickle
import tempfile

import torch

from ..models import SSD, create_model, offline_kwargs
from ..models.weights import check_state_dict


def atomic_save(obj: dict, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, flush to disk, then rename over ``path``:
    a crash leaves either the old file or the new one, never a torn one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; refuse anything that needs arbitrary unpickling."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused to load: the checkpoint contains objects other than tensors and plain data, "
            f"which could run arbitrary code when unpickled ({str(e).splitlines()[0]})"
        ) from e
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_name" not in ckpt:
        raise ValueError(f"{path}: not a multibox checkpoint (expected keys 'model' and 'model_name')")
    return ckpt


def model_from_checkpoint(ckpt: dict | str | os.PathLike, source: str | None = None) -> tuple[SSD, list[str]]:
    """Rebuild the detector described by a checkpoint (a path, or the dict read from ``source``)
    and load its weights; weights that do not fit the model are an error naming the file and
    the first mismatching keys."""
    what = os.fspath(source) if source is not None else "checkpoint"
    if not isinstance(ckpt, dict):
        what = os.fspath(ckpt)
        ckpt = load_checkpoint(ckpt)
    kwargs = dict(ckpt.get("model_kwargs", {}))
    kwargs.pop("backbone_weights", None)  # ImageNet files are only for starting training
    kwargs.update(offline_kwargs(ckpt["model_name"]))  # the checkpoint has the weights
    model = create_model(ckpt["model_name"], num_classes=len(ckpt["class_names"]), **kwargs)
    check_state_dict(model.state_dict(), ckpt["model"], f"{what}: weights do not fit its model {ckpt['model_name']}")
    model.load_state_dict(ckpt["model"])
    return model, list(ckpt["class_names"])
