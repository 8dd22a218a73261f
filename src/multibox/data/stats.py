"""Box statistics of a dataset: what a recipe is fitted to and what ``multibox check`` shows.

Sizes are measured as the model sees them: every image is resized to a square input, so a
box of ``w x h`` pixels in a ``W x H`` image has relative width ``w / W`` and height ``h / H``;
its *size* is ``sqrt(w / W * h / H)`` (SSD's prior scale is the same quantity) and its
*aspect* ``(w / W) / (h / H)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import DetectionDataset


@dataclass
class BoxStats:
    """Statistics of a dataset's boxes (see the module docstring for the measures)."""

    images: int
    boxes: int
    images_without_boxes: int
    per_class: dict[str, int]
    size: np.ndarray  # (B,) relative size of every box
    aspect: np.ndarray  # (B,) relative width / relative height
    image_sizes: np.ndarray  # (N, 2) height, width

    def size_quantile(self, q: float) -> float:
        return float(np.quantile(self.size, q)) if len(self.size) else 0.0

    def relative_wh(self) -> tuple[np.ndarray, np.ndarray]:
        """``(B,)`` relative widths and heights of the boxes (``size * sqrt(aspect)``, ``size / sqrt(aspect)``)."""
        root = np.sqrt(self.aspect)
        return self.size * root, self.size / np.maximum(root, 1e-9)

    def fraction_elongated(self, limit: float = 2.5) -> float:
        """Fraction of boxes whose aspect (or its inverse) is above ``limit``."""
        if not len(self.aspect):
            return 0.0
        return float(np.mean(np.maximum(self.aspect, 1 / self.aspect) > limit))

    def table(self) -> str:
        lines = [f"{self.images} images ({self.images_without_boxes} without objects), {self.boxes} boxes"]
        width = max([len(n) for n in self.per_class] + [5])
        lines += [f"  {n:<{width}} {c:>7}" for n, c in self.per_class.items()]
        if len(self.size):
            qs = ", ".join(f"{q:.0%} {self.size_quantile(q):.3f}" for q in (0.02, 0.1, 0.5, 0.9, 0.98))
            lines.append(f"  box size (sqrt of the image fraction): {qs}")
            lines.append(
                f"  aspect w/h: median {np.median(self.aspect):.2f}, beyond 1:2.5 {self.fraction_elongated():.0%}"
            )
        return "\n".join(lines)


def box_stats(dataset: DetectionDataset) -> BoxStats:
    """Statistics of ``dataset``'s records (headers only: no image is decoded).

    Args:
        dataset: any :class:`DetectionDataset`.

    Returns:
        A :class:`BoxStats`.
    """
    sizes, aspects, image_sizes = [], [], []
    counts = np.zeros(len(dataset.class_names), np.int64)
    empty = 0
    for r in dataset.records:
        h, w = r.size
        image_sizes.append((h, w))
        if not len(r.boxes):
            empty += 1
            continue
        bw = (r.boxes[:, 2] - r.boxes[:, 0]) / w
        bh = (r.boxes[:, 3] - r.boxes[:, 1]) / h
        sizes.append(np.sqrt(bw * bh))
        aspects.append(bw / np.maximum(bh, 1e-9))
        np.add.at(counts, r.labels - 1, 1)
    size = np.concatenate(sizes) if sizes else np.zeros(0)
    return BoxStats(
        images=len(dataset.records),
        boxes=int(len(size)),
        images_without_boxes=empty,
        per_class={n: int(c) for n, c in zip(dataset.class_names, counts)},
        size=size,
        aspect=np.concatenate(aspects) if aspects else np.zeros(0),
        image_sizes=np.array(image_sizes, np.int64).reshape(-1, 2),
    )
