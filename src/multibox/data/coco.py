"""COCO JSON annotations (``images``, ``annotations``, ``categories``).

Category ids need not be contiguous; labels ``1..C`` follow the sorted ids of
the categories kept, and ``dataset.category_ids`` maps them back. Categories
with no annotations in the file (a super-category such as Roboflow's
"pieces") are dropped unless ``keep_empty_categories``; ``min_annotations``
drops near-empty strays too (e.g. a category with a single stray box). Images
without annotations are kept as negatives. ``iscrowd`` objects are kept as
"difficult" (ignored by the VOC metric, not used as training targets).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

from .base import DatasetError, DetectionDataset, Problems, Record
from .voc import safe_join

log = logging.getLogger(__name__)


def coco_dataset(
    annotation_file: str,
    image_dir: str | None = None,
    class_names: Sequence[str] | None = None,
    keep_empty_categories: bool = False,
    min_annotations: int = 1,
    skip_bad: bool = False,
    transform=None,
) -> DetectionDataset:
    """Load a COCO detection JSON; images are looked up in ``image_dir`` (default: beside the file)."""
    image_dir = image_dir or os.path.dirname(os.path.abspath(annotation_file))
    try:
        with open(annotation_file) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"annotation file not found: {annotation_file}") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{annotation_file}: not valid JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise DatasetError(f"{annotation_file}: missing the list {key!r} of a COCO file")
    src = annotation_file
    problems = Problems()

    def dup_check(items, what):
        ids = Counter(x.get("id") for x in items)
        dups = [i for i, c in ids.items() if c > 1]
        if dups:
            raise DatasetError(f"{src}: duplicate {what} id(s) {dups[:5]}")

    dup_check(data["images"], "image")
    dup_check(data["categories"], "category")
    dup_check(data["annotations"], "annotation")
    cats = {c["id"]: c.get("name", str(c["id"])) for c in data["categories"]}
    per_cat = Counter(a.get("category_id") for a in data["annotations"])

    same_name = defaultdict(list)  # a name given to several category ids is one class
    for c in sorted(cats):
        same_name[cats[c]].append(c)
    for n, ids in same_name.items():
        if len(ids) > 1:
            log.warning(
                f"{src}: categories {', '.join(map(str, ids))} are all named {n!r}: merged into one class "
                f"(its results carry category id {ids[0]})"
            )
    if class_names is None:
        kept_ids = sorted(c for c in cats if keep_empty_categories or per_cat.get(c, 0) >= max(1, min_annotations))
        class_names = list(dict.fromkeys(cats[c] for c in kept_ids))
    else:
        missing = [n for n in class_names if n not in same_name]
        if missing:
            raise DatasetError(f"{src}: class names {missing} are not categories of the file")
    label_of = {c: i + 1 for i, n in enumerate(class_names) for c in same_name[n]}
    kept = [same_name[n][0] for n in class_names]  # the category id of each class, for results

    anns = defaultdict(list)
    for a in data["annotations"]:
        where = f"{src}: annotation {a.get('id')}"
        cat = a.get("category_id")
        if cat not in cats:
            if not skip_bad:
                raise DatasetError(f"{where} has unknown category id {cat!r}")
            problems.skip(f"annotation {a.get('id')}", f"{where} has unknown category id {cat!r}")
            continue
        if cat not in label_of:
            problems.unknown_classes[cats[cat]] = problems.unknown_classes.get(cats[cat], 0) + 1
            continue
        bbox = a.get("bbox")
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            why = f"{where} has a malformed bbox {bbox!r} (expected [x, y, w, h])"
            if not skip_bad:
                raise DatasetError(why) from None
            problems.skip(f"annotation {a.get('id')}", why)
            continue
        anns[a.get("image_id")].append(([x, y, x + w, y + h], label_of[cat], bool(a.get("iscrowd", 0))))

    image_ids = {im["id"] for im in data["images"]}
    orphans = [i for i in anns if i not in image_ids]
    if orphans:
        msg = f"{src}: annotations refer to image id(s) {orphans[:5]} missing from 'images'"
        if not skip_bad:
            raise DatasetError(msg)
        problems.skip(f"annotations of {len(orphans)} missing image(s)", msg)

    records = []
    for im in data["images"]:
        fn = im.get("file_name")
        if not fn:
            raise DatasetError(f"{src}: image {im.get('id')} has no file_name")
        path = safe_join(image_dir, fn, "file_name", src)
        if not os.path.isfile(path):
            if not skip_bad:
                raise DatasetError(f"{src}: image file not found: {path}")
            problems.skip(fn, f"{src}: image file not found: {path}")
            continue
        objs = anns.get(im["id"], [])
        boxes = np.array([o[0] for o in objs], np.float32).reshape(-1, 4)
        h, w = im.get("height"), im.get("width")
        try:
            declared = (int(h), int(w)) if h and w else None
        except (TypeError, ValueError):
            declared = None
        records.append(
            Record(
                path,
                im["id"],
                boxes,
                np.array([o[1] for o in objs], np.int64),
                np.array([o[2] for o in objs], bool),
                declared=declared,  # checked against the image file's header when the dataset is built
            )
        )
    if not records:
        raise DatasetError(f"{src}: no images")
    name = os.path.basename(os.path.dirname(os.path.abspath(annotation_file)))
    return DetectionDataset(records, class_names, name, transform, problems, category_ids=kept, skip_bad=skip_bad)
