import os

import numpy as np
import pytest
from PIL import Image

from conftest import dataset_dir
from helpers import logs_warning, make_voc, voc_xml, write_coco
from multibox.data.base import DatasetError
from multibox.data.coco import coco_dataset
from multibox.data.image import ImageReadError, read_image
from multibox.data.voc import parse_voc_xml, voc_dataset, xml_folder_dataset

# --- real data (skipped when absent) ------------------------------------------------


def test_bccd_voc_layout():
    root = dataset_dir("bccd")
    with logs_warning(r"dropped 1 degenerate box.*BloodImage_00343"):
        train = voc_dataset(str(root), "train")
    assert len(train) == 205 and train.class_names == ["Platelets", "RBC", "WBC"]
    with logs_warning("BloodImage_00338"):
        val = voc_dataset(str(root), "val", train.class_names)
    test = voc_dataset(str(root), "test", train.class_names)
    assert (len(val), len(test)) == (87, 72)
    s = test[0]
    assert s["image"].shape == (480, 640, 3) and s["image"].dtype == np.uint8
    assert s["boxes"].dtype == np.float32 and (s["boxes"][:, 2] <= 640).all() and (s["boxes"][:, 3] <= 480).all()
    assert set(np.unique(s["labels"])) <= {1, 2, 3}
    assert sum(test.class_counts().values()) == 805 + 69 + 71


def test_raccoon_folder_layout_ignores_foreign_paths():
    root = dataset_dir("raccoon")
    train = xml_folder_dataset(str(root), "train")
    test = xml_folder_dataset(str(root), "test", class_names=train.class_names)
    assert (len(train), len(test)) == (160, 40) and train.class_names == ["raccoon"]
    r = train.records[0]
    assert r.image_path.startswith(str(root)) and os.path.isfile(r.image_path)
    s = train[0]
    assert s["image"].shape[:2] == s["size"]


def test_chess_coco_non_contiguous_and_stray_categories():
    root = dataset_dir("chess")
    with logs_warning("'bishop' x1"):
        train = coco_dataset(str(root / "train" / "_annotations.coco.json"), min_annotations=2)
    assert len(train) == 202 and len(train.class_names) == 12
    assert train.category_ids == list(range(2, 14))  # 0 (empty 'pieces') and 1 (one stray box) dropped
    valid = coco_dataset(str(root / "valid" / "_annotations.coco.json"), class_names=train.class_names)
    assert len(valid) == 58 and valid.category_ids == train.category_ids
    assert train[0]["image"].shape == (1371, 2048, 3)


# --- small files made here ------------------------------------------------------------


def test_voc_layout_clipping_and_degenerate_boxes(tmp_path):
    root = make_voc(str(tmp_path / "voc"), n=2)
    xml = tmp_path / "voc" / "Annotations" / "img000.xml"
    xml.write_text(
        voc_xml(
            "img000.jpg",
            160,
            120,
            [
                ("red", [-5, 10, 50, 130], False),  # crosses the border: clipped
                ("blue", [30, 30, 30, 60], False),  # zero width: dropped
                ("green", [10, 10, 20, 20], True),  # difficult kept
            ],
        )
    )
    with logs_warning(r"dropped 1 degenerate box.*img000.jpg"):
        ds = voc_dataset(root, "train")
    r = ds.records[0]
    assert r.boxes.tolist() == [[0, 10, 50, 120], [10, 10, 20, 20]]
    assert r.difficult.tolist() == [False, True]
    assert ds.problems.clipped == 1


