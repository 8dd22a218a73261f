import numpy as np
import pytest
import torch
from PIL import Image

from multibox import Detector, create_model
from multibox.data.image import ImageReadError


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    model = create_model("ssd_resnet18", num_classes=2)
    # make class 1 fire everywhere so predictions are not empty
    for block in model.head.classification:
        torch.nn.init.zeros_(block.weight)
        block.bias.data.view(-1, 2)[:, 0] = 2.0
    return Detector(model, ["cat", "dog"])


def test_predict_accepts_paths_arrays_and_tensors(detector, tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    tensor = torch.from_numpy(arr).permute(2, 0, 1)
    preds = detector.predict([tmp_path / "a.png", arr, tensor, tensor.float() / 255])
    assert len(preds) == 4
    for p in preds:
        assert p.image_size == (120, 200)
        assert len(p) > 0
        assert set(p.names) == {"cat"}
        assert (p.boxes[:, 0] >= 0).all() and (p.boxes[:, 2] <= 200).all() and (p.boxes[:, 3] <= 120).all()
        assert (np.diff(p.scores) <= 0).all()
    # the same pixels give the same detections whatever the input type
    np.testing.assert_allclose(preds[0].boxes, preds[1].boxes, atol=1e-4)
    np.testing.assert_allclose(preds[1].scores, preds[2].scores, atol=1e-6)
    assert preds[0].source.endswith("a.png")
    d = preds[0].to_dict()
    assert d["detections"][0]["name"] == "cat" and len(d["detections"][0]["box"]) == 4


def test_boxes_scale_back_to_original_pixels(detector):
    arr = np.zeros((100, 400, 3), dtype=np.uint8)
    small = detector.predict(arr)[0]
    big = detector.predict(np.zeros((200, 800, 3), dtype=np.uint8))[0]
    np.testing.assert_allclose(big.boxes, small.boxes * 2, rtol=1e-4, atol=1e-3)


def test_bad_inputs(detector, tmp_path):
    with pytest.raises(ImageReadError, match="missing.jpg: image file not found"):
        detector.predict(str(tmp_path / "missing.jpg"))
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageReadError, match="text.jpg"):
        detector.predict(str(tmp_path / "text.jpg"))
    with pytest.raises(ValueError, match="uint8"):
        detector.predict(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        detector.predict(torch.zeros(10, 10))
    with pytest.raises(TypeError, match="unsupported image type"):
        detector.predict([123])
    with pytest.raises(ValueError, match="class names"):
        Detector(create_model("ssd_resnet18", num_classes=2), ["one"])


def test_inference_copy_folds_batchnorm_without_changing_outputs():
    import torch

    from multibox.models import create_model
    from multibox.models.fuse import inference_copy

    torch.manual_seed(0)
    model = create_model("ssdlite_effl0", num_classes=3, pretrained_backbone=True, image_size=160)
    with torch.no_grad():  # non-trivial statistics in every BatchNorm
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    model.eval()
    fast = inference_copy(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.rand(2, 3, 160, 160) * 255
    with torch.no_grad():
        a, b = model(x), fast(x.contiguous(memory_format=torch.channels_last))
    for got, ref in zip(b, a):  # float32 rounding through ~60 layers: relative to the output scale
        assert (got - ref).abs().max() <= 5e-4 * ref.abs().max()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_image_list_tells_one_image_from_many(tmp_path):
    from multibox.inference.images import image_list

    arr = np.zeros((4, 5, 3), dtype=np.uint8)
    chw = torch.zeros(3, 4, 5)
    for one in ("a.jpg", tmp_path / "a.jpg", arr, chw):
        assert len(image_list(one)) == 1 and image_list(one)[0] is one
    batch = torch.zeros(2, 3, 4, 5)
    assert [t.shape for t in image_list(batch)] == [(3, 4, 5), (3, 4, 5)]
    many = image_list(["a.jpg", arr])
    assert len(many) == 2 and many[0] == "a.jpg" and many[1] is arr
    assert image_list(p for p in ("a.jpg", "b.jpg")) == ["a.jpg", "b.jpg"]


def test_huge_files_are_read_reduced_and_answered_in_their_own_pixels(detector, tmp_path):
    from multibox.data.image import read_image

    y, x = np.mgrid[0:2400, 0:3000]
    arr = np.stack([(x * 255 // 3000), (y * 255 // 2400), np.full_like(x, 90)], -1).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "huge.png")
    reduced = read_image(tmp_path / "huge.png", max_side=2048)  # what the detector reads (its input is 224)
    assert reduced.shape == (1638, 2048, 3)
    from_file, from_array = detector.predict([tmp_path / "huge.png", reduced])
    assert from_file.image_size == (2400, 3000) and from_array.image_size == (1638, 2048)
    scale = np.array([3000 / 2048, 2400 / 1638] * 2, np.float32)
    np.testing.assert_allclose(from_file.boxes, from_array.boxes * scale, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(from_file.scores, from_array.scores)
    np.testing.assert_allclose(from_array.rescaled((2400, 3000)).boxes, from_file.boxes, rtol=1e-5, atol=1e-3)
