"""Layout and format detection (multibox.data.layout) and the readers behind it: every layout
is written here from one set of boxes, and the same boxes must come back from each."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers import voc_xml, write_coco
from multibox.data.base import DatasetError
from multibox.data.layout import detect_layout

NAMES = ["cat", "dog", "fox"]
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")


def make_items(n=6, seed=0):
    """``[(stem, (h, w), boxes (K, 4) int pixels, labels 0-based)]``; sizes vary, one image is empty."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        w, h = int(rng.integers(80, 200)), int(rng.integers(60, 160))
        k = 0 if i == n - 1 else int(rng.integers(1, 4))
        x1 = rng.integers(0, w // 2, k)
        y1 = rng.integers(0, h // 2, k)
        boxes = np.stack([x1, y1, x1 + rng.integers(8, w // 2, k), y1 + rng.integers(8, h // 2, k)], 1)
        items.append((f"im{i:02d}", (h, w), boxes.reshape(-1, 4), rng.integers(0, 3, k)))
    return items


def write_images(folder, items, ext=".jpg"):
    os.makedirs(folder, exist_ok=True)
    for stem, (h, w), _, _ in items:
        Image.new("RGB", (w, h), (90, 90, 90)).save(os.path.join(folder, stem + ext))


def write_xml(folder, items, filename_ext=".jpg"):
    os.makedirs(folder, exist_ok=True)
    for stem, (h, w), boxes, labels in items:
        objs = [(NAMES[c], b.tolist(), False) for b, c in zip(boxes, labels)]
        with open(os.path.join(folder, stem + ".xml"), "w") as f:
            f.write(voc_xml(stem + filename_ext, w, h, objs))


def write_yolo(folder, items):
    os.makedirs(folder, exist_ok=True)
    for stem, (h, w), boxes, labels in items:
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2 / w, (boxes[:, 1] + boxes[:, 3]) / 2 / h
        bw, bh = (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h
        lines = [f"{c} {x:.8f} {y:.8f} {a:.8f} {b:.8f}" for c, x, y, a, b in zip(labels, cx, cy, bw, bh)]
        with open(os.path.join(folder, stem + ".txt"), "w") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))


def coco_dict(items, prefix=""):
    images, anns = [], []
    for i, (stem, (h, w), boxes, labels) in enumerate(items):
        images.append({"id": i + 1, "file_name": prefix + stem + ".jpg", "width": w, "height": h})
        for b, c in zip(boxes, labels):
            x1, y1, x2, y2 = (float(v) for v in b)
            bbox = [x1, y1, x2 - x1, y2 - y1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 5, "bbox": bbox})
    cats = [{"id": c + 5, "name": n} for c, n in enumerate(NAMES)]
    return images, anns, cats


def write_csv(path, items):
    with open(path, "w") as f:
        f.write("filename,width,height,class,xmin,ymin,xmax,ymax\n")
        for stem, (h, w), boxes, labels in items:
            if not len(boxes):
                f.write(f"{stem}.jpg,{w},{h},,,,,\n")
            for b, c in zip(boxes, labels):
                f.write(f"{stem}.jpg,{w},{h},{NAMES[c]},{b[0]},{b[1]},{b[2]},{b[3]}\n")


def boxes_by_stem(ds):
    """``{stem: sorted [(class name, x1, y1, x2, y2)]}`` of a dataset, rounded to 1e-3 px."""
    out = {}
    for r in ds.records:
        stem = os.path.splitext(os.path.basename(r.image_path))[0]
        out[stem] = sorted((ds.class_names[label - 1], *np.round(b, 3).tolist()) for b, label in zip(r.boxes, r.labels))
    return out


def expected(items):
    return {
        stem: sorted((NAMES[c], *[float(v) for v in b]) for b, c in zip(boxes, labels))
        for stem, _, boxes, labels in items
    }


ITEMS = make_items()
TRAIN, VAL = ITEMS[:4], ITEMS[4:]


def check(layout, splits, fmt_word):
    assert fmt_word in layout.description
    assert list(layout.splits) == list(splits)
    for name, items in splits.items():
        ds = layout.load(name, NAMES)
        assert boxes_by_stem(ds) == expected(items)


# --- one layout per test, written from ITEMS ------------------------------------------------------


def test_voc_layout(tmp_path):
    root = tmp_path / "voc"
    write_images(root / "JPEGImages", ITEMS)
    write_xml(root / "Annotations", ITEMS)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(s for s, *_ in TRAIN))
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(s for s, *_ in VAL))
    check(detect_layout(str(root)), {"train": TRAIN, "val": VAL}, "Pascal VOC")


def test_xml_side_by_side_with_jpeg_on_disk(tmp_path):
    """LabelImg's default: XML beside the images; the XML says .jpg, the disk has .jpeg."""
    write_images(tmp_path / "flat", ITEMS, ext=".jpeg")
    write_xml(tmp_path / "flat", ITEMS, filename_ext=".jpg")
    check(detect_layout(str(tmp_path / "flat")), {"all": ITEMS}, "VOC XML")
    # a Windows path in <path> and in <filename>, and a <size> of 0: the image is found by name
    xml = tmp_path / "flat" / "im00.xml"
    text = xml.read_text().replace("<filename>im00.jpg", "<filename>C:\\Users\\me\\Pictures\\im00.jpg")
    xml.write_text(text.replace("<width>", "<width>0<!--").replace("</width>", "--></width>"))
    check(detect_layout(str(tmp_path / "flat")), {"all": ITEMS}, "VOC XML")


@pytest.mark.parametrize("ann_dir", ["annots", "label", "xml"])
def test_xml_in_two_folders_of_any_name(tmp_path, ann_dir):
    write_images(tmp_path / "d" / "pictures", ITEMS, ext=".png")
    write_xml(tmp_path / "d" / ann_dir, ITEMS, filename_ext="")  # no extension in <filename>
    check(detect_layout(str(tmp_path / "d")), {"all": ITEMS}, "VOC XML")


def test_xml_split_folders_and_split_lists(tmp_path):
    for split, items in (("train", TRAIN), ("valid", VAL)):
        write_images(tmp_path / "s" / split / "images", items)
        write_xml(tmp_path / "s" / split / "annotations", items)
    check(detect_layout(str(tmp_path / "s")), {"train": TRAIN, "val": VAL}, "in split folders")
    # the raccoon layout: images/, annotations/ and <split>.txt lists of image names
    root = tmp_path / "lists"
    write_images(root / "images", ITEMS)
    write_xml(root / "annotations", ITEMS)
    (root / "train.txt").write_text("\n".join(s + ".jpg" for s, *_ in TRAIN))
    (root / "test.txt").write_text("\n".join(s + ".jpg" for s, *_ in VAL))
    check(detect_layout(str(root)), {"train": TRAIN, "test": VAL}, "split lists")


def test_coco_official_roboflow_and_single_json(tmp_path):
    root = tmp_path / "official"
    for split, items in (("train2017", TRAIN), ("val2017", VAL)):
        write_images(root / split, items)
        (root / "annotations").mkdir(exist_ok=True)
        write_coco(root / "annotations" / f"instances_{split}.json", *coco_dict(items))
    check(detect_layout(str(root)), {"train": TRAIN, "val": VAL}, "official layout")

    root = tmp_path / "roboflow"
    for split, items in (("train", TRAIN), ("valid", VAL)):
        write_images(root / split, items)
        write_coco(root / split / "_annotations.coco.json", *coco_dict(items))
    check(detect_layout(str(root)), {"train": TRAIN, "val": VAL}, "COCO JSON in split folders")

    root = tmp_path / "single"
    write_images(root / "images", ITEMS)
    write_coco(root / "labels.json", *coco_dict(ITEMS))
    check(detect_layout(str(root)), {"all": ITEMS}, "COCO")


def test_coco_image_folder_found_when_images_come_after_a_large_annotation_list(tmp_path):
    """Detection samples image names from the head of a COCO file; a file whose first megabyte
    holds no image entry (annotations written first) is read whole instead."""
    root = tmp_path / "late"
    write_images(root / "train2017", ITEMS)
    images, anns, cats = coco_dict(ITEMS)
    padding = [
        {"id": 10_000 + k, "image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 2], "iscrowd": 1} for k in range(20_000)
    ]
    (root / "annotations").mkdir()
    with open(root / "annotations" / "instances_train2017.json", "w") as f:
        json.dump({"annotations": anns + padding, "categories": cats, "images": images}, f)
    assert os.path.getsize(root / "annotations" / "instances_train2017.json") > 1_000_000
    layout = detect_layout(str(root))
    assert layout.splits["train"].image_dir == str(root / "train2017")
    assert len(layout.load("train", NAMES)) == len(ITEMS)


def test_yolo_images_labels_split_subfolders_and_classes_txt(tmp_path):
    root = tmp_path / "y1"
    for split, items in (("train", TRAIN), ("val", VAL)):
        write_images(root / "images" / split, items)
        write_yolo(root / "labels" / split, items)
    (root / "classes.txt").write_text("\n".join(NAMES))
    layout = detect_layout(str(root))
    assert layout.class_names == NAMES
    check(layout, {"train": TRAIN, "val": VAL}, "YOLO")
    root = tmp_path / "y2"  # <split>/images beside <split>/labels
    for split, items in (("train", TRAIN), ("test", VAL)):
        write_images(root / split / "images", items)
        write_yolo(root / split / "labels", items)
    (root / "classes.txt").write_text("\n".join(NAMES))
    check(detect_layout(str(root)), {"train": TRAIN, "test": VAL}, "YOLO")


def test_yolo_data_yaml_as_exports_write_it(tmp_path):
    """Roboflow writes ../train/images; other exports a path: on another machine; names as a dict."""
    root = tmp_path / "rf"
    for split, items in (("train", TRAIN), ("valid", VAL)):
        write_images(root / split / "images", items)
        write_yolo(root / split / "labels", items)
    spec = {"train": "../train/images", "val": "../valid/images", "nc": 3, "names": NAMES}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    check(detect_layout(str(root)), {"train": TRAIN, "val": VAL}, "YOLO")
    spec = {
        "path": "/home/someone/datasets/rf",
        "train": "train/images",
        "val": "valid/images",
        "names": {0: "cat", 1: "dog", 2: "fox"},
    }
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    check(detect_layout(str(root)), {"train": TRAIN, "val": VAL}, "YOLO")
    # a list file of image paths as the split
    (root / "train_list.txt").write_text("\n".join(f"./train/images/{s}.jpg" for s, *_ in TRAIN))
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "train_list.txt", "names": NAMES}))
    check(detect_layout(str(root / "data.yaml")), {"train": TRAIN}, "YOLO")


