import numpy as np
import pytest
import torch

from helpers import COLORS, shapes_image
from multibox.data.transforms import AugmentConfig, SSDTransform, collate


def _sample(rng, n=3):
    img, boxes, classes = shapes_image(rng, 200, 150, n)
    return {
        "image": img,
        "boxes": boxes,
        "labels": np.array(classes) + 1,
        "difficult": np.zeros(n, bool),
        "image_id": 0,
        "path": "x",
        "size": img.shape[:2],
    }


def _single_object(rng):
    s = _sample(rng, 1)
    return s


@pytest.mark.parametrize("vflip", [0.0, 0.5])
@pytest.mark.parametrize("seed", range(12))
def test_boxes_stay_on_their_objects(seed, vflip):
    """One solid rectangle per image: after any zoom-out/crop/flip/resize the box must be
    covered by the object's colour and hold (nearly) all of that colour."""
    rng = np.random.default_rng(seed)
    t = SSDTransform(
        (96, 96), train=True, fill=(128, 128, 128), config=AugmentConfig(photometric=False, vflip_prob=vflip), seed=seed
    )
    for index in range(8):
        s = _single_object(rng)
        color = COLORS[int(s["labels"][0]) - 1]
        out = t(s, index)
        img = out["image"].permute(1, 2, 0).numpy().astype(int)
        mask = np.abs(img - np.array(color)).sum(-1) < 60
        assert len(out["boxes"]) == 1, "a single object must survive (crops keep some object)"
        x1, y1, x2, y2 = out["boxes"][0].numpy() * 96
        inner = mask[int(np.ceil(y1)) + 1 : int(np.floor(y2)) - 1, int(np.ceil(x1)) + 1 : int(np.floor(x2)) - 1]
        if inner.size:
            assert inner.mean() > 0.97
        ys, xs = np.nonzero(mask)
        assert xs.min() >= x1 - 1.5 and xs.max() <= x2 + 0.5 and ys.min() >= y1 - 1.5 and ys.max() <= y2 + 0.5


def test_several_objects_and_photometric_keep_labels_and_range():
    rng = np.random.default_rng(0)
    t = SSDTransform((64, 64), train=True, seed=3)
    for index in range(30):
        out = t(_sample(rng), index)
        b = out["boxes"]
        assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.uint8
        assert ((b >= 0) & (b <= 1)).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert len(out["labels"]) == len(b) and ((out["labels"] >= 1) & (out["labels"] <= 4)).all()


def test_reproducible_per_seed_epoch_and_index():
    rng = np.random.default_rng(1)
    s = _sample(rng)
    a = SSDTransform((64, 64), seed=5)(s, 7)
    b = SSDTransform((64, 64), seed=5)(s, 7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    t = SSDTransform((64, 64), seed=5)
    t.set_epoch(1)
    c = t(s, 7)
    assert not torch.equal(a["image"], c["image"])


def test_eval_transform_only_resizes():
    rng = np.random.default_rng(2)
    s = _sample(rng)
    out = SSDTransform((75, 100), train=False)(s, 0)
    expected = s["boxes"] / np.array([200, 150, 200, 150], np.float32)
    np.testing.assert_allclose(out["boxes"].numpy(), expected, atol=1e-6)
    assert out["image"].shape == (3, 75, 100)


def test_difficult_objects_are_not_training_targets():
    rng = np.random.default_rng(3)
    s = _sample(rng)
    s["difficult"][:] = True
    out = SSDTransform((64, 64), train=True, config=AugmentConfig(expand_prob=0, crop=False, flip_prob=0))(s, 0)
    assert len(out["boxes"]) == 0
    out = SSDTransform((64, 64), train=False)(s, 0)
    assert len(out["boxes"]) == 3 and out["difficult"].all()


def test_collate_pads_targets():
    rng = np.random.default_rng(4)
    t = SSDTransform((32, 32), train=False)
    batch = collate([t(_sample(rng, 2), 0), t(_sample(rng, 1), 1)])
    assert batch["images"].shape == (2, 3, 32, 32)
    assert batch["boxes"].shape == (2, 2, 4) and batch["labels"].shape == (2, 2)
    assert batch["labels"][1, 1] == 0 and (batch["boxes"][1, 1] == 0).all()
    assert batch["sizes"].tolist() == [[150, 200], [150, 200]]
    # pixel-interleaved (channels-last) uint8, the same values as stacking the samples
    samples = [t(_sample(np.random.default_rng(4), 2), 0)]
    images = collate(samples)["images"]
    assert images.dtype == torch.uint8 and images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(images[0], samples[0]["image"])


def test_collate_of_images_without_objects():
    rng = np.random.default_rng(5)
    s = _sample(rng, 1)
    s["boxes"], s["labels"], s["difficult"] = np.zeros((0, 4), np.float32), np.zeros(0, int), np.zeros(0, bool)
    batch = collate([SSDTransform((32, 32), train=True)(s, 0)])
    assert batch["boxes"].shape == (1, 0, 4) and batch["labels"].shape == (1, 0)


def test_vertical_flip_mirrors_boxes_exactly():
    rng = np.random.default_rng(5)
    s = _sample(rng, 3)
    plain = AugmentConfig(expand_prob=0, crop=False, flip_prob=0, photometric=False)
    flipped = AugmentConfig(expand_prob=0, crop=False, flip_prob=0, photometric=False, vflip_prob=1.0)
    a = SSDTransform((60, 80), train=True, config=plain)(s, 0)
    b = SSDTransform((60, 80), train=True, config=flipped)(s, 0)
    # the image itself: test_boxes_stay_on_their_objects checks boxes against pixels with vflip
    expected = a["boxes"][:, [0, 3, 2, 1]] * torch.tensor([1.0, -1.0, 1.0, -1.0]) + torch.tensor([0.0, 1.0, 0.0, 1.0])
    torch.testing.assert_close(b["boxes"], expected)
    assert torch.equal(b["labels"], a["labels"])


def test_vertical_flip_off_keeps_every_other_draw():
    """vflip_prob=0 draws nothing, so existing settings produce the same samples as before it existed."""
    rng = np.random.default_rng(6)
    s = _sample(rng, 3)
    a = SSDTransform((64, 64), train=True, seed=1)(s, 3)
    b = SSDTransform((64, 64), train=True, seed=1, config=AugmentConfig(vflip_prob=0.0))(s, 3)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_warp_keeps_boxes_on_their_pixels_to_a_fraction_of_a_pixel(flip):
    """A white block exactly on pixel boundaries, scaled 640 -> 320 (and mirrored): its edges in
    the output, estimated from the partial coverage of the edge pixels, match the box within
    0.1 px; eval (cv2.resize) puts them at the same place."""
    img = np.zeros((480, 640, 3), np.uint8)
    img[120:360, 100:301] = 255
    s = {
        "image": img,
        "boxes": np.array([[100.0, 120.0, 301.0, 360.0]]),
        "labels": np.array([1]),
        "difficult": np.zeros(1, bool),
        "image_id": 0,
        "path": "x",
        "size": (480, 640),
    }
    cfg = AugmentConfig(expand_prob=0, crop=False, flip_prob=flip, photometric=False)
    out = SSDTransform((320, 320), train=True, config=cfg, fill=(0, 0, 0))(s, 0)
    row = out["image"][0, 160].double() / 255
    box = out["boxes"][0].double() * 320
    nz = row.nonzero().squeeze(1)
    first, last = int(nz[0]), int(nz[-1])
    left, right = first + 1 - float(row[first]), last + float(row[last])
    assert abs(left - float(box[0])) < 0.1 and abs(right - float(box[2])) < 0.1
