"""Boxes from a CSV table: ``filename,width,height,class,xmin,ymin,xmax,ymax`` (the export of
many tutorials and labelling tools), one row per object, pixels.

Columns are found by their header names, in any order; ``width`` and ``height`` may be absent
(the image header is read instead). Rows of one file name make one image; a row whose class is
empty is an image without objects.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import numpy as np

from .base import DatasetError, DetectionDataset, Problems, Record
from .voc import safe_join

REQUIRED = ("filename", "class", "xmin", "ymin", "xmax", "ymax")
ALIASES = {"file": "filename", "image": "filename", "image_id": "filename", "label": "class", "name": "class"}


def read_box_table(path: str) -> dict[str, list[tuple[str, list[float]]]]:
    """``{file name: [(class, [x1, y1, x2, y2]), ...]}`` in the table's order; errors name the row."""
    try:
        f = open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"annotation file not found: {path}") from None
    with f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise DatasetError(f"{path}: empty CSV file") from None
        cols = {ALIASES.get(h.strip().lower(), h.strip().lower()): i for i, h in enumerate(header)}
        missing = [c for c in REQUIRED if c not in cols]
        if missing:
            raise DatasetError(
                f"{path}: CSV header {header} lacks {missing} "
                "(expected filename,width,height,class,xmin,ymin,xmax,ymax)"
            )
        out: dict[str, list] = {}
        for n, row in enumerate(reader, 2):
            if not any(v.strip() for v in row):
                continue
            try:
                fn = row[cols["filename"]].strip()
                cls = row[cols["class"]].strip()
            except IndexError:
                raise DatasetError(f"{path}:{n}: row has {len(row)} fields, the header {len(header)}") from None
            items = out.setdefault(fn, [])
            if not cls:
                continue
            try:
                box = [float(row[cols[k]]) for k in ("xmin", "ymin", "xmax", "ymax")]
            except (ValueError, IndexError):
                raise DatasetError(f"{path}:{n}: non-numeric or missing coordinate in {row}") from None
            if not all(np.isfinite(box)):
                raise DatasetError(f"{path}:{n}: non-finite coordinate in {row}")
            items.append((cls, box))
    return out


def csv_dataset(
    path: str,
    image_dir: str | None = None,
    class_names: Sequence[str] | None = None,
    name: str | None = None,
    skip_bad: bool = False,
    transform=None,
) -> DetectionDataset:
    """A dataset from a CSV table of boxes; images are looked up in ``image_dir`` (default: the
    table's folder). ``class_names`` default to the sorted classes of the table."""
    image_dir = image_dir or os.path.dirname(os.path.abspath(path))
    table = read_box_table(path)
    if class_names is None:
        class_names = sorted({c for objs in table.values() for c, _ in objs})
        if not class_names:
            raise DatasetError(f"{path}: no objects found, so no class names; pass class_names")
    index = {c: i + 1 for i, c in enumerate(class_names)}
    problems = Problems()
    records = []
    for fn, objects in table.items():
        img = safe_join(image_dir, fn, "filename", path)
        if not os.path.isfile(img):
            if not skip_bad:
                raise DatasetError(f"{path}: image file not found: {img}")
            problems.skip(fn, f"{path}: image file not found: {img}")
            continue
        boxes, labels = [], []
        for cls, box in objects:
            if cls not in index:
                problems.unknown_classes[cls] = problems.unknown_classes.get(cls, 0) + 1
                continue
            boxes.append(box)
            labels.append(index[cls])
        records.append(
            Record(
                img,
                os.path.splitext(os.path.basename(fn))[0],
                np.array(boxes, np.float32).reshape(-1, 4),
                np.array(labels, np.int64),
                np.zeros(len(labels), bool),
            )
        )
    if not records:
        raise DatasetError(f"{path}: no images")
    name = name or os.path.basename(os.path.dirname(os.path.abspath(path)))
    ds = DetectionDataset(records, class_names, name, transform, problems, skip_bad=skip_bad)
    ds.voc_convention = "devkit"  # the VOC-style pixel boxes of tutorial exports
    return ds
