"""Predictions written as annotations that labelling tools import (pre-annotation):

* ``yolo``: ``yolo/labels/<name>.txt`` (``class cx cy w h``, normalised, 0-based classes) and
  ``yolo/classes.txt`` - Label Studio, CVAT (YOLO 1.1), Ultralytics;
* ``voc``: ``voc/Annotations/<name>.xml`` (Pascal VOC XML with ``<filename>`` and ``<size>``)
  - LabelImg, CVAT (Pascal VOC), Label Studio;
* ``coco``: ``coco/annotations.json`` (ground-truth style: ``images``, ``annotations`` with
  ``bbox``, ``area``, ``iscrowd`` and the ``score``, ``categories``) - CVAT, Label Studio, FiftyOne.

Each image's file name is its own (made unique within a run), so the files read back with
multibox's dataset readers next to the images:

    writer = AnnotationWriter("voc", "runs/predict", class_names)
    writer.add(prediction, "img001.jpg")
    writer.close()
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from xml.sax.saxutils import escape

from .results import Prediction

SAVE_FORMATS = ("yolo", "voc", "coco")


class AnnotationWriter:
    """Writes one format's files for every prediction added; :meth:`close` finishes them."""

    def __init__(self, fmt: str, out_dir: str, class_names: Sequence[str]) -> None:
        if fmt not in SAVE_FORMATS:
            raise ValueError(f"unknown save format {fmt!r}; choose from {', '.join(SAVE_FORMATS)}")
        self.fmt, self.class_names = fmt, list(class_names)
        self.folder = os.path.join(out_dir, fmt)
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        if fmt == "yolo":
            os.makedirs(os.path.join(self.folder, "labels"), exist_ok=True)
            with open(os.path.join(self.folder, "classes.txt"), "w") as f:
                f.write("".join(f"{n}\n" for n in self.class_names))
        elif fmt == "voc":
            os.makedirs(os.path.join(self.folder, "Annotations"), exist_ok=True)
        else:
            os.makedirs(self.folder, exist_ok=True)

    def add(self, pred: Prediction, file_name: str) -> None:
        """The detections of one image, ``pred`` in pixels of the image named ``file_name``."""
        stem = os.path.splitext(file_name)[0]
        h, w = pred.image_size
        if self.fmt == "yolo":
            lines = []
            for (x1, y1, x2, y2), label in zip(pred.boxes.tolist(), pred.labels.tolist()):
                cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
                lines.append(f"{label - 1} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n")
            with open(os.path.join(self.folder, "labels", f"{stem}.txt"), "w") as f:
                f.write("".join(lines))
        elif self.fmt == "voc":
            objects = "".join(
                f"  <object>\n    <name>{escape(self.class_names[label - 1])}</name>\n    <pose>Unspecified</pose>\n"
                "    <truncated>0</truncated>\n    <difficult>0</difficult>\n"
                f"    <bndbox>\n      <xmin>{x1:.1f}</xmin>\n      <ymin>{y1:.1f}</ymin>\n"
                f"      <xmax>{x2:.1f}</xmax>\n      <ymax>{y2:.1f}</ymax>\n    </bndbox>\n  </object>\n"
                for (x1, y1, x2, y2), label in zip(pred.boxes.tolist(), pred.labels.tolist())
            )
            xml = (
                f"<annotation>\n  <filename>{escape(file_name)}</filename>\n"
                f"  <size>\n    <width>{w}</width>\n    <height>{h}</height>\n    <depth>3</depth>\n  </size>\n"
                f"{objects}</annotation>\n"
            )
            with open(os.path.join(self.folder, "Annotations", f"{stem}.xml"), "w") as f:
                f.write(xml)
        else:
            image_id = len(self.images) + 1
            self.images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
            for (x1, y1, x2, y2), label, score in zip(pred.boxes.tolist(), pred.labels.tolist(), pred.scores.tolist()):
                bw, bh = x2 - x1, y2 - y1
                self.annotations.append(
                    {
                        "id": len(self.annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(label),
                        "bbox": [round(x1, 2), round(y1, 2), round(bw, 2), round(bh, 2)],
                        "area": round(bw * bh, 2),
                        "iscrowd": 0,
                        "score": round(float(score), 5),
                    }
                )

    def close(self) -> None:
        if self.fmt == "coco":
            categories = [{"id": i, "name": n, "supercategory": "none"} for i, n in enumerate(self.class_names, 1)]
            with open(os.path.join(self.folder, "annotations.json"), "w") as f:
                json.dump({"images": self.images, "annotations": self.annotations, "categories": categories}, f)
