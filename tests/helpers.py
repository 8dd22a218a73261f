"""Small datasets made on the fly: images with solid rectangles and their annotations."""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

COLORS = [(230, 40, 40), (40, 200, 60), (50, 80, 230), (240, 220, 30)]


def shapes_image(rng, width=160, height=120, n=3):
    """A grey image with ``n`` solid coloured rectangles; returns (image, boxes, class indices 0..3)."""
    img = np.full((height, width, 3), 128, np.uint8)
    boxes, classes = [], []
    for _ in range(n):
        w = int(rng.integers(width // 6, width // 2))
        h = int(rng.integers(height // 6, height // 2))
        x = int(rng.integers(0, width - w))
        y = int(rng.integers(0, height - h))
        c = int(rng.integers(0, len(COLORS)))
        img[y : y + h, x : x + w] = COLORS[c]
        boxes.append([x, y, x + w, y + h])
        classes.append(c)
    return img, np.array(boxes, np.float32), classes


def voc_xml(filename, width, height, objects):
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b, d in objects
    )
    return (f"<annotation><filename>{filename}</filename><path>/somewhere/else/{filename}</path>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objs}</annotation>")


def make_voc(root, n=8, seed=0, names=("red", "green", "blue", "yellow"), split="train", overlap_free=False):
    """A VOC-layout dataset of shape images; returns the root."""
    rng = np.random.default_rng(seed)
    for d in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    ids = []
    for i in range(n):
        img, boxes, classes = shapes_image(rng, n=1 if overlap_free else 3)
        stem = f"img{i:03d}"
        Image.fromarray(img).save(os.path.join(root, "JPEGImages", stem + ".jpg"), quality=95)
        objs = [(names[c], b.astype(int).tolist(), False) for b, c in zip(boxes, classes)]
        with open(os.path.join(root, "Annotations", stem + ".xml"), "w") as f:
            f.write(voc_xml(stem + ".jpg", img.shape[1], img.shape[0], objs))
        ids.append(stem)
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return root


def write_coco(path, images, annotations, categories):
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
