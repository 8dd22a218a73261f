"""Pascal VOC XML annotations: the VOC layout and a simple custom folder layout.

* :func:`voc_dataset` - ``root/Annotations/*.xml``, ``root/JPEGImages/*.jpg`` and
  ``root/ImageSets/Main/<split>.txt`` (the Pascal VOC and BCCD layout);
* :func:`xml_folder_dataset` - ``root/<images>/`` and ``root/<annotations>/`` with
  one XML per image and ``root/<split>.txt`` listing image or annotation names
  (the raccoon layout). The XML ``<path>`` field is ignored; ``<filename>`` or
  the XML's own name locates the image.

VOC coordinates are 1-based inclusive pixels; we keep them as given (as most
SSD code does), so a box ``[xmin, ymin, xmax, ymax]`` is used directly as xyxy.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import numpy as np

from .base import DatasetError, DetectionDataset, Problems, Record
from .image import IMAGE_EXTENSIONS


def safe_join(root: str, name: str, what: str, source: str) -> str:
    """``root/name`` for a ``name`` read from an annotation or list file.

    Names that climb out of ``root`` (a ``..`` component, an absolute or drive path) are refused;
    symbolic links that the user placed inside the dataset are followed like any folder.
    """
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
        raise DatasetError(f"{source}: {what} {name!r} points outside the dataset folder {root}")
    return os.path.join(root, *[p for p in parts if p not in ("", ".")])


def parse_voc_xml(
    path: str,
) -> tuple[str | None, list[tuple[str, list[float], bool]], tuple[int, int] | None]:
    """Read one VOC XML: ``(filename or None, [(class name, [x1, y1, x2, y2], difficult), ...],
    (height, width) from <size> or None)``; a ``<size>`` missing, zero or unreadable is None."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DatasetError(f"{path}: annotation file not found") from None
    except ET.ParseError as e:
        raise DatasetError(f"{path}: malformed XML ({e})") from None
    fn = root.findtext("filename")
    objects = []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"{path}: object {i} has no <name>")
        bb = obj.find("bndbox")
        if bb is None:
            raise DatasetError(f"{path}: object {i} ({name}) has no <bndbox>")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            text = bb.findtext(tag)
            try:
                coords.append(float(text))
            except (TypeError, ValueError):
                raise DatasetError(
                    f"{path}: object {i} ({name}) has a missing or non-numeric <{tag}>: {text!r}"
                ) from None
        if not all(np.isfinite(coords)):
            raise DatasetError(f"{path}: object {i} ({name}) has a non-finite coordinate {coords}")
        difficult = (obj.findtext("difficult") or "0").strip() in ("1", "true", "True")
        objects.append((name, coords, difficult))
    size = None
    try:
        h, w = int(float(root.findtext("size/height") or 0)), int(float(root.findtext("size/width") or 0))
        size = (h, w) if h > 0 and w > 0 else None
    except ValueError:
        pass
    return (fn.strip() if fn else None), objects, size


def _parse(xml_path: str):
    """``parse_voc_xml`` whose error is returned rather than raised (reported later by ``_build``)."""
    try:
        return parse_voc_xml(xml_path)
    except DatasetError as e:
        return e


