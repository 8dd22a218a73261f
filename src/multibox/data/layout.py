"""Find out how a dataset folder is laid out and in which format its boxes are.

    layout = detect_layout("path/to/data")
    print(layout.summary())          # format, splits and what was found
    train = layout.load("train")     # a DetectionDataset

Recognised, from the folder's files alone:

* Pascal VOC: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``;
* VOC XML in any arrangement: images and XML side by side (LabelImg), or in two folders of
  any names (``annots/``, ``xml/`` ...), optionally with ``<split>.txt`` lists of names;
* COCO JSON: ``annotations/instances_<split>.json`` beside ``<split>/`` (or ``images/<split>/``),
  Roboflow's ``<split>/_annotations.coco.json``, or one JSON beside an image folder;
* YOLO txt: a ``data.yaml`` (``path``, ``train``/``val``/``test`` as folders, list files or
  lists; ``names`` as a list or a dict), ``images/<split>`` beside ``labels/<split>``,
  ``<split>/images`` beside ``<split>/labels``, with ``classes.txt`` or the yaml for names;
* CSV tables of ``filename,width,height,class,xmin,ymin,xmax,ymax``.

Each of these may sit in split folders (``train/``, ``valid/``, ``test/`` ...). Split names are
made canonical: ``train``, ``val`` and ``test`` (``training``, ``valid``, ``validation``,
``dev``, ``testing`` are accepted); a folder without splits is one split, ``all``.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml

from .base import DatasetError, DetectionDataset
from .coco import coco_dataset
from .image import IMAGE_EXTENSIONS
from .table import csv_dataset
from .voc import safe_join, voc_dataset, xml_dataset
from .yolo import list_images, orphan_labels, yolo_dataset

SPLIT_ALIASES = {
    "train": ("train", "training", "trn"),
    "val": ("val", "valid", "validation", "dev", "eval"),
    "test": ("test", "testing", "tst"),
}
FORMATS = ("auto", "voc", "xml", "folder", "coco", "yolo", "csv")
ANNOTATION_FOLDERS = ("annotations", "annots", "annotation", "xml", "xmls", "labels", "label", "anns", "Annotations")


def canonical_split(name: str) -> str | None:
    low = name.lower()
    for canon, aliases in SPLIT_ALIASES.items():
        if low in aliases:
            return canon
    return None


@dataclass
class Source:
    """Where one split's images and boxes are."""

    format: str  # voc | xml | coco | yolo | csv
    name: str  # the split's name as found ("valid", "train2017", "all")
    files: list[str] = field(default_factory=list)  # XML files (xml), image files (yolo)
    folders: list[str] = field(default_factory=list)  # image folders to search (xml)
    annotation: str | None = None  # COCO JSON or CSV file; VOC root
    image_dir: str | None = None  # COCO / CSV image folder
    voc_split: str | None = None

    def describe(self, root: str) -> str:
        def rel(p):
            return os.path.relpath(p, root) if p else "?"

        if self.format == "voc":
            return f"ImageSets/Main/{self.voc_split}.txt"
        if self.format in ("coco", "csv"):
            return f"{rel(self.annotation)} (images in {rel(self.image_dir)}/)"
        if self.format == "yolo":
            return f"{len(self.files)} images with YOLO labels"
        return f"{len(self.files)} XML files"