def test_voc_errors_name_the_file(tmp_path):
    root = make_voc(str(tmp_path / "voc"), n=3)
    ann = tmp_path / "voc" / "Annotations"
    (ann / "img001.xml").write_text("<annotation><object><name>red")
    with pytest.raises(DatasetError, match=r"img001.xml: malformed XML"):
        voc_dataset(root, "train")
    with logs_warning(r"skipped 1 unreadable or malformed file.*img001.xml"):
        ds = voc_dataset(root, "train", skip_bad=True)
    assert len(ds) == 2
    (ann / "img001.xml").write_text("<annotation><object><name>red</name></object></annotation>")
    with pytest.raises(DatasetError, match=r"img001.xml: object 0 \(red\) has no <bndbox>"):
        voc_dataset(root, "train")
    (ann / "img001.xml").write_text(voc_xml("img001.jpg", 160, 120, [("red", ["a", 1, 2, 3], False)]))
    with pytest.raises(DatasetError, match=r"img001.xml: .*non-numeric <xmin>: 'a'"):
        voc_dataset(root, "train")
    (ann / "img001.xml").write_text(voc_xml("img001.jpg", 160, 120, [("red", [1, 1, 20, 30], False)]))
    os.remove(tmp_path / "voc" / "JPEGImages" / "img002.jpg")
    with pytest.raises(DatasetError, match=r"img002.xml: image file not found"):
        voc_dataset(root, "train")


def test_class_names_from_user_ignore_and_count_others(tmp_path):
    root = make_voc(str(tmp_path / "voc"), n=6)
    with logs_warning("ignored objects of classes not in the class list"):
        ds = voc_dataset(root, "train", class_names=["red"])
    assert ds.class_names == ["red"] and all((r.labels == 1).all() for r in ds.records)


def test_folder_layout_with_split_file(tmp_path):
    root = tmp_path / "rac"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for i in range(3):
        Image.new("RGB", (50, 40), (i * 50, 0, 0)).save(root / "images" / f"pic-{i}.png")
        (root / "annotations" / f"pic-{i}.xml").write_text(
            voc_xml(f"pic-{i}.png", 50, 40, [("thing", [1, 2, 30, 20], False)])
        )
    (root / "train.txt").write_text("pic-0.jpg\npic-2\n")
    ds = xml_folder_dataset(str(root), "train")
    assert [os.path.basename(r.image_path) for r in ds.records] == ["pic-0.png", "pic-2.png"]
    assert len(xml_folder_dataset(str(root), None)) == 3


def test_image_modes_become_upright_rgb(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:5, :] = (255, 0, 0)  # red stripe at the top
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 30), 128, np.uint8)])).save(tmp_path / "rgba.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(tmp_path / "16bit.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    for name in ("gray.png", "rgba.png", "palette.png", "16bit.png", "cmyk.jpg"):
        im = read_image(tmp_path / name)
        assert im.shape == (20, 30, 3) and im.dtype == np.uint8, name
        assert im[0, 0, 0] > 200 and im[15, 0].max() < 60, name
    # EXIF orientation 6 (rotate 90 clockwise to view): stored 30x20 becomes 20 wide, 30 tall
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:, :5] = 255  # white stripe on the stored left edge -> top after rotation
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    up = read_image(tmp_path / "rot.jpg")
    assert up.shape == (30, 20, 3)
    assert up[:4].mean() > 200 and up[10:].mean() < 30


def test_unreadable_images_raise_named_errors(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match="empty.jpg: image file is empty"):
        read_image(tmp_path / "empty.jpg")
    with pytest.raises(ImageReadError, match="text.jpg: not a readable image"):
        read_image(tmp_path / "text.jpg")
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match="decompression bomb"):
        read_image(tmp_path / "big.png", max_pixels=1000)


def _coco(tmp_path, images=None, annotations=None, categories=None):
    for i in (1, 2, 3):
        Image.new("RGB", (100, 80)).save(tmp_path / f"{i}.jpg")
    images = (
        images
        if images is not None
        else [
            {"id": 10, "file_name": "1.jpg", "width": 100, "height": 80},
            {"id": 20, "file_name": "2.jpg", "width": 100, "height": 80},
            {"id": 30, "file_name": "3.jpg", "width": 100, "height": 80},  # no annotations: a negative
        ]
    )
    annotations = (
        annotations
        if annotations is not None
        else [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [10, 10, 20, 30], "iscrowd": 0},
            {"id": 2, "image_id": 20, "category_id": 3, "bbox": [90, 70, 20, 20], "iscrowd": 0},  # clipped
            {"id": 3, "image_id": 20, "category_id": 7, "bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
        ]
    )
    categories = (
        categories
        if categories is not None
        else [{"id": 0, "name": "super"}, {"id": 3, "name": "b"}, {"id": 7, "name": "a"}]
    )
    write_coco(tmp_path / "ann.json", images, annotations, categories)
    return str(tmp_path / "ann.json")