def _build(
    entries: Sequence[tuple[str, str, object]],
    class_names: Sequence[str] | None,
    name: str,
    skip_bad: bool,
    transform,
    problems: Problems | None = None,
) -> DetectionDataset:
    """``entries`` are ``(xml path, image path, parsed)``; ``parsed`` is what :func:`_parse`
    returned, or None to parse here."""
    problems = problems or Problems()
    parsed = []
    for xml_path, img_path, result in entries:
        try:
            result = _parse(xml_path) if result is None else result
            if isinstance(result, DatasetError):
                raise result
            _, objects, declared = result
            if not os.path.isfile(img_path):
                raise DatasetError(f"{xml_path}: image file not found: {img_path}")
        except DatasetError as e:
            if not skip_bad:
                raise
            problems.skip(os.path.basename(xml_path), str(e))
            continue
        parsed.append((xml_path, img_path, objects, declared))
    if class_names is None:
        class_names = sorted({o[0] for _, _, objs, _ in parsed for o in objs})
        if not class_names:
            raise DatasetError(f"{name}: no objects found, so no class names; pass class_names")
    index = {n: i + 1 for i, n in enumerate(class_names)}
    records = []
    for _xml_path, img_path, objects, declared in parsed:
        boxes, labels, diff = [], [], []
        for cls, box, d in objects:
            if cls not in index:
                problems.unknown_classes[cls] = problems.unknown_classes.get(cls, 0) + 1
                continue
            boxes.append(box), labels.append(index[cls]), diff.append(d)
        image_id = os.path.splitext(os.path.basename(img_path))[0]
        records.append(
            Record(
                img_path,
                image_id,
                np.array(boxes, np.float32).reshape(-1, 4),
                np.array(labels, np.int64),
                np.array(diff, bool),
                declared=declared,
            )
        )
    if not records:
        raise DatasetError(f"{name}: no images")
    ds = DetectionDataset(records, class_names, name, transform, problems, skip_bad=skip_bad)
    ds.voc_convention = "devkit"  # VOC coordinates are inclusive pixel indices
    return ds