@dataclass
class Layout:
    """A dataset folder as detected: its format, splits and class names (when the folder names them)."""

    root: str
    description: str
    splits: dict[str, Source]
    class_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        order = {"train": 0, "val": 1, "test": 2, "all": 3}
        self.splits = dict(sorted(self.splits.items(), key=lambda kv: (order.get(kv[0], 4), kv[0])))

    def split_names(self) -> list[str]:
        return list(self.splits)

    def summary(self) -> str:
        lines = [f"{self.root}: {self.description}"]
        for name, src in self.splits.items():
            shown = name if name == src.name else f"{name} ({src.name})"
            lines.append(f"  {shown}: {src.describe(self.root)}")
        if self.class_names:
            lines.append(f"  classes: {', '.join(self.class_names)}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def load(self, split: str, class_names: Sequence[str] | None = None, skip_bad: bool = False) -> DetectionDataset:
        """The dataset of one split (canonical or as-found name)."""
        src = self.splits.get(split) or next((s for s in self.splits.values() if s.name == split), None)
        if src is None:
            raise DatasetError(f"{self.root}: no split {split!r}; found: {', '.join(self.splits) or 'none'}")
        names = list(class_names) if class_names else self.class_names
        base = os.path.basename(os.path.normpath(self.root))
        label = f"{base}/{split}"
        if src.format == "voc":
            ds = voc_dataset(src.annotation, src.voc_split, names, skip_bad=skip_bad)
        elif src.format == "xml":
            ds = xml_dataset(src.files, src.folders, label, names, skip_bad=skip_bad)
        elif src.format == "coco":
            ds = coco_dataset(src.annotation, src.image_dir, class_names=names, skip_bad=skip_bad)
        elif src.format == "csv":
            ds = csv_dataset(src.annotation, src.image_dir, names, name=label, skip_bad=skip_bad)
        else:
            ds = yolo_dataset(src.files, names or [], label, skip_bad=skip_bad)
        ds.name = label
        ds.skip_bad = skip_bad
        return ds


# --- detection -----------------------------------------------------------------------------------


def _subdirs(folder: str) -> list[str]:
    try:
        return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)) and not d.startswith("."))
    except OSError:
        return []


def _files(folder: str, exts: tuple[str, ...]) -> list[str]:
    try:
        return sorted(
            os.path.join(folder, f)
            for f in os.listdir(folder)
            if f.lower().endswith(exts) and os.path.isfile(os.path.join(folder, f))
        )
    except OSError:
        return []


def _has_images(folder: str) -> bool:
    return bool(_files(folder, IMAGE_EXTENSIONS))