def test_coco_ids_empty_categories_and_negatives(tmp_path):
    with logs_warning("dropped 1 degenerate box"):
        ds = coco_dataset(_coco(tmp_path))
    assert ds.class_names == ["b", "a"] and ds.category_ids == [3, 7]
    assert len(ds) == 3 and len(ds.records[2].labels) == 0
    assert ds.records[0].labels.tolist() == [2] and ds.records[0].boxes.tolist() == [[10, 10, 30, 40]]
    assert ds.records[1].boxes.tolist() == [[90, 70, 100, 80]]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"annotations": [{"id": 1, "image_id": 10, "category_id": 99, "bbox": [1, 1, 5, 5]}]},
            "unknown category id 99",
        ),
        (
            {"annotations": [{"id": 1, "image_id": 77, "category_id": 3, "bbox": [1, 1, 5, 5]}]},
            r"image id\(s\) \[77\] missing",
        ),
        (
            {
                "annotations": [
                    {"id": 1, "image_id": 10, "category_id": 3, "bbox": [1, 1, 5, 5]},
                    {"id": 1, "image_id": 10, "category_id": 3, "bbox": [1, 1, 5, 5]},
                ]
            },
            r"duplicate annotation id",
        ),
        ({"annotations": [{"id": 1, "image_id": 10, "category_id": 3, "bbox": "oops"}]}, "malformed bbox"),
        (
            {"images": [{"id": 10, "file_name": "../../outside.jpg", "width": 5, "height": 5}], "annotations": []},
            "points outside the dataset folder",
        ),
    ],
)
def test_coco_bad_inputs(tmp_path, change, message):
    with pytest.raises(DatasetError, match=message):
        coco_dataset(_coco(tmp_path, **change))


def test_parse_voc_xml_returns_filename_and_objects(tmp_path):
    p = tmp_path / "a.xml"
    p.write_text(voc_xml("a.jpg", 10, 10, [("cat", [1, 2, 3, 4], True)]))
    assert parse_voc_xml(str(p)) == ("a.jpg", [("cat", [1.0, 2.0, 3.0, 4.0], True)], (10, 10))
    p.write_text(voc_xml("a.jpg", 0, 0, []))  # a <size> of 0 says nothing
    assert parse_voc_xml(str(p)) == ("a.jpg", [], None)


def test_split_slices_are_disjoint_reproducible_and_cover_the_split(tmp_path):
    from multibox.config import DataConfig
    from multibox.data.build import load_split, split_slice

    make_voc(tmp_path, n=10)
    cfg = DataConfig(format="voc", root=str(tmp_path))
    assert split_slice("train") is None
    assert split_slice("train[:20%]") == ("train", 0.0, 0.2)
    assert split_slice("train[20%:]") == ("train", 0.2, 1.0)
    with pytest.raises(ValueError, match="percent"):
        split_slice("train[50%:20%]")
    whole = load_split(cfg, "train")
    val, rest = load_split(cfg, "train[:20%]"), load_split(cfg, "train[20%:]")
    ids = lambda d: [r.image_id for r in d.records]
    assert len(val) == 2 and len(rest) == 8 and val.name.endswith("train[:20%]")
    assert not set(ids(val)) & set(ids(rest))
    assert sorted(ids(val) + ids(rest)) == sorted(ids(whole))
    assert ids(load_split(cfg, "train[:20%]")) == ids(val)  # same cut every time
    # records keep the split list's order inside a slice
    order = ids(whole)
    assert ids(rest) == [i for i in order if i in set(ids(rest))]


