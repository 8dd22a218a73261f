"""Look at a dataset before training: ground truth drawn into an image grid, optionally
after the training augmentation, optionally beside a model's predictions.

    grid = show_dataset(dataset, n=12, augment=SSDTransform((320, 320), train=True))
    save_image("show.jpg", grid)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..data.base import DetectionDataset
from .draw import draw_boxes, fit_width, image_grid, side_by_side


def _ground_truth(
    dataset: DetectionDataset, index: int, augment: Callable | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(image, boxes in pixels, labels)`` of one sample, after ``augment`` if given."""
    sample = dataset.load(index)
    if augment is None:
        return sample["image"], sample["boxes"], sample["labels"]
    out = augment(sample, index)
    image = out["image"].permute(1, 2, 0).numpy()
    h, w = image.shape[:2]
    boxes = out["boxes"].numpy() * np.array([w, h, w, h], dtype=np.float32)
    return np.ascontiguousarray(image), boxes, out["labels"].numpy()


def show_dataset(
    dataset: DetectionDataset,
    n: int = 12,
    augment: Callable | None = None,
    detector=None,
    conf: float = 0.3,
    seed: int | None = 0,
    cols: int | None = None,
    width: int = 400,
) -> np.ndarray:
    """An RGB grid of ``n`` samples with their ground truth boxes.

    ``augment``: a transform such as :class:`~multibox.data.transforms.SSDTransform`
    (train mode) to see what the network is trained on. ``detector``: a
    :class:`~multibox.Detector`; each tile then shows ground truth (left) beside its
    predictions above ``conf`` (right). ``seed`` picks a random sample of the
    dataset (``None`` takes the first ``n``).
    """
    if len(dataset) == 0:
        raise ValueError(f"{dataset.name}: the dataset is empty")
    n = min(n, len(dataset))
    if seed is None:
        indices = list(range(n))
    else:
        indices = sorted(np.random.default_rng(seed).choice(len(dataset), n, replace=False).tolist())
    tiles = []
    for i in indices:
        image, boxes, labels = _ground_truth(dataset, i, augment)
        gt = draw_boxes(image, boxes, labels, dataset.class_names)
        if detector is None:
            tiles.append(fit_width(gt, width))
            continue
        pred = detector.predict(image, conf=conf)[0]
        drawn = draw_boxes(image, pred.boxes, pred.labels, detector.class_names, pred.scores)
        tiles.append(side_by_side(gt, drawn, width))
    if cols is None:
        cols = 2 if detector is not None else 4
    return image_grid(tiles, cols)
