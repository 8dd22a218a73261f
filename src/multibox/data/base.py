"""What every dataset shares: a list of validated records and image loading.

A record is one image: its path, boxes ``(K, 4)`` xyxy in pixels of the upright
image, labels ``(K,)`` in ``1..C``, "difficult" flags and its size. Parsers in
``voc.py``, ``coco.py`` build records; :class:`DetectionDataset` cleans them
(boxes clipped to the image, degenerate boxes dropped and counted in one
warning naming the files) and reads images on access.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .image import ImageReadError, image_size, read_image

log = logging.getLogger(__name__)


class DatasetError(ValueError):
    """Malformed dataset input; the message names the file and the problem."""


class DuplicateEntry(DatasetError):
    """One image listed twice in a split (a list file, a JSON, or splits joined together)."""


@dataclass
class Record:
    image_path: str
    image_id: object
    boxes: np.ndarray  # (K, 4) float32 xyxy pixels
    labels: np.ndarray  # (K,) int64 in 1..C
    difficult: np.ndarray  # (K,) bool
    size: tuple[int, int] | None = None  # (height, width) of the upright image, read from the image file
    extra: dict = field(default_factory=dict)
    declared: tuple[int, int] | None = None  # (height, width) an annotation states (VOC <size>, COCO width/height)


@dataclass
class Problems:
    """Counts of what was dropped while loading, reported in one warning each."""

    degenerate: list[str] = field(default_factory=list)
    clipped: int = 0
    clipped_files: list[str] = field(default_factory=list)
    rescaled: list[str] = field(default_factory=list)  # boxes rescaled: the annotation's size was another scale
    size_ignored: list[str] = field(default_factory=list)  # a wrong annotation size, boxes within the image
    duplicates: list[str] = field(default_factory=list)  # entries listed twice, dropped
    skipped_files: list[str] = field(default_factory=list)
    skip_reasons: list[str] = field(default_factory=list)  # the error of each skipped file, for the run folder
    unknown_classes: dict = field(default_factory=dict)

    def skip(self, name: str, reason: str) -> None:
        """Count a skipped file (or annotation) and keep why, for the warning and the run folder."""
        self.skipped_files.append(name)
        self.skip_reasons.append(reason)

    def lines(self) -> list[str]:
        """One line per kind of change made to the data while reading it, with counts and files."""

        def few(items: list[str]) -> str:
            items = sorted(set(items))
            return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

        out = []
        if self.degenerate:
            out.append(
                f"dropped {len(self.degenerate)} degenerate box(es) (zero area or x2 <= x1) "
                f"in {len(set(self.degenerate))} file(s): {few(self.degenerate)}"
            )
        if self.clipped:
            out.append(
                f"clipped {self.clipped} box(es) reaching outside their image to its edges, in "
                f"{len(set(self.clipped_files))} file(s): {few(self.clipped_files)}"
            )
        if self.rescaled:
            out.append(
                f"rescaled the boxes of {len(self.rescaled)} image(s) whose annotation gives another size of "
                f"the same picture (resized after labelling): {few(self.rescaled)}"
            )
        if self.size_ignored:
            out.append(
                f"ignored a wrong image size in the annotation of {len(self.size_ignored)} image(s) (their "
                f"boxes fit the real image, which was used): {few(self.size_ignored)}"
            )
        if self.duplicates:
            out.append(f"dropped {len(self.duplicates)} entr(ies) listed twice: {few(self.duplicates)}")
        if self.skipped_files:
            out.append(f"skipped {len(self.skipped_files)} unreadable or malformed file(s): {few(self.skipped_files)}")
        if self.unknown_classes:
            desc = ", ".join(f"{k!r} x{v}" for k, v in sorted(self.unknown_classes.items()))
            out.append(f"ignored objects of classes not in the class list: {desc}")
        return out

    def warn(self, name: str) -> None:
        for line in self.lines():
            log.warning(f"{name}: {line}")


def reconcile_size(
    boxes: np.ndarray, declared: tuple[int, int], actual: tuple[int, int], tolerance: float = 1.0
) -> tuple[str, np.ndarray]:
    """An annotation's stated image size against the image file's, ``(h, w)`` each:
    ``("same", boxes)``; ``("ignored", boxes)`` when the boxes fit the real image (the stated
    size is just wrong); ``("rescaled", boxes scaled to the real image)`` when the stated size is
    the same picture at another scale and the boxes fit it (resized after labelling); else
    ``("conflict", boxes)``."""
    (dh, dw), (ah, aw) = declared, actual
    if (dh, dw) == (ah, aw):
        return "same", boxes

    def fits(h: float, w: float) -> bool:
        return not len(boxes) or bool((boxes[:, 2] <= w + tolerance).all() and (boxes[:, 3] <= h + tolerance).all())

    if fits(ah, aw):
        return "ignored", boxes
    if dh > 0 and dw > 0:
        sx, sy = aw / dw, ah / dh
        if abs(sx - sy) <= 0.01 * max(sx, sy) and fits(dh, dw):
            return "rescaled", (boxes * np.array([sx, sy, sx, sy], np.float32)).astype(np.float32)
    return "conflict", boxes


def clean_boxes(boxes: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Clip ``(K, 4)`` pixel boxes to an image of ``size`` (h, w); return the boxes,
    a mask of the non-degenerate ones, and how many were clipped by more than a pixel (the
    rounding of normalised YOLO or COCO coordinates at the border is clipped without a count)."""
    h, w = size
    clipped = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    n_clipped = int((np.abs(clipped - boxes) > 1.0).any(axis=1).sum()) if len(boxes) else 0
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return clipped, keep, n_clipped