# --- annotations that disagree with their images, lists with repeats -----------------------


def _one_voc(tmp_path, declared, boxes, actual=(160, 120)):
    root = make_voc(str(tmp_path / "voc"), n=2)
    Image.new("RGB", actual).save(tmp_path / "voc" / "JPEGImages" / "img000.jpg")
    objs = [("red", b, False) for b in boxes]
    (tmp_path / "voc" / "Annotations" / "img000.xml").write_text(voc_xml("img000.jpg", *declared, objs))
    return root


def test_voc_size_of_a_resized_image_rescales_its_boxes(tmp_path):
    """The image was shrunk 4x after labelling: <size> says 640x480, the file is 160x120."""
    root = _one_voc(tmp_path, (640, 480), [[50, 50, 400, 300], [600, 20, 640, 460]])
    with logs_warning(r"rescaled the boxes of 1 image\(s\).*img000.jpg"):
        ds = voc_dataset(root, "train")
    assert ds.records[0].boxes.tolist() == [[12.5, 12.5, 100, 75], [150, 5, 160, 115]]
    assert ds.problems.rescaled == ["img000.jpg"] and ds.problems.clipped == 0


def test_voc_wrong_size_with_boxes_inside_the_image_is_ignored(tmp_path):
    root = _one_voc(tmp_path, (999, 20), [[10, 10, 150, 110]])
    with logs_warning(r"ignored a wrong image size in the annotation of 1 image\(s\).*img000.jpg"):
        ds = voc_dataset(root, "train")
    assert ds.records[0].boxes.tolist() == [[10, 10, 150, 110]] and ds.records[0].size == (120, 160)


def test_voc_size_that_fits_nothing_is_named_or_skipped(tmp_path):
    root = _one_voc(tmp_path, (300, 300), [[10, 10, 290, 290]])  # neither 160x120 nor a scale of it
    with pytest.raises(
        DatasetError, match=r"img000.jpg: the annotation says the image is 300x300 but the file is 160x120"
    ):
        voc_dataset(root, "train")
    ds = voc_dataset(root, "train", skip_bad=True)
    assert len(ds) == 1 and ds.problems.skipped_files == ["img000.jpg"]


def test_coco_sizes_are_checked_against_the_image_when_built(tmp_path):
    images = [
        {"id": 10, "file_name": "1.jpg", "width": 400, "height": 320},  # the file is 100x80: 4x, rescaled
        {"id": 20, "file_name": "2.jpg", "width": 100, "height": 80},
        {"id": 30, "file_name": "3.jpg", "width": 50, "height": 50},  # neither
    ]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [40, 40, 320, 240]},
        {"id": 2, "image_id": 30, "category_id": 7, "bbox": [10, 10, 95, 75]},
    ]
    with pytest.raises(DatasetError, match=r"3.jpg: the annotation says the image is 50x50 but the file is 100x80"):
        coco_dataset(_coco(tmp_path, images, annotations))
    ds = coco_dataset(_coco(tmp_path, images, annotations), skip_bad=True)
    assert [r.image_id for r in ds.records] == [10, 20] and ds.problems.rescaled == ["1.jpg"]
    assert ds.records[0].boxes.tolist() == [[10, 10, 90, 70]]