def test_yolo_yaml_split_not_found_is_named(tmp_path):
    root = tmp_path / "rf"
    write_images(root / "train" / "images", TRAIN)
    write_yolo(root / "train" / "labels", TRAIN)
    (root / "data.yaml").write_text(
        yaml.safe_dump({"train": "train/images", "val": "validation/images", "names": NAMES})
    )
    layout = detect_layout(str(root))
    assert list(layout.splits) == ["train"]
    assert any("val: validation/images" in n and "train" in n for n in layout.notes)  # named, with the folders found
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "nowhere/images", "names": NAMES}))
    with pytest.raises(DatasetError, match=r"train: nowhere/images.*folders beside the yaml: train"):
        detect_layout(str(root))


def test_csv_table(tmp_path):
    write_images(tmp_path / "c" / "images", ITEMS)
    write_csv(tmp_path / "c" / "boxes.csv", ITEMS)
    check(detect_layout(str(tmp_path / "c")), {"all": ITEMS}, "CSV")


def test_nothing_recognised_names_what_was_found(tmp_path):
    (tmp_path / "x" / "stuff").mkdir(parents=True)
    (tmp_path / "x" / "notes.md").write_text("hi")
    with pytest.raises(DatasetError, match=r"no dataset layout recognised \(folders: stuff; file types: \.md\)"):
        detect_layout(str(tmp_path / "x"))