def read_split_list(path: str, exists=None, problems: Problems | None = None) -> list[str]:
    """The names a split list file gives, one per line. A line may end in a VOC per-class flag
    (``000005 -1``); a name may hold spaces (``my photo 1``): with ``exists(name)`` the whole line
    is taken when it names an existing entry. A name listed twice is an error naming the file and
    its lines, or (with ``problems``: skipping) dropped and counted."""
    if not os.path.isfile(path):
        raise DatasetError(f"split file not found: {path}")
    names, where = [], {}
    with open(path, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            name = text
            parts = text.rsplit(None, 1)
            if len(parts) == 2 and parts[1] in ("-1", "0", "1"):  # a per-class list's flag
                name = parts[0]
            if exists is not None and not exists(name):
                name = next((c for c in (text, text.split()[0]) if exists(c)), name)
            if name in where:
                if problems is None:
                    raise DatasetError(f"{path}: {name!r} is listed twice (lines {where[name]} and {n})")
                problems.duplicates.append(name)
                continue
            where[name] = n
            names.append(name)
    return names


def voc_dataset(
    root: str,
    split: str = "trainval",
    class_names: Sequence[str] | None = None,
    skip_bad: bool = False,
    transform=None,
) -> DetectionDataset:
    """Pascal VOC layout. ``split`` names ``ImageSets/Main/<split>.txt``; join several with
    ``+`` (``"train+val"``). For VOC07+12 build one per root and use :func:`concat_datasets`."""
    ids: list[str] = []
    listed = Problems() if skip_bad else None

    def exists(i: str) -> bool:
        return os.path.isfile(os.path.join(root, "Annotations", f"{i}.xml"))

    for s in split.split("+"):
        ids += read_split_list(os.path.join(root, "ImageSets", "Main", f"{s}.txt"), exists, listed)
    entries = []
    for i in ids:
        xml = safe_join(root, os.path.join("Annotations", f"{i}.xml"), "image id", f"{root} split {split}")
        img = safe_join(root, os.path.join("JPEGImages", f"{i}.jpg"), "image id", xml)
        result = None
        if not os.path.isfile(img):  # some VOC-style sets store PNGs: ask the XML
            result = _parse(xml)
            fn = None if isinstance(result, DatasetError) else result[0]
            if fn:
                img = safe_join(os.path.join(root, "JPEGImages"), fn, "<filename>", xml)
        entries.append((xml, img, result))
    return _build(
        entries, class_names, f"{os.path.basename(os.path.normpath(root))}/{split}", skip_bad, transform, listed
    )


def find_image(stem: str, filename: str | None, folders: Sequence[str], source: str) -> str | None:
    """The image of an annotation: ``<filename>`` (its base name; the folder part of a Windows or
    foreign path is ignored) in one of ``folders``, else the annotation's stem with any image
    extension, in either case."""
    names = []
    if filename:
        base = filename.replace("\\", "/").split("/")[-1]
        if base:
            names.append(base)
            names += [os.path.splitext(base)[0] + e for e in IMAGE_EXTENSIONS]
    names += [stem + e for e in IMAGE_EXTENSIONS]
    for folder in folders:
        for n in names:
            for cand in (n, n.upper(), os.path.splitext(n)[0] + os.path.splitext(n)[1].upper()):
                path = safe_join(folder, cand, "<filename>", source)
                if os.path.isfile(path):
                    return path
    return None


def xml_dataset(
    xml_files: Sequence[str],
    image_folders: Sequence[str],
    name: str,
    class_names: Sequence[str] | None = None,
    skip_bad: bool = False,
    transform=None,
) -> DetectionDataset:
    """VOC XML files in any arrangement: each image is found by the XML's ``<filename>``, else by
    the XML's stem with any image extension, in ``image_folders`` (in order).

    Args:
        xml_files: annotation paths.
        image_folders: folders to look for the images in (e.g. the XML's own folder, ``images/``).
        name: the split's name in messages.
        class_names: default: the sorted names found in the files.
        skip_bad: skip (and count) malformed files and missing images instead of failing.
    """
    entries = []
    for xml in xml_files:
        result = _parse(xml)
        fn = None if isinstance(result, DatasetError) else result[0]
        stem = os.path.splitext(os.path.basename(xml))[0]
        try:
            img = find_image(stem, fn, image_folders, xml)
        except DatasetError as e:
            result, img = e, None
        entries.append((xml, img or os.path.join(image_folders[0], (fn or stem + ".jpg")), result))
    return _build(entries, class_names, name, skip_bad, transform)


def xml_folder_dataset(
    root: str,
    split: str | None = "train",
    images: str = "images",
    annotations: str = "annotations",
    class_names: Sequence[str] | None = None,
    skip_bad: bool = False,
    transform=None,
) -> DetectionDataset:
    """Custom layout: ``root/images/*``, ``root/annotations/*.xml``, optional ``root/<split>.txt``
    whose lines name images (with or without extension) or XML files. ``split=None`` uses every XML."""
    ann_dir = os.path.join(root, annotations)
    img_dir = os.path.join(root, images)
    listed = Problems() if skip_bad else None
    if split is None:
        stems = sorted(os.path.splitext(f)[0] for f in os.listdir(ann_dir) if f.endswith(".xml"))
    else:

        def exists(n: str) -> bool:
            stem = os.path.splitext(os.path.basename(n))[0]
            return os.path.isfile(os.path.join(ann_dir, stem + ".xml"))

        names = read_split_list(os.path.join(root, f"{split}.txt"), exists, listed)
        stems = [os.path.splitext(os.path.basename(n))[0] for n in names]
    entries = []
    for stem in stems:
        xml = safe_join(ann_dir, stem + ".xml", "name", f"{root}/{split}.txt")
        img = None
        result = _parse(xml)
        fn = None if isinstance(result, DatasetError) else result[0]
        if fn:
            cand = safe_join(img_dir, os.path.basename(fn), "<filename>", xml)
            img = cand if os.path.isfile(cand) else None
        if img is None:
            for ext in IMAGE_EXTENSIONS:
                cand = os.path.join(img_dir, stem + ext)
                if os.path.isfile(cand):
                    img = cand
                    break
        entries.append((xml, img or os.path.join(img_dir, stem + ".jpg"), result))
    return _build(
        entries,
        class_names,
        f"{os.path.basename(os.path.normpath(root))}/{split or 'all'}",
        skip_bad,
        transform,
        listed,
    )
