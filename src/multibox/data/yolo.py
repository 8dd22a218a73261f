"""YOLO txt labels (Ultralytics / Darknet): one ``<image stem>.txt`` per image, a line per
object, ``class cx cy w h`` normalised to the image's width and height (0-1).

The label file of ``.../images/<sub>/x.jpg`` is ``.../labels/<sub>/x.txt`` (the last ``images``
folder of the path becomes ``labels``), or ``x.txt`` beside the image. A missing or empty label
file is an image without objects (counted and reported); a polygon line (``class x1 y1 x2 y2
...``, Ultralytics' segment format) becomes the polygon's bounding box. Class indices are
0-based into ``class_names``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np

from .base import DatasetError, DetectionDataset, Problems, Record
from .image import IMAGE_EXTENSIONS, ImageReadError, image_size

log = logging.getLogger(__name__)


def label_path(image_path: str) -> str:
    """Where Ultralytics looks for an image's labels: its path with the last ``images`` folder
    replaced by ``labels`` and the extension by ``.txt``."""
    parts = image_path.split(os.sep)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return os.path.splitext(os.sep.join(parts))[0] + ".txt"


def find_label(image_path: str) -> str | None:
    """The label file of an image: the ``labels`` twin of its path, else a ``.txt`` beside it."""
    for cand in (label_path(image_path), os.path.splitext(image_path)[0] + ".txt"):
        if os.path.isfile(cand):
            return cand
    return None


def list_images(folder: str) -> list[str]:
    """Image files under ``folder`` (recursively, symbolic links followed), sorted."""
    out = []
    for dirpath, _, files in os.walk(folder, followlinks=True):
        out += [os.path.join(dirpath, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(out)


def parse_yolo_labels(path: str, num_classes: int) -> list[tuple[int, list[float]]]:
    """``[(class index, [cx, cy, w, h] normalised), ...]`` from one label file; errors name the
    file and line."""
    objects = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                values = [float(v) for v in parts]
            except ValueError:
                raise DatasetError(f"{path}:{n}: not numbers: {line.strip()!r}") from None
            cls = values[0]
            if cls != int(cls) or not 0 <= cls < num_classes:
                raise DatasetError(
                    f"{path}:{n}: class {parts[0]} is out of range (the dataset has {num_classes} "
                    f"classes, 0..{num_classes - 1})"
                )
            coords = values[1:]
            if len(coords) == 4:
                box = coords
            elif len(coords) >= 6 and len(coords) % 2 == 0:  # a polygon: its bounding box
                xs, ys = coords[0::2], coords[1::2]
                x1, x2, y1, y2 = min(xs), max(xs), min(ys), max(ys)
                box = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
            else:
                raise DatasetError(f"{path}:{n}: expected 'class cx cy w h', got {len(parts)} values")
            if not all(np.isfinite(box)):
                raise DatasetError(f"{path}:{n}: non-finite coordinate in {line.strip()!r}")
            if box[2] < 0 or box[3] < 0:
                raise DatasetError(f"{path}:{n}: negative width or height in {line.strip()!r}")
            objects.append((int(cls), box))
    return objects


def yolo_dataset(
    images: Sequence[str],
    class_names: Sequence[str],
    name: str = "yolo",
    skip_bad: bool = False,
    transform=None,
) -> DetectionDataset:
    """A dataset of the given image files and their YOLO label files.

    Args:
        images: image paths.
        class_names: the names of class indices 0..C-1 (labels become 1..C).
        name: the split's name in messages.
        skip_bad: skip (and count) unreadable images and malformed label files instead of failing.

    Returns:
        The :class:`DetectionDataset`; boxes in pixels.
    """
    if not class_names:
        raise DatasetError(f"{name}: YOLO labels need class names (data.yaml 'names', classes.txt or data.class_names)")
    problems = Problems()
    records = []
    no_label = empty = 0
    for path in images:
        try:
            h, w = image_size(path)
            lab = find_label(path)
            objects = parse_yolo_labels(lab, len(class_names)) if lab else []
        except (DatasetError, ImageReadError) as e:
            if not skip_bad:
                raise DatasetError(str(e)) from None
            problems.skip(os.path.basename(path), str(e))
            continue
        if lab is None:
            no_label += 1
        elif not objects:
            empty += 1
        cxcywh = np.array([box for _, box in objects], np.float64).reshape(-1, 4)
        half = cxcywh[:, 2:] / 2
        boxes = (np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], 1) * [w, h, w, h]).astype(np.float32)
        labels = np.array([c + 1 for c, _ in objects], np.int64)
        stem = os.path.splitext(os.path.basename(path))[0]
        records.append(Record(path, stem, boxes, labels, np.zeros(len(labels), bool), (h, w)))
    if no_label or empty:
        log.info(
            f"{name}: {no_label + empty} image(s) without objects ({no_label} without a label file, "
            f"{empty} with an empty one): kept as negatives"
        )
    if not records:
        raise DatasetError(f"{name}: no images")
    return DetectionDataset(records, class_names, name, transform, problems, skip_bad=skip_bad)


def orphan_labels(label_dir: str, images: Sequence[str]) -> list[str]:
    """Label files under ``label_dir`` that belong to none of ``images``."""
    if not os.path.isdir(label_dir):
        return []
    used = {os.path.abspath(p) for p in (find_label(i) for i in images) if p}
    out = []
    for dirpath, _, files in os.walk(label_dir, followlinks=True):
        for f in files:
            p = os.path.abspath(os.path.join(dirpath, f))
            if f.endswith(".txt") and f != "classes.txt" and p not in used:
                out.append(p)
    return sorted(out)