def test_split_list_with_repeats_and_spaces(tmp_path):
    root = make_voc(str(tmp_path / "voc"), n=3)
    ann = tmp_path / "voc" / "Annotations"
    os.rename(ann / "img001.xml", ann / "my photo 1.xml")
    lists = tmp_path / "voc" / "ImageSets" / "Main"
    (lists / "train.txt").write_text("img000\nmy photo 1\nimg002 -1\nimg000\n")
    with pytest.raises(DatasetError, match=r"train.txt: 'img000' is listed twice \(lines 1 and 4\)"):
        voc_dataset(root, "train")
    with logs_warning(r"dropped 1 entr\(ies\) listed twice: img000"):
        ds = voc_dataset(root, "train", skip_bad=True)
    assert [os.path.basename(r.image_path) for r in ds.records] == ["img000.jpg", "img001.jpg", "img002.jpg"]
    (lists / "train.txt").write_text("img000\nimg002\n")
    (lists / "val.txt").write_text("img000\n")
    with pytest.raises(DatasetError, match=r"img000.jpg is listed twice"):  # joined splits that share an image
        voc_dataset(root, "train+val")


def test_coco_categories_of_one_name_are_one_class(tmp_path):
    categories = [{"id": 3, "name": "cat"}, {"id": 7, "name": "cat"}, {"id": 9, "name": "dog"}]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 3, "bbox": [10, 10, 20, 30]},
        {"id": 2, "image_id": 20, "category_id": 7, "bbox": [10, 10, 20, 30]},
        {"id": 3, "image_id": 20, "category_id": 9, "bbox": [40, 10, 20, 30]},
    ]
    with logs_warning(r"categories 3, 7 are all named 'cat': merged into one class"):
        ds = coco_dataset(_coco(tmp_path, annotations=annotations, categories=categories))
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [3, 9]
    assert [r.labels.tolist() for r in ds.records] == [[1], [1, 2], []]


# --- huge images read reduced --------------------------------------------------------------


def _pattern(h, w):
    """A smooth picture (quadrants of colour with a gradient) that survives reduction."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (x * 255 // w).astype(np.uint8)
    img[..., 1] = (y * 255 // h).astype(np.uint8)
    img[: h // 2, : w // 3, 2] = 200
    return img


@pytest.mark.parametrize("mode, ext", [("RGB", "jpg"), ("RGB", "png"), ("L", "png"), ("P", "png"), ("I;16", "png")])
def test_huge_images_are_read_reduced_to_the_same_picture(tmp_path, mode, ext):
    import cv2

    full = _pattern(1500, 2400)
    im = Image.fromarray(full)
    if mode == "L":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("P", palette=Image.Palette.ADAPTIVE)
    elif mode == "I;16":
        im = Image.fromarray(full[..., 0].astype(np.uint16) * 256)
    path = tmp_path / f"big.{ext}"
    im.save(path, quality=95) if ext == "jpg" else im.save(path)
    whole = read_image(path)
    small = read_image(path, max_side=600)
    assert small.shape == (375, 600, 3) and small.dtype == np.uint8
    ref = cv2.resize(whole, (600, 375), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(small.astype(int) - ref).mean() < 3.0
    assert read_image(path, max_side=2400).shape == whole.shape  # not larger than the limit: as it is


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_reduced_reading_keeps_exif_orientation(tmp_path, orientation):
    full = _pattern(1200, 2000)
    im = Image.fromarray(full)
    exif = im.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "rot.jpg"
    im.save(path, quality=95, exif=exif.tobytes())
    whole, small = read_image(path), read_image(path, max_side=500)
    assert whole.shape[:2] == ((1200, 2000) if orientation == 3 else (2000, 1200))
    assert small.shape[:2] == tuple(round(s * 500 / max(whole.shape)) for s in whole.shape[:2])
    import cv2

    ref = cv2.resize(whole, small.shape[1::-1], interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(small.astype(int) - ref).mean() < 3.0


def test_clean_boxes_counts_clips_beyond_a_pixel():
    from multibox.data.base import clean_boxes

    boxes = np.array([[-0.4, 10, 50, 120.3], [-5, 10, 50, 60], [10, 10, 20, 20]], np.float32)
    out, keep, n = clean_boxes(boxes, (120, 160))
    assert out.tolist() == [[0, 10, 50, 120], [0, 10, 50, 60], [10, 10, 20, 20]] and keep.all()
    assert n == 1  # the rounding of a border coordinate is clipped, not counted