def _read_names_file(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def _names_from_yaml(names, path: str) -> list[str]:
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: 'names' keys must be class indices 0..C-1, got {list(names)[:5]}") from None
        if keys != list(range(len(keys))):
            raise DatasetError(f"{path}: 'names' must number the classes 0..{len(keys) - 1} without gaps")
        return [str(names[k] if k in names else names[str(k)]) for k in keys]
    if isinstance(names, list) and names:
        return [str(n) for n in names]
    raise DatasetError(f"{path}: 'names' must be a list or a dict of class names")


def _classes_txt(*folders: str) -> list[str] | None:
    for f in folders:
        for name in ("classes.txt", "classes.names", "obj.names"):
            p = os.path.join(f, name)
            if os.path.isfile(p):
                return _read_names_file(p)
    return None


def _xml_files(folder: str) -> list[str]:
    return _files(folder, (".xml",))


def _single(folder: str, name: str, root: str) -> Source | None:
    """A folder holding one pool of annotated images, in any supported format; None if none."""
    coco = [p for p in _files(folder, (".json",)) if _looks_like_coco(p)]
    if coco:
        ann = next((p for p in coco if os.path.basename(p) == "_annotations.coco.json"), coco[0])
        return Source("coco", name, annotation=ann, image_dir=_coco_image_dir(ann, folder))
    if os.path.isdir(os.path.join(folder, "images")) and os.path.isdir(os.path.join(folder, "labels")):
        if not _xml_files(os.path.join(folder, "labels")):
            return Source("yolo", name, files=list_images(os.path.join(folder, "images")))
    csvs = _files(folder, (".csv",))
    if csvs:
        ann = next((p for p in csvs if os.path.basename(p) == "_annotations.csv"), csvs[0])
        img_dir = os.path.join(folder, "images") if os.path.isdir(os.path.join(folder, "images")) else folder
        return Source("csv", name, annotation=ann, image_dir=img_dir)
    xml_here = _xml_files(folder)
    image_folders = [folder] + [
        os.path.join(folder, d) for d in _subdirs(folder) if _has_images(os.path.join(folder, d))
    ]
    if xml_here:
        return Source("xml", name, files=xml_here, folders=image_folders)
    for d in _subdirs(folder):
        xmls = _xml_files(os.path.join(folder, d))
        if xmls:
            return Source("xml", name, files=xmls, folders=image_folders)
    txts = [p for p in _files(folder, (".txt",)) if os.path.basename(p) not in ("classes.txt",)]
    if txts and _has_images(folder):
        return Source("yolo", name, files=list_images(folder))
    return None


def _json_head(path: str, size: int = 1_000_000) -> str:
    """The first ``size`` characters of a JSON file ("" if unreadable): enough to recognise a COCO
    file and sample its image names without parsing all of it (COCO's train2017 file is 450 MB)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(size)
    except (OSError, UnicodeDecodeError):
        return ""


def _looks_like_coco(path: str) -> bool:
    head = _json_head(path)
    return '"images"' in head and ('"annotations"' in head or '"categories"' in head)


_FILE_NAME = re.compile(r'"file_name"\s*:\s*"((?:[^"\\]|\\.)*)"')


def _sample_file_names(ann: str, n: int = 20) -> list[str]:
    """The first ``n`` image ``file_name``s of a COCO file, from its head when they are there
    (the usual order: images before annotations), else from the whole file."""
    names = [json.loads(f'"{m}"') for m in _FILE_NAME.findall(_json_head(ann))[:n]]
    if names:
        return names
    try:
        with open(ann, encoding="utf-8") as f:
            images = json.load(f).get("images") or []
    except (OSError, ValueError, AttributeError):
        return []
    return [im.get("file_name") for im in images[:n] if im.get("file_name")]


def _coco_image_dir(ann: str, fallback: str) -> str:
    """The folder that holds the JSON's ``file_name``s: beside the JSON, ``images/`` beside it,
    or the split folder of the official layout (``instances_train2017.json`` -> ``train2017/``)."""
    folder = os.path.dirname(os.path.abspath(ann))
    candidates = [folder, os.path.join(folder, "images"), fallback]
    stem = os.path.splitext(os.path.basename(ann))[0]
    if stem.startswith("instances_"):
        split = stem[len("instances_") :]
        parent = os.path.dirname(folder)
        candidates = [
            os.path.join(parent, split),
            os.path.join(parent, "images", split),
            os.path.join(parent, "images"),
            parent,
        ] + candidates
    sample = _sample_file_names(ann)
    best, hits = candidates[0], -1
    for c in candidates:
        try:
            n = sum(os.path.isfile(safe_join(c, fn, "file_name", ann)) for fn in sample)
        except DatasetError:
            n = 0
        if n > hits:
            best, hits = c, n
    return best


def _split_lists(root: str) -> dict[str, str]:
    """``<split>.txt`` files at ``root`` whose names are split names: canonical -> path."""
    out = {}
    for p in _files(root, (".txt",)):
        canon = canonical_split(os.path.splitext(os.path.basename(p))[0])
        if canon and canon not in out:
            out[canon] = p
    return out


def _filter_by_list(src: Source, list_file: str, name: str) -> Source:
    wanted = {os.path.splitext(os.path.basename(n.replace("\\", "/")))[0] for n in _read_names_file(list_file)}
    files = [f for f in src.files if os.path.splitext(os.path.basename(f))[0] in wanted]
    return Source(src.format, name, files=files, folders=src.folders)


def _voc(root: str) -> Layout:
    sets = os.path.join(root, "ImageSets", "Main")
    found = {os.path.splitext(os.path.basename(p))[0]: p for p in _files(sets, (".txt",))}
    splits: dict[str, Source] = {}
    for canon, aliases in SPLIT_ALIASES.items():
        for a in aliases:
            if a in found:
                splits[canon] = Source("voc", a, annotation=root, voc_split=a)
                break
    if "train" not in splits and "trainval" in found:
        splits["train"] = Source("voc", "trainval", annotation=root, voc_split="trainval")
    notes = []
    if not splits:
        xmls = _xml_files(os.path.join(root, "Annotations"))
        splits["all"] = Source("xml", "all", files=xmls, folders=[os.path.join(root, "JPEGImages")])
        notes.append("no ImageSets/Main split lists: every annotation is one pool")
    return Layout(root, "Pascal VOC layout (Annotations/, JPEGImages/, ImageSets/Main/)", splits, notes=notes)


def _resolve_yaml_path(entry: str, base: str | None, yaml_dir: str) -> str | None:
    """A path from a data.yaml as exports write it: as given, under ``path``, under the yaml's
    own folder, or under the yaml's folder without its leading ``../`` (Roboflow)."""
    entry = entry.strip()
    cands = []
    if os.path.isabs(entry):
        cands.append(entry)
    if base:
        cands.append(os.path.join(base, entry))
    cands.append(os.path.join(yaml_dir, entry))
    stripped = entry.replace("\\", "/")
    while stripped.startswith(("../", "./")):
        stripped = stripped.split("/", 1)[1]
    cands.append(os.path.join(yaml_dir, stripped))
    if os.path.isabs(entry):  # a path on another machine's disk: keep its last parts
        parts = stripped.strip("/").split("/")
        cands += [os.path.join(yaml_dir, *parts[i:]) for i in range(1, len(parts))]
    for c in cands:
        if os.path.exists(c):
            return os.path.normpath(c)
    return None


def _yolo_yaml(path: str) -> Layout:
    try:
        with open(path, encoding="utf-8") as f:
            spec = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: invalid YAML ({e})") from None
    if not isinstance(spec, dict) or "names" not in spec:
        raise DatasetError(f"{path}: a YOLO data.yaml needs 'names' (the class names)")
    names = _names_from_yaml(spec["names"], path)
    if "nc" in spec and int(spec["nc"]) != len(names):
        raise DatasetError(f"{path}: nc is {spec['nc']} but 'names' has {len(names)} entries")
    yaml_dir = os.path.dirname(os.path.abspath(path))
    base = spec.get("path")
    base = _resolve_yaml_path(str(base), None, yaml_dir) if base else None
    splits: dict[str, Source] = {}
    notes: list[str] = []
    missing = []
    for key in ("train", "val", "test"):
        entry = spec.get(key)
        if not entry:
            continue
        entries = entry if isinstance(entry, list) else [entry]
        images: list[str] = []
        for e in entries:
            p = _resolve_yaml_path(str(e), base, yaml_dir)
            if p is None:
                missing.append(f"{key}: {e}")
                continue
            if os.path.isdir(p):
                images += list_images(p)
            else:  # a list file of image paths, relative to its own folder or to path
                list_dir = os.path.dirname(p)
                for line in _read_names_file(p):
                    q = _resolve_yaml_path(line, base or list_dir, list_dir)
                    if q is not None:
                        images.append(q)
        if images:
            splits[key] = Source("yolo", key, files=sorted(images))
    if missing:
        found = ", ".join(d for d in _subdirs(yaml_dir)) or "none"
        msg = f"{path}: split(s) not found: {'; '.join(missing)} (folders beside the yaml: {found})"
        if "train" not in splits:
            raise DatasetError(msg)
        notes.append(msg)
    if "train" not in splits:
        raise DatasetError(f"{path}: no training images found")
    for src in splits.values():
        labels_root = {os.path.dirname(os.path.dirname(f)) for f in src.files[:1]}
        for lr in labels_root:
            orphans = orphan_labels(os.path.join(lr, "labels"), src.files)
            if orphans:
                notes.append(
                    f"{len(orphans)} label file(s) without an image in split {src.name}: "
                    + ", ".join(os.path.basename(o) for o in orphans[:5])
                )
    return Layout(yaml_dir, f"YOLO txt labels ({os.path.basename(path)})", splits, names, notes)


def _yaml_file(root: str) -> str | None:
    ymls = _files(root, (".yaml", ".yml"))
    for pref in ("data.yaml", "dataset.yaml", "data.yml"):
        for p in ymls:
            if os.path.basename(p) == pref:
                return p
    for p in ymls:
        try:
            with open(p, encoding="utf-8") as f:
                spec = yaml.safe_load(f)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(spec, dict) and "names" in spec and "train" in spec:
            return p
    return None


def detect_layout(root: str, format: str = "auto") -> Layout:
    """Detect the layout and format of a dataset folder (or a data.yaml / JSON / CSV file).

    Args:
        root: the dataset folder, or one annotation file.
        format: ``auto`` or one of ``voc``, ``xml``, ``coco``, ``yolo``, ``csv`` to restrict
            what is looked for.

    Returns:
        A :class:`Layout`; raises :class:`DatasetError` naming what was found when nothing fits.
    """
    if format not in FORMATS:
        raise DatasetError(f"data.format must be one of {', '.join(FORMATS)}, got {format!r}")
    want = None if format in ("auto", "folder") else format
    if os.path.isfile(root):
        ext = os.path.splitext(root)[1].lower()
        folder = os.path.dirname(os.path.abspath(root))
        if ext in (".yaml", ".yml"):
            return _yolo_yaml(root)
        if ext == ".json":
            return Layout(
                folder,
                "COCO JSON",
                {"all": Source("coco", "all", annotation=root, image_dir=_coco_image_dir(root, folder))},
            )
        if ext == ".csv":
            img = os.path.join(folder, "images") if os.path.isdir(os.path.join(folder, "images")) else folder
            return Layout(folder, "CSV boxes", {"all": Source("csv", "all", annotation=root, image_dir=img)})
        raise DatasetError(f"{root}: not a dataset folder, data.yaml, COCO JSON or CSV file")
    if not os.path.isdir(root):
        raise DatasetError(f"dataset folder not found: {root}")

    if want in (None, "yolo"):
        y = _yaml_file(root)
        if y:
            return _yolo_yaml(y)
    if want in (None, "voc") and os.path.isdir(os.path.join(root, "Annotations")):
        if os.path.isdir(os.path.join(root, "JPEGImages")) or want == "voc":
            return _voc(root)

    # COCO's official layout: annotations/instances_<split>.json
    ann_dir = os.path.join(root, "annotations")
    instances = sorted(glob.glob(os.path.join(ann_dir, "instances_*.json")))
    if want in (None, "coco") and instances:
        splits = {}
        for p in instances:
            split = os.path.splitext(os.path.basename(p))[0][len("instances_") :]
            canon = canonical_split(split.rstrip("0123456789")) or split
            splits.setdefault(canon, Source("coco", split, annotation=p, image_dir=_coco_image_dir(p, root)))
        return Layout(root, "COCO JSON, official layout (annotations/instances_<split>.json)", splits)

    # YOLO: images/<split> beside labels/<split>
    img_dir, lab_dir = os.path.join(root, "images"), os.path.join(root, "labels")
    if want in (None, "yolo") and os.path.isdir(img_dir) and os.path.isdir(lab_dir) and not _xml_files(lab_dir):
        names = _classes_txt(root, lab_dir)
        splits = {}
        for d in _subdirs(img_dir):
            canon = canonical_split(d)
            if canon:
                splits[canon] = Source("yolo", d, files=list_images(os.path.join(img_dir, d)))
        if not splits:
            splits["all"] = Source("yolo", "all", files=list_images(img_dir))
        notes = []
        orphans = orphan_labels(lab_dir, [f for src in splits.values() for f in src.files])
        if orphans:
            shown = ", ".join(os.path.relpath(o, root) for o in orphans[:5])
            notes.append(f"{len(orphans)} label file(s) without an image: {shown}")
        return Layout(root, "YOLO txt labels (images/ beside labels/)", splits, names, notes)

    # split folders, each holding one pool in any format
    split_dirs = {}
    for d in _subdirs(root):
        canon = canonical_split(d)
        if canon and canon not in split_dirs:
            split_dirs[canon] = d
    if split_dirs:
        splits = {}
        for canon, d in split_dirs.items():
            src = _single(os.path.join(root, d), d, root)
            if src is not None and (want is None or _matches(src.format, want)):
                splits[canon] = src
        if splits:
            formats = sorted({s.format for s in splits.values()})
            names = _classes_txt(root) if "yolo" in formats else None
            return Layout(
                root,
                f"{_FORMAT_NAMES['/'.join(formats)] if len(formats) == 1 else formats} in split folders",
                splits,
                names,
            )

    src = _single(root, "all", root)
    if src is not None and (want is None or _matches(src.format, want)):
        names = _classes_txt(root, os.path.join(root, "labels")) if src.format == "yolo" else None
        lists = _split_lists(root) if src.format == "xml" else {}
        if lists:
            splits = {canon: _filter_by_list(src, p, canon) for canon, p in lists.items()}
            return Layout(
                root,
                f"{_FORMAT_NAMES['xml']} with split lists ({', '.join(lists.values())})".replace(root + os.sep, ""),
                splits,
            )
        return Layout(root, _FORMAT_NAMES[src.format], {"all": src}, names)

    found = ", ".join(_subdirs(root)[:10]) or "no folders"
    files = sorted({os.path.splitext(f)[1].lower() for f in os.listdir(root) if "." in f})
    raise DatasetError(
        f"{root}: no dataset layout recognised (folders: {found}; file types: {', '.join(files) or 'none'}). "
        "Expected Pascal VOC, VOC XML files, COCO JSON, YOLO txt (images/ + labels/ or a data.yaml) or a CSV "
        "of boxes; see the README's 'Train on your own data'"
    )


_FORMAT_NAMES = {
    "voc": "Pascal VOC layout",
    "xml": "VOC XML files",
    "coco": "COCO JSON",
    "yolo": "YOLO txt labels",
    "csv": "CSV boxes",
}


def _matches(found: str, want: str) -> bool:
    return found == want or (want == "voc" and found == "xml")