# --- bad input -------------------------------------------------------------------------------------


def test_yolo_bad_labels_named_or_skipped_and_counted(tmp_path):
    root = tmp_path / "y"
    write_images(root / "images", ITEMS)
    write_yolo(root / "labels", ITEMS)
    (root / "classes.txt").write_text("\n".join(NAMES))
    (root / "labels" / "im00.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    layout = detect_layout(str(root))
    with pytest.raises(DatasetError, match=r"im00.txt:1: class 7 is out of range \(the dataset has 3 classes"):
        layout.load("all")
    ds = layout.load("all", skip_bad=True)
    assert len(ds) == len(ITEMS) - 1 and ds.problems.skipped_files == ["im00.jpg"]
    os.remove(root / "labels" / "im01.txt")  # a missing label file: an image without objects
    (root / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    layout = detect_layout(str(root))
    assert layout.notes == ["1 label file(s) without an image: labels/ghost.txt"]
    ds = layout.load("all", skip_bad=True)
    assert boxes_by_stem(ds)["im01"] == []


def test_unreadable_image_header_in_xml_data_named_or_skipped_and_counted(tmp_path):
    write_images(tmp_path / "flat", ITEMS)
    write_xml(tmp_path / "flat", ITEMS)
    (tmp_path / "flat" / "im01.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    layout = detect_layout(str(tmp_path / "flat"))
    with pytest.raises(ValueError, match=r"im01.jpg: not a readable image"):
        layout.load("all")
    ds = layout.load("all", skip_bad=True)
    assert len(ds) == len(ITEMS) - 1 and ds.problems.skipped_files == ["im01.jpg"]
    assert "not a readable image" in ds.problems.skip_reasons[0]


def test_yolo_orphan_labels_reported(tmp_path):
    root = tmp_path / "rf"
    write_images(root / "train" / "images", TRAIN)
    write_yolo(root / "train" / "labels", TRAIN)
    (root / "train" / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "train/images", "names": NAMES}))
    assert any("1 label file(s) without an image" in n and "ghost.txt" in n for n in detect_layout(str(root)).notes)


def test_names_that_climb_out_are_refused_links_inside_are_followed(tmp_path):
    real = tmp_path / "elsewhere"
    write_images(real, ITEMS)
    root = tmp_path / "linked"
    root.mkdir()
    os.symlink(real, root / "images")  # a dataset assembled with a symbolic link
    write_csv(root / "boxes.csv", ITEMS)
    check(detect_layout(str(root)), {"all": ITEMS}, "CSV")
    (root / "boxes.csv").write_text("filename,width,height,class,xmin,ymin,xmax,ymax\n../secret.jpg,5,5,cat,1,1,2,2\n")
    with pytest.raises(DatasetError, match="points outside the dataset folder"):
        detect_layout(str(root)).load("all")


# --- the shipped datasets, converted into each format ----------------------------------------------


def _bccd_items(n=12):
    bccd = os.path.join(SHARED, "bccd")
    if not os.path.isdir(bccd):
        pytest.skip(f"BCCD not found at {bccd} (see ../shared/datasets/README.md)")
    ds = detect_layout(bccd).load("train", ["Platelets", "RBC", "WBC"])
    return ds, ds.records[:n]


@pytest.mark.parametrize("fmt", ["xml", "coco", "yolo", "csv"])
def test_bccd_converted_to_each_format_gives_the_same_boxes(tmp_path, fmt):
    ds, records = _bccd_items()
    names = ds.class_names
    root = tmp_path / fmt
    (root / "images").mkdir(parents=True)
    items = []
    for r in records:
        stem = os.path.splitext(os.path.basename(r.image_path))[0]
        os.symlink(os.path.abspath(r.image_path), root / "images" / (stem + ".jpg"))
        items.append((stem, r.size, r.boxes, r.labels - 1))
    global NAMES
    saved, NAMES = NAMES, names
    try:
        if fmt == "xml":
            write_xml(root / "annotations", items)
        elif fmt == "coco":
            write_coco(root / "annotations.json", *coco_dict(items))
        elif fmt == "yolo":
            write_yolo(root / "labels", items)
            (root / "classes.txt").write_text("\n".join(names))
        else:
            write_csv(root / "boxes.csv", items)
        out = detect_layout(str(root)).load("all", names)
    finally:
        NAMES = saved
    want = {os.path.splitext(os.path.basename(r.image_path))[0]: r for r in records}
    assert len(out) == len(records)
    for r in out.records:
        ref = want[os.path.splitext(os.path.basename(r.image_path))[0]]
        assert r.labels.tolist() == ref.labels.tolist()
        tol = 1e-3 if fmt != "yolo" else 2e-4 * max(ref.size)  # YOLO's normalised text: 8 decimals
        np.testing.assert_allclose(r.boxes, ref.boxes, atol=tol)


def test_shipped_datasets_detected_as_published():
    for name, desc, splits in [
        ("bccd", "Pascal VOC", ["train", "val", "test"]),
        ("raccoon", "split lists", ["train", "test"]),
        ("chess", "COCO JSON in split folders", ["train", "val", "test"]),
    ]:
        root = os.path.join(SHARED, name)
        if not os.path.isdir(root):
            pytest.skip(f"{name} not found at {root}")
        layout = detect_layout(root)
        assert desc in layout.description and list(layout.splits) == splits
    assert json.dumps(layout.splits["val"].name) == '"valid"'
