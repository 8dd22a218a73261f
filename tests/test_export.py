"""ONNX export (network + decode + NMS in one graph) against the PyTorch detector."""

import numpy as np
import pytest
import torch

from helpers import make_checkpoint, shapes_image
from multibox.inference.detector import Detector
from multibox.inference.export import ExportableSSD, _NonMaxSuppression, export_onnx, export_program
from multibox.inference.runtime import OnnxDetector

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    ckpt = make_checkpoint(d / "model.pt")
    det = Detector.from_checkpoint(ckpt)
    path = export_onnx(det.model, d / "model.onnx", det.class_names)
    return det, OnnxDetector(path), path


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _i in range(n):
        im, _, _ = shapes_image(rng, width=int(rng.integers(120, 400)), height=int(rng.integers(100, 300)), n=4)
        out.append(np.clip(im + rng.normal(0, 10, im.shape), 0, 255).astype(np.uint8))  # texture, as photos have
    return out


def assert_same(a, b, max_det=200):
    """Same detections: every one has a partner with the same label, box within 1e-3 px and
    score within 1e-4. Order among scores equal to float rounding may differ (both orders are
    valid results), and so may the members of a full list whose score ties with the last kept."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.image_size == y.image_size
        assert len(x) == len(y)
        np.testing.assert_allclose(np.sort(x.scores), np.sort(y.scores), atol=1e-4, rtol=0)
        used = np.zeros(len(y), bool)
        for box, score, label in zip(x.boxes, x.scores, x.labels):
            ok = (
                ~used
                & (y.labels == label)
                & (np.abs(y.boxes - box).max(1) <= 1e-3)
                & (np.abs(y.scores - score) <= 1e-4)
            )
            if ok.any():
                used[np.argmax(ok)] = True
            else:
                assert len(x) == max_det and score - x.scores.min() <= 1e-4, (box, score, label)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_onnx_matches_pytorch(exported, batch):
    det, onnx_det, _ = exported
    ims = images(batch, seed=batch)
    ref = det.predict(ims, batch_size=batch)
    assert all(len(p) > 0 for p in ref)  # an untrained model: hundreds of overlapping candidates per class
    assert_same(ref, onnx_det.predict(ims, batch_size=batch))


def test_onnx_image_without_detections(exported):
    det, onnx_det, _ = exported
    ims = images(3, seed=7) + [np.zeros((200, 300, 3), np.uint8)]
    best = [float(p.scores.max()) for p in det.predict(ims)]
    conf = min(best) + 1e-3  # the weakest image has nothing above this, the others do
    ref = det.predict(ims, conf=conf, iou=0.3, max_det=50)
    assert sum(len(p) == 0 for p in ref) >= 1 and sum(len(p) > 0 for p in ref) >= 1
    got = onnx_det.predict(ims, conf=conf, iou=0.3, max_det=50)
    assert_same(ref, got, max_det=50)
    assert all(len(p) <= 50 for p in got)


def test_onnx_metadata_and_errors(exported, tmp_path):
    det, onnx_det, path = exported
    assert onnx_det.class_names == det.class_names and onnx_det.image_size == (160, 160)
    assert isinstance(Detector.from_checkpoint(path), OnnxDetector)
    with pytest.raises(ValueError, match="above the 200"):
        onnx_det.predict(images(1), max_det=500)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.onnx"):
        OnnxDetector(bad)


def test_nms_function_matches_batched_nms():
    """The eager side of the NMS operator equals multibox.nms.batched_nms group by group."""
    from multibox.core.nms import batched_nms

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 40, 2, generator=g)
    boxes = torch.cat((xy, xy + 0.05 + torch.rand(3, 40, 2, generator=g) * 0.3), -1)
    scores = torch.rand(3, 1, 40, generator=g)
    sel = _NonMaxSuppression.apply(boxes, scores, torch.tensor([40]), torch.tensor([0.4]), torch.tensor([0.2]))
    for grp in range(3):
        mine = sel[sel[:, 0] == grp, 2]
        keep = scores[grp, 0] > 0.2
        idx = torch.nonzero(keep).squeeze(1)
        ref = idx[batched_nms(boxes[grp][keep], scores[grp, 0][keep], torch.zeros(int(keep.sum())), 0.4)]
        assert mine.tolist() == ref.tolist()


def test_torch_export_program_matches_network(tmp_path):
    import json

    det = Detector.from_checkpoint(make_checkpoint(tmp_path / "m.pt"))
    path = export_program(det.model, tmp_path / "m.pt2", det.class_names)
    files = {"meta.json": ""}
    program = torch.export.load(path, extra_files=files)
    meta = json.loads(files["meta.json"])
    x = torch.rand(3, 3, 160, 160) * 255  # another batch size than the one exported with
    with torch.no_grad():
        ref = det.model(x)
        got = program.module()(x)
    torch.testing.assert_close(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1])
    assert meta["class_names"] == det.class_names
    torch.testing.assert_close(torch.tensor(meta["priors"]), det.model.priors)


def test_exportable_wrapper_equals_postprocess(tmp_path):
    """The traceable post-processing (fixed candidate count, topk) equals multibox.nms.postprocess."""
    model = Detector.from_checkpoint(make_checkpoint(tmp_path / "m.pt", seed=2)).model
    x = torch.from_numpy(np.stack([np.asarray(im[:100, :100]) for im in images(2, seed=5)])).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x.float(), size=(160, 160), mode="bilinear")
    with torch.no_grad():
        boxes, scores, labels, num = ExportableSSD(model)(x, torch.tensor(0.01), torch.tensor(0.45))
        ref = model.predict(x, image_sizes=torch.ones(2, 2))
    assert num.tolist() == ref.num.tolist()
    for i, n in enumerate(num.tolist()):
        torch.testing.assert_close(boxes[i, :n], ref.boxes[i, :n])
        torch.testing.assert_close(scores[i, :n], ref.scores[i, :n])
        assert labels[i, :n].tolist() == ref.labels[i, :n].tolist()


def test_export_cli_torch_export(tmp_path):
    from multibox.cli import main

    ckpt = make_checkpoint(tmp_path / "m.pt")
    assert main(["export", ckpt, "--format", "torch-export", "--out", str(tmp_path / "m.pt2")]) == 0
    program = torch.export.load(str(tmp_path / "m.pt2"))
    assert program.module()(torch.zeros(1, 3, 160, 160))[1].shape[-1] == 4


@pytest.mark.parametrize("mode, dynamo", [("hflip", False), ("hvflip", True), ("dihedral", False), ("dihedral", True)])
def test_onnx_export_carries_test_time_mirroring(tmp_path, mode, dynamo):
    """A model with tta set exports its mirrored (and transposed) views into the graph, the
    views batched, with a batch dimension that stays dynamic (the export traces batch 2): ONNX
    Runtime gives the detector's predictions at batch 1 and 3, which differ from the single view's."""
    det = Detector.from_checkpoint(make_checkpoint(tmp_path / "m.pt", seed=3, tta=mode))
    assert det.model.postprocess_config.tta == mode
    onnx_det = OnnxDetector(export_onnx(det.model, tmp_path / "m.onnx", det.class_names, dynamo=dynamo))
    ims = images(3, seed=11)
    ref = det.predict(ims, batch_size=3)
    assert_same(ref, onnx_det.predict(ims, batch_size=3))
    assert_same(ref, onnx_det.predict(ims, batch_size=1))
    det.tta = "none"
    single = det.predict(ims, batch_size=3)
    assert any(
        len(a) != len(b) or not np.allclose(np.sort(a.scores)[-5:], np.sort(b.scores)[-5:], atol=1e-3)
        for a, b in zip(ref, single)
    )


@pytest.mark.parametrize("dynamo", [False, True])
def test_onnx_export_carries_box_voting(tmp_path, dynamo):
    """A model with box_voting exports the voting into the graph: ONNX Runtime gives the
    detector's voted boxes, which differ from plain NMS's."""
    det = Detector.from_checkpoint(make_checkpoint(tmp_path / "m.pt", seed=4, box_voting=True))
    assert det.model.postprocess_config.box_voting
    onnx_det = OnnxDetector(export_onnx(det.model, tmp_path / "m.onnx", det.class_names, dynamo=dynamo))
    ims = images(3, seed=12)
    ref = det.predict(ims, batch_size=3)
    assert_same(ref, onnx_det.predict(ims, batch_size=3))
    plain = Detector.from_checkpoint(make_checkpoint(tmp_path / "p.pt", seed=4)).predict(ims, batch_size=3)
    assert all(np.array_equal(np.sort(a.scores), np.sort(b.scores)) for a, b in zip(ref, plain))
    assert any(not np.allclose(a.boxes, b.boxes, atol=0.5) for a, b in zip(ref, plain))
