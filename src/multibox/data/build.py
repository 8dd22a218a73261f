"""Datasets from a :class:`~multibox.config.DataConfig`, and where to find them."""

from __future__ import annotations

import copy
import os
import re

import numpy as np

from .base import DatasetError, DetectionDataset, concat_datasets, subset, verify_images
from .coco import coco_dataset
from .layout import FORMATS, Layout, detect_layout
from .voc import voc_dataset, xml_folder_dataset


def data_dirs() -> list[str]:
    """Folders searched for a dataset given by name: ``$MULTIBOX_DATA``, ``./datasets``,
    ``../shared/datasets`` and ``../datasets`` (relative to the working directory)."""
    dirs = []
    if os.environ.get("MULTIBOX_DATA"):
        dirs.append(os.environ["MULTIBOX_DATA"])
    dirs += ["datasets", os.path.join("..", "shared", "datasets"), os.path.join("..", "datasets")]
    return dirs


def resolve_root(root: str) -> str:
    """An existing folder for ``root``: as given, or found by name in :func:`data_dirs`."""
    if os.path.isdir(root):
        return root
    if not os.path.isabs(root):
        for d in data_dirs():
            cand = os.path.join(d, root)
            if os.path.isdir(cand):
                return cand
    raise FileNotFoundError(
        f"dataset folder {root!r} not found (looked in: {', '.join(data_dirs())}); "
        "pass --data PATH or set MULTIBOX_DATA"
    )


_SLICE = re.compile(r"^(?P<split>.+)\[(?P<lo>\d+)?%?:(?P<hi>\d+)?%?\]$")


_LAYOUTS: dict[tuple[str, str], Layout] = {}


def layout_of(root: str, format: str = "auto") -> Layout:
    """:func:`~multibox.data.layout.detect_layout`, once per folder and format in a process."""
    key = (os.path.abspath(root), format)
    if key not in _LAYOUTS:
        _LAYOUTS[key] = detect_layout(root, format)
    return _LAYOUTS[key]


def split_slice(split: str) -> tuple[str, float, float] | None:
    """``"train[:20%]"`` -> ``("train", 0.0, 0.2)``; ``None`` for a plain split name."""
    m = _SLICE.match(split.strip())
    if not m:
        return None
    lo = int(m["lo"]) / 100 if m["lo"] else 0.0
    hi = int(m["hi"]) / 100 if m["hi"] else 1.0
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"split slice {split!r}: need 0 <= start < end <= 100 (percent)")
    return m["split"], lo, hi


def slice_order(n: int) -> np.ndarray:
    """The fixed pseudo-random order (seed 0) in which split slices cut a split's records: slices of
    one split are disjoint and the same on every machine, whatever order the split list has."""
    return np.random.default_rng(0).permutation(n)


def load_split(cfg, split: str, class_names=None) -> DetectionDataset:
    """One split. With several roots (``root: [VOC2007, VOC2012]``) the split is read from every
    root that has it and the parts are concatenated (VOC07+12 training).

    ``split[a%:b%]`` takes a slice of a split, e.g. ``val: train[:20%]`` and ``train: train[20%:]``
    hold out a fifth of a dataset that has no validation split (records in :func:`slice_order`).
    """
    sliced = split_slice(split)
    if sliced is not None:
        base, lo, hi = sliced
        ds = load_split(cfg, base, class_names)
        order = slice_order(len(ds))
        a, b = round(lo * len(ds)), round(hi * len(ds))
        return subset(ds, sorted(order[a:b].tolist()), f"{ds.name}[{split[len(base) + 1 : -1]}]")
    if isinstance(cfg.root, (list, tuple)):
        parts = []
        for r in cfg.root:
            sub = copy.copy(cfg)
            sub.root = r
            try:
                parts.append(load_split(sub, split, class_names or (parts[0].class_names if parts else None)))
            except DatasetError as e:
                if "split file not found" not in str(e):
                    raise
        if not parts:
            raise DatasetError(f"split {split!r} found in none of {cfg.root}")
        ds = concat_datasets(parts)
        ds.skip_bad = cfg.skip_bad
        return ds
    root = resolve_root(cfg.root)
    names = class_names or cfg.class_names
    if cfg.format in ("auto", "xml", "yolo", "csv"):
        ds = layout_of(root, cfg.format).load(split, names, skip_bad=cfg.skip_bad)
    elif cfg.format == "voc":
        ds = voc_dataset(root, split, names, skip_bad=cfg.skip_bad)
    elif cfg.format == "folder":
        ds = xml_folder_dataset(root, split, class_names=names, skip_bad=cfg.skip_bad)
    elif cfg.format == "coco":
        ann = split if split.endswith(".json") else os.path.join(root, split, "_annotations.coco.json")
        ds = coco_dataset(ann, class_names=names, min_annotations=cfg.coco_min_annotations, skip_bad=cfg.skip_bad)
        ds.name = f"{os.path.basename(os.path.normpath(root))}/{split}"
    else:
        raise ValueError(f"data.format must be one of {', '.join(FORMATS)}, got {cfg.format!r}")
    ds.skip_bad = cfg.skip_bad
    return ds


def build_datasets(cfg) -> dict[str, DetectionDataset]:
    """``{"train", "val"?, "test"?}``; val and test use the training set's class list."""
    out = {"train": load_split(cfg, cfg.train)}
    names = out["train"].class_names
    for key in ("val", "test"):
        split = getattr(cfg, key)
        if split:
            out[key] = load_split(cfg, split, names)
            if cfg.format == "coco":
                out[key].category_ids = out["train"].category_ids
    if getattr(cfg, "verify_images", False):
        for ds in out.values():
            verify_images(ds, skip_bad=cfg.skip_bad)
    return out