class DetectionDataset:
    """Records plus image loading; ``dataset[i]`` is a sample dict.

    Sample: ``image`` (H, W, 3) uint8 RGB, ``boxes`` (K, 4) float32 xyxy pixels,
    ``labels`` (K,) int64 1..C, ``difficult`` (K,) bool, ``image_id``, ``path``, ``size`` (h, w).
    A ``transform(sample, index)`` may replace the image and boxes.
    """

    def __init__(
        self,
        records: Sequence[Record],
        class_names: Sequence[str],
        name: str = "dataset",
        transform: Callable | None = None,
        problems: Problems | None = None,
        category_ids: Sequence[int] | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.class_names = list(class_names)
        self.category_ids = list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
        self.name = name
        self.transform = transform
        problems = problems or Problems()
        self.records: list[Record] = []
        seen: dict = {}  # image id -> path
        for r in records:
            base = os.path.basename(r.image_path)
            try:
                size = r.size or image_size(r.image_path)
                r.boxes = r.boxes.reshape(-1, 4)
                if r.declared is not None:
                    verdict, r.boxes = reconcile_size(r.boxes, tuple(r.declared), tuple(size))
                    if verdict == "conflict":
                        (dh, dw), (h, w) = r.declared, size
                        raise DatasetError(
                            f"{r.image_path}: the annotation says the image is {dw}x{dh} but the file is {w}x{h}, "
                            "and its boxes fit neither as they are nor rescaled"
                        )
                    if verdict == "ignored":
                        problems.size_ignored.append(base)
                    elif verdict == "rescaled":
                        problems.rescaled.append(base)
                    r.declared = None  # reconciled once (a dataset built again from these records keeps it)
                key = (type(r.image_id).__name__, r.image_id)
                if key in seen:
                    if seen[key] != r.image_path:  # two files of one name (a.jpg, a.png): ids kept apart
                        r.image_id = f"{r.image_id}{os.path.splitext(r.image_path)[1]}"
                        key = (type(r.image_id).__name__, r.image_id)
                    if key in seen:
                        raise DuplicateEntry(f"{name}: image {r.image_path} is listed twice")
                seen[key] = r.image_path
            except (ImageReadError, DatasetError) as e:  # named, or skipped and counted
                if not skip_bad:
                    raise
                if isinstance(e, DuplicateEntry):
                    problems.duplicates.append(base)
                else:
                    problems.skip(base, str(e))
                continue
            boxes, keep, n_clip = clean_boxes(r.boxes, size)
            problems.clipped += n_clip
            if n_clip:
                problems.clipped_files.append(base)
            if not keep.all():
                problems.degenerate += [os.path.basename(r.image_path)] * int((~keep).sum())
            r.boxes, r.labels, r.difficult, r.size = boxes[keep], r.labels[keep], r.difficult[keep], size
            self.records.append(r)
        self.problems = problems
        problems.warn(name)
        # An image that passed the header check at build time can still fail to decode
        # (truncated file). With skip_bad, __getitem__ then serves the next readable image
        # and warns, naming the file; otherwise the error (naming the file) propagates.
        self.skip_bad = skip_bad
        self.unreadable: list[str] = []
        # how VOC AP reads this data's boxes: "devkit" (inclusive pixel indices, as VOC-style
        # XML and CSV annotations are written) or "continuous" (COCO, YOLO); set by the readers
        self.voc_convention = "continuous"

    def __len__(self) -> int:
        return len(self.records)

    def with_transform(self, transform: Callable | None) -> DetectionDataset:
        """The same records (shared, not copied) under another transform."""
        view = copy.copy(self)
        view.transform = transform
        return view

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load(self, index: int) -> dict:
        r = self.records[index]
        image = read_image(r.image_path)
        if image.shape[:2] != tuple(r.size):
            raise ImageReadError(
                f"{r.image_path}: image is {image.shape[1]}x{image.shape[0]} but the annotation says "
                f"{r.size[1]}x{r.size[0]}"
            )
        return {
            "image": image,
            "boxes": r.boxes.copy(),
            "labels": r.labels.copy(),
            "difficult": r.difficult.copy(),
            "image_id": r.image_id,
            "path": r.image_path,
            "size": tuple(r.size),
        }

    def __getitem__(self, index: int) -> dict:
        try:
            sample = self.load(index)
        except ImageReadError as e:
            if not self.skip_bad:
                raise
            sample = self._substitute(index, e)
        return self.transform(sample, index) if self.transform is not None else sample

    def _substitute(self, index: int, error: Exception) -> dict:
        path = self.records[index].image_path
        if path not in self.unreadable:
            self.unreadable.append(path)
            log.warning(
                f"{self.name}: skipped an unreadable image ({error}); {len(self.unreadable)} so far "
                "in this process, each replaced by the next readable image"
            )
        for step in range(1, len(self.records)):
            try:
                return self.load((index + step) % len(self.records))
            except ImageReadError:
                continue
        raise DatasetError(f"{self.name}: no readable image left") from error

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(
            np.concatenate([r.labels for r in self.records] or [np.zeros(0, int)]), minlength=self.num_classes + 1
        )
        return {n: int(c) for n, c in zip(self.class_names, counts[1:])}


def subset(dataset: DetectionDataset, indices: Sequence[int], name: str) -> DetectionDataset:
    """A view holding the records at ``indices`` (shared, not copied)."""
    out = dataset.with_transform(dataset.transform)
    out.name = name
    out.records = [dataset.records[i] for i in indices]
    return out


def concat_datasets(datasets: Sequence[DetectionDataset], name: str | None = None) -> DetectionDataset:
    """One dataset from several with the same classes (e.g. VOC2007 trainval + VOC2012 trainval)."""
    first = datasets[0]
    for d in datasets[1:]:
        if d.class_names != first.class_names:
            raise DatasetError(f"cannot concatenate {first.name} and {d.name}: class lists differ")
    out = first.with_transform(first.transform)
    out.name = name or "+".join(d.name for d in datasets)
    out.problems = Problems()
    out.records = [r for d in datasets for r in d.records]
    return out


def remap_classes(dataset: DetectionDataset, class_names: Sequence[str]) -> DetectionDataset:
    """The same records with labels renumbered to ``class_names`` (matched by name), as a model
    trained on that list expects. Classes of the data missing from ``class_names`` are an error
    that lists them; classes of the list missing from the data are simply absent."""
    target = {n: i + 1 for i, n in enumerate(class_names)}
    present = {dataset.class_names[label - 1] for r in dataset.records for label in r.labels.tolist()}
    unknown = sorted(n for n in present if n not in target)
    if unknown:
        raise DatasetError(f"{dataset.name}: classes {unknown} are not among the model's classes {list(class_names)}")
    mapping = np.zeros(len(dataset.class_names) + 1, np.int64)
    for i, n in enumerate(dataset.class_names):
        mapping[i + 1] = target.get(n, 0)
    out = copy.copy(dataset)
    out.records = [copy.copy(r) for r in dataset.records]
    for r in out.records:
        r.labels = mapping[r.labels]
    out.class_names = list(class_names)
    out.category_ids = list(range(1, len(class_names) + 1))
    return out


def verify_images(dataset: DetectionDataset, skip_bad: bool = False, workers: int = 2) -> list[str]:
    """Decode every image of ``dataset`` once, before any long work, so that a truncated or
    undecodable file is found now rather than in the middle of training or scoring.

    Args:
        dataset: the split to check (its records are changed in place when skipping).
        skip_bad: drop the unreadable images (counted, listed in ``dataset.problems`` and logged)
            instead of raising one :class:`DatasetError` that names them.
        workers: decoding threads.

    Returns:
        The paths of the unreadable images.
    """
    from concurrent.futures import ThreadPoolExecutor

    def probe(record: Record) -> str | None:
        try:
            image = read_image(record.image_path)
        except ImageReadError as e:
            return str(e)
        if record.size is not None and image.shape[:2] != tuple(record.size):
            return (
                f"{record.image_path}: image is {image.shape[1]}x{image.shape[0]} but the annotation says "
                f"{record.size[1]}x{record.size[0]}"
            )
        return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        errors = list(pool.map(probe, dataset.records))
    bad = [(r, e) for r, e in zip(dataset.records, errors) if e]
    if not bad:
        return []
    if not skip_bad:
        listed = "; ".join(e for _, e in bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DatasetError(f"{dataset.name}: {len(bad)} unreadable image(s): {listed}")
    dataset.records = [r for r, e in zip(dataset.records, errors) if not e]
    for r, e in bad:
        dataset.problems.skip(os.path.basename(r.image_path), e)
    log.warning(
        f"{dataset.name}: skipped {len(bad)} unreadable image(s): "
        + ", ".join(os.path.basename(r.image_path) for r, _ in bad[:5])
        + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    )
    return [r.image_path for r, _ in bad]
