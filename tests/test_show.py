"""multibox show: ground truth drawn into a grid, after augmentation, beside predictions."""

import cv2
import numpy as np
import pytest

from helpers import COLORS, make_checkpoint, make_voc
from multibox.cli import main
from multibox.data.transforms import AugmentConfig, SSDTransform
from multibox.data.voc import voc_dataset
from multibox.inference.detector import Detector
from multibox.viz.dataset import show_dataset
from multibox.viz.draw import class_colors

NAMES = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_voc(str(tmp_path_factory.mktemp("show") / "shapes"), n=6, split="train")


def has_color(img, rgb, tol=40):
    return bool((np.abs(img.astype(int) - np.array(rgb)).max(-1) < tol).any())


def test_grid_of_ground_truth_boxes(shapes):
    ds = voc_dataset(shapes, "train", NAMES)
    grid = show_dataset(ds, n=4, seed=None, cols=2, width=200)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    assert grid.shape[1] == 2 * (200 + 6)
    # box outlines in the class colours are drawn on the tiles
    used = {int(lbl) for r in ds.records[:4] for lbl in r.labels}
    for label in used:
        assert has_color(grid, class_colors(len(NAMES))[label - 1], tol=8)


def test_augmented_boxes_stay_on_their_rectangles(shapes):
    """Drawn with augmentation: each box (in the augmented tile) encloses its solid rectangle's colour."""
    ds = voc_dataset(shapes, "train", NAMES)
    aug = SSDTransform((160, 160), train=True, seed=3, config=AugmentConfig(photometric=False))
    from multibox.viz.dataset import _ground_truth

    for i in range(len(ds)):
        image, boxes, labels = _ground_truth(ds, i, aug)
        assert image.shape == (160, 160, 3)
        for b, lbl in zip(boxes, labels):
            x1, y1, x2, y2 = np.round(b).astype(int)
            inner = image[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2]
            if inner.size:
                assert has_color(inner, COLORS[NAMES.index(NAMES[lbl - 1])], tol=60)
    grid = show_dataset(ds, n=3, augment=aug)
    assert grid.ndim == 3


def test_predictions_beside_ground_truth(shapes, tmp_path):
    det = Detector.from_checkpoint(make_checkpoint(tmp_path / "m.pt", class_names=NAMES))
    ds = voc_dataset(shapes, "train", NAMES)
    grid = show_dataset(ds, n=2, detector=det, conf=0.2, width=160, cols=1)
    assert grid.shape[1] == 2 * 160 + 6 + 6  # ground truth | predictions


def test_show_cli(shapes, tmp_path, capsys):
    out = tmp_path / "grid.jpg"
    rc = main(
        [
            "show",
            "-c",
            "demo_bccd",
            "--data",
            shapes,
            "--split",
            "train",
            "--augment",
            "-n",
            "4",
            "--out",
            str(out),
            "data.class_names=[red, green, blue, yellow]",
            "model.kwargs={image_size: 160, pretrained_backbone: false}",
        ]
    )
    assert rc == 0 and cv2.imread(str(out)) is not None
    assert "after training augmentation" in capsys.readouterr().out
    ckpt = make_checkpoint(tmp_path / "m.pt", class_names=NAMES)
    assert (
        main(
            [
                "show",
                "--checkpoint",
                ckpt,
                "--predict",
                "-c",
                "demo_bccd",
                "--data",
                shapes,
                "--split",
                "train",
                "--out",
                str(tmp_path / "p.jpg"),
                "-n",
                "2",
            ]
        )
        == 0
    )
    assert main(["show", "--out", str(out)]) == 2
