"""Small datasets made on the fly: images with solid rectangles and their annotations."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re

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
    return (
        f"<annotation><filename>{filename}</filename><path>/somewhere/else/{filename}</path>"
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objs}</annotation>"
    )


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


def make_checkpoint(path, class_names=("red", "green", "blue"), image_size=160, seed=0, head_std=0.1, **kwargs):
    """An ssdlite_effl0 (ImageNet backbone, untrained heads) saved as a multibox checkpoint; returns the path.

    The prediction heads get random weights of std ``head_std`` so that scores spread over
    (0, 1) as a trained model's do (freshly initialised heads score every prior alike)."""
    import torch

    from multibox.inference.checkpoint import atomic_save
    from multibox.models import create_model

    torch.manual_seed(seed)
    kw = {"image_size": image_size, **kwargs}
    model = create_model("ssdlite_effl0", num_classes=len(class_names), pretrained_backbone=True, **kw)
    if head_std:
        with torch.no_grad():
            for p in model.head.parameters():
                p.normal_(0.0, head_std)
    atomic_save(
        {
            "model": model.state_dict(),
            "model_name": "ssdlite_effl0",
            "model_kwargs": kw,
            "class_names": list(class_names),
        },
        path,
    )
    return str(path)


@contextlib.contextmanager
def logs_warning(match: str):
    """Like ``pytest.warns``, for the warnings multibox logs on the ``multibox`` logger:
    the block must log a WARNING whose message matches the regular expression ``match``."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("multibox")
    handler, level = Keep(logging.WARNING), logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.WARNING, logging.WARNING))
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    messages = [r.getMessage() for r in records]
    assert any(re.search(match, m) for m in messages), f"no warning matching {match!r} was logged; got {messages}"


TINY = {"image_size": 128, "feature_strides": [16, 32], "extra_channels": [128, 64], "pretrained_backbone": False}


def tiny_config(root, out, *extra):
    """A config that trains a tiny ssdlite_effl0 (no ImageNet weights) on ``root`` for 2 epochs."""
    from multibox.config import load_config

    return load_config(
        None,
        [
            f"data.root={root}",
            "data.val=null",
            "data.test=null",
            "data.workers=0",
            "model.name=ssdlite_effl0",
            f"model.kwargs={TINY}",
            "train.batch_size=4",
            "train.epochs=2",
            "train.lr=0.01",
            "train.warmup_iters=2",
            "train.eval_every=0",
            "train.threads=2",
            f"out_dir={out}",
            *extra,
        ],
    )
