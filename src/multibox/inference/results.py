"""What a detector returns for one image: :class:`Prediction`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np


@dataclass
class Prediction:
    """Detections for one image: ``boxes (K, 4)`` xyxy pixels, ``scores (K,)``, ``labels (K,)``
    in ``1..C`` and their class ``names``, best first."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    image_size: tuple[int, int]  # (height, width)
    source: str | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def rescaled(self, image_size: tuple[int, int]) -> Prediction:
        """The same detections in pixels of the image at ``image_size`` ``(height, width)``
        (e.g. the full-size file of an image that was read reduced)."""
        (h0, w0), (h, w) = self.image_size, image_size
        scale = np.array([w / w0, h / h0, w / w0, h / h0], np.float32)
        return replace(self, boxes=(self.boxes * scale).astype(np.float32), image_size=tuple(image_size))

    def to_coco(self, image_id: int, category_ids: Sequence[int] | None = None) -> list[dict]:
        """COCO results entries: ``image_id``, ``category_id`` (``category_ids[label - 1]`` or the
        label itself), ``bbox`` ``[x, y, w, h]`` and ``score``."""
        out = []
        for b, s, l in zip(self.boxes, self.scores, self.labels):
            cat = int(category_ids[l - 1]) if category_ids is not None else int(l)
            x1, y1, x2, y2 = (float(v) for v in b)
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": cat,
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(float(s), 5),
                }
            )
        return out

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "image_size": list(self.image_size),
            "detections": [
                {"box": [round(float(v), 2) for v in b], "score": round(float(s), 5), "label": int(l), "name": n}
                for b, s, l, n in zip(self.boxes, self.scores, self.labels, self.names)
            ],
        }
