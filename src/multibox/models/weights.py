"""Reading weight files safely and checking that a state dict fits a model.

Only tensors and plain containers are ever unpickled (``weights_only=True``);
safetensors files are read with the safetensors library.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping

import torch
from torch import Tensor


def read_state_dict(path: str | os.PathLike, key: str | None = None) -> dict[str, Tensor]:
    """Load a ``{name: tensor}`` dict from ``.pth/.pt`` (weights only) or ``.safetensors``.

    ``key`` picks a nested dict (e.g. ``"model"``) when the file holds a checkpoint.
    A file that needs arbitrary code to unpickle is refused with a ``ValueError``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return dict(load_file(path, device="cpu"))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(
            f"{path}: refused to load: the file contains pickled objects other than tensors and plain "
            f"data, which could run arbitrary code ({str(e).splitlines()[0]})"
        ) from e
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch weights file ({type(e).__name__}: {e})") from e
    if key is not None and isinstance(obj, Mapping) and key in obj:
        obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return dict(obj)


def check_state_dict(own: Mapping[str, Tensor], given: Mapping[str, Tensor], what: str) -> None:
    """Raise ``ValueError`` listing missing, unexpected and wrongly shaped keys, if any."""
    missing = sorted(set(own) - set(given))
    unexpected = sorted(set(given) - set(own))
    wrong = sorted(k for k in set(own) & set(given) if tuple(own[k].shape) != tuple(given[k].shape))
    if not (missing or unexpected or wrong):
        return

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

    parts = []
    if missing:
        parts.append(f"missing {few(missing)}")
    if unexpected:
        parts.append(f"unexpected {few(unexpected)}")
    if wrong:
        parts.append(
            "wrong shape " + "; ".join(f"{k} {tuple(given[k].shape)} != {tuple(own[k].shape)}" for k in wrong[:3])
        )
    raise ValueError(f"{what}: " + "; ".join(parts))


def load_matching(model: torch.nn.Module, given: Mapping[str, Tensor], what: str) -> tuple[list[str], list[str]]:
    """Fine-tuning load: copy every tensor of ``given`` whose name and shape match the model's;
    leave the others as initialised (e.g. class predictors of another class list).

    Args:
        model: the model to fill.
        given: a state dict (e.g. a checkpoint's ``"model"``).
        what: the source, for messages.

    Returns:
        ``(loaded, not_loaded)`` names of the model's tensors; raises ``ValueError`` when not one
        tensor matches (another architecture), naming ``what`` and the first mismatches.
    """
    own = model.state_dict()
    loaded = [k for k, v in own.items() if k in given and tuple(given[k].shape) == tuple(v.shape)]
    if not loaded:
        try:
            check_state_dict(own, given, what)
        except ValueError as e:
            raise ValueError(f"{e}; not one tensor fits this model (another architecture?)") from None
    state = dict(own)
    state.update({k: given[k] for k in loaded})
    model.load_state_dict(state)
    return loaded, [k for k in own if k not in set(loaded)]
