"""Deployment runtimes on the CPU: latency at batch 1 and throughput at batch 8 of the whole
detector (network, decoding, NMS) in eager PyTorch, ONNX Runtime float32 and int8, and
OpenVINO float32 and int8, each runtime's detections compared with PyTorch's; and, where a
trained demo checkpoint and BCCD are present, the BCCD test mAP of the float32 and int8 exports.

    python -m benchmarks --only deploy                      # part of the full table
    python -m benchmarks.bench_deploy [--checkpoint runs/demo/last.pt] [--models ssdlite_effl0,ssd300_vgg16]
    python -m benchmarks.bench_deploy --breakdown          # where the demo model's time goes

int8: the network's convolutions quantised (QDQ, per-channel weights), calibrated on 100
training images (BCCD train when present, else generated pictures); decoding and NMS in float32.
All runtimes use every core of the machine; times are medians over alternating calls.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import torch

from multibox.inference.checkpoint import load_checkpoint, model_from_checkpoint
from multibox.inference.export import export_onnx, export_openvino
from multibox.inference.runtime import OnnxDetector
from multibox.models import create_model, offline_kwargs
from multibox.models.fuse import inference_copy

DEMO_CHECKPOINT = os.path.join("runs", "demo", "last.pt")


def _images(n: int, size: tuple[int, int], paths: list[str]) -> np.ndarray:
    """``n`` float32 ``(3, H, W)`` images: real ones when ``paths`` are given, else textured noise."""
    from multibox.inference.images import resize_batch, to_rgb_array

    if paths:
        arrays = [to_rgb_array(p) for p in paths[:n]]
    else:
        rng = np.random.default_rng(0)
        arrays = [rng.integers(0, 255, (size[0], size[1], 3), dtype=np.uint8) for _ in range(n)]
    return resize_batch(arrays, size).numpy().astype(np.float32)


def _bccd_paths(split: str) -> list[str]:
    from multibox.data.build import resolve_root

    try:
        root = resolve_root("bccd")
    except FileNotFoundError:
        return []
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt")) as f:
        return [os.path.join(root, "JPEGImages", line.split()[0] + ".jpg") for line in f if line.strip()]


def _median_ms(fn, repeat: int) -> float:
    from benchmarks.__main__ import timeit

    return 1000 * timeit(fn, repeat)  # one warm-up call, then the median


def _compare(ref, out) -> str:
    """Per image, the best detections of two runtimes: label agreement and the largest box
    difference (pixels of the 300-ish input) among those of the same label."""
    boxes_a, scores_a, labels_a, num_a = ref
    boxes_b, scores_b, labels_b, num_b = out
    worst, agree, total = 0.0, 0, 0
    for i in range(len(num_a)):
        n = min(int(num_a[i]), int(num_b[i]), 10)
        total += n
        agree += int((labels_a[i, :n] == labels_b[i, :n]).sum())
        same = labels_a[i, :n] == labels_b[i, :n]
        if same.any():
            worst = max(worst, float(np.abs(boxes_a[i, :n][same] - boxes_b[i, :n][same]).max()))
    return f"top-10 labels agree {agree}/{total}, largest box difference {worst:.2e} of the image side"


def _eager_runner(model):
    net = inference_copy(model, channels_last=True)
    h, w = model.image_size

    def run(batch: np.ndarray):
        x = torch.from_numpy(batch).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            det = net.predict(x, torch.tensor([[1.0, 1.0]] * len(batch)))
        per = det.per_image()
        d = max(1, max(len(p["scores"]) for p in per))
        boxes = np.zeros((len(per), d, 4), np.float32)
        scores = np.zeros((len(per), d), np.float32)
        labels = np.zeros((len(per), d), np.int64)
        for i, p in enumerate(per):
            k = len(p["scores"])
            boxes[i, :k], scores[i, :k], labels[i, :k] = p["boxes"].numpy(), p["scores"].numpy(), p["labels"].numpy()
        return boxes, scores, labels, np.array([len(p["scores"]) for p in per])

    return run


def bench_model(name: str, checkpoint: str | None, row, quick: bool, report_map: bool) -> None:
    from multibox.inference.quantize import quantize_onnx

    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        model, names = model_from_checkpoint(ckpt, checkpoint)
        what = f"{name} ({os.path.basename(os.path.dirname(checkpoint))} checkpoint)"
    else:
        model = create_model(name, num_classes=3, **offline_kwargs(name)).eval()
        names = ["a", "b", "c"]
        what = f"{name} (untrained heads)"
    size = model.image_size
    repeat = 10 if quick else 40
    calib_paths = _bccd_paths("train")
    test_paths = _bccd_paths("test")
    batch8 = _images(8, size, test_paths)
    batch1 = batch8[:1]
    with tempfile.TemporaryDirectory() as tmp:
        f32 = export_onnx(model, os.path.join(tmp, "f32.onnx"), names)
        if calib_paths:
            calib = calib_paths[: 100 if not quick else 24]
        else:
            calib = []
            from PIL import Image

            for i, arr in enumerate(_images(24, size, []).transpose(0, 2, 3, 1).astype(np.uint8)):
                calib.append(os.path.join(tmp, f"c{i}.png"))
                Image.fromarray(arr).save(calib[-1])
        i8 = quantize_onnx(f32, os.path.join(tmp, "i8.onnx"), calib)
        runtimes = {"PyTorch eager": _eager_runner(model)}
        runtimes["ONNX Runtime float32"] = OnnxDetector(f32).run
        runtimes["ONNX Runtime int8"] = OnnxDetector(i8).run
        try:
            from multibox.inference.runtime import OpenVinoDetector

            runtimes["OpenVINO float32"] = OpenVinoDetector(export_openvino(f32, os.path.join(tmp, "f32.xml"))).run
            runtimes["OpenVINO int8"] = OpenVinoDetector(export_openvino(i8, os.path.join(tmp, "i8.xml"))).run
        except ImportError:
            print("  (OpenVINO not installed: pip install openvino)")
        reference = runtimes["PyTorch eager"](batch8)
        latency = {}
        for label, run in runtimes.items():
            ms1 = _median_ms(lambda run=run: run(batch1), repeat)
            ms8 = _median_ms(lambda run=run: run(batch8), max(3, repeat // 4))
            latency[label] = ms1
            eager = latency["PyTorch eager"]
            row(f"deploy {what}: {label}, batch 1", ms1, eager, "ms", "")
            row(f"deploy {what}: {label}, batch 8", 8000 / ms8, None, "img/s", "", higher_is_better=True)
            if label != "PyTorch eager":
                print(f"    {label} vs PyTorch: {_compare(reference, run(batch8))}")
        int8 = {k: v for k, v in latency.items() if "int8" in k}
        best = min(int8, key=int8.get)
        ratio = latency["ONNX Runtime float32"] / int8[best]
        row(
            f"deploy {what}: fastest int8 ({best}) vs ONNX Runtime float32, batch 1",
            int8[best],
            latency["ONNX Runtime float32"],
            "ms",
            ">= 2x",
            ok=ratio >= 2.0,
        )
        if report_map and test_paths:
            _bccd_map(f32, i8, tmp, names, row, what)


def _bccd_map(f32: str, i8: str, tmp: str, names, row, what: str) -> None:
    """BCCD test area mAP@0.5 of the float32 and int8 exports (each scored once)."""
    from multibox.data.base import remap_classes
    from multibox.data.build import resolve_root
    from multibox.data.voc import voc_dataset
    from multibox.inference.evaluate import evaluate_model

    test = remap_classes(voc_dataset(resolve_root("bccd"), "test"), names)
    scores = {}
    candidates = [("ONNX Runtime float32", OnnxDetector(f32)), ("ONNX Runtime int8", OnnxDetector(i8))]
    try:
        from multibox.inference.runtime import OpenVinoDetector

        candidates.append(("OpenVINO int8", OpenVinoDetector(export_openvino(i8, os.path.join(tmp, "i8m.xml")))))
    except ImportError:
        pass
    for label, det in candidates:
        report = evaluate_model(det, test, batch_size=8, workers=0, coco=True, progress=False)
        scores[label] = report.map  # area mAP@0.5 (the devkit convention of VOC-style boxes)
        print(f"    BCCD test, {label}: area mAP@0.5 {scores[label]:.4f}")
    for label, value in scores.items():
        row(f"deploy {what}: BCCD test area mAP@0.5, {label}", value, None, "mAP", "")


def breakdown(checkpoint: str, repeat: int = 30) -> None:
    """Where the time of a checkpoint's exports goes, batch 1: the detector with its test-time
    views and with one view, and the network alone, in ONNX Runtime float32 and int8 and
    OpenVINO int8 (prints ms)."""
    import onnxruntime as ort

    from multibox.inference.quantize import quantize_onnx
    from multibox.inference.runtime import OpenVinoDetector

    model, names = model_from_checkpoint(checkpoint)
    calib = _bccd_paths("train")[:100]
    x = _images(1, model.image_size, _bccd_paths("test"))
    with tempfile.TemporaryDirectory() as d:
        for tta in dict.fromkeys([model.postprocess_config.tta, "none"]):
            model.postprocess_config.tta = tta
            f = export_onnx(model, f"{d}/f_{tta}.onnx", names)
            q = quantize_onnx(f, f"{d}/q_{tta}.onnx", calib)
            of, oq = OnnxDetector(f), OnnxDetector(q)
            vq = OpenVinoDetector(export_openvino(q, f"{d}/q_{tta}.xml"))
            times = [_median_ms(lambda r=r: r.run(x), repeat) for r in (of, oq, vq)]
            print(f"detector, views {tta}: " + " / ".join(f"{t:.1f}" for t in times) + " ms")
        n = export_onnx(model, f"{d}/net.onnx", names, postprocess=False)
        nq = quantize_onnx(n, f"{d}/netq.onnx", calib)
        sessions = [ort.InferenceSession(n), ort.InferenceSession(nq)]
        times = [_median_ms(lambda s=s: s.run(None, {"images": x}), repeat) for s in sessions]
        import openvino as ov

        core = ov.Core()
        request = core.compile_model(core.read_model(nq), "CPU", {"PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
        times.append(_median_ms(lambda: request.infer({"images": x}), repeat))
        print("network alone: " + " / ".join(f"{t:.1f}" for t in times) + " ms")
    print("(ONNX Runtime float32 / ONNX Runtime int8 / OpenVINO int8, batch 1)")


def bench_deploy(quick: bool, row=None, checkpoint: str | None = None, models: str = "ssdlite_effl0,ssd300_vgg16"):
    if row is None:
        from benchmarks.__main__ import row
    for name in models.split(","):
        ckpt = checkpoint if checkpoint else (DEMO_CHECKPOINT if name == "ssdlite_effl0" else None)
        if ckpt and not os.path.exists(ckpt):
            ckpt = None
        bench_model(name, ckpt, row, quick, report_map=ckpt is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help=f"a trained checkpoint (default {DEMO_CHECKPOINT} if present)")
    ap.add_argument("--models", default="ssdlite_effl0,ssd300_vgg16")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="only where the checkpoint's time goes")
    a = ap.parse_args()
    from benchmarks.__main__ import row

    torch.set_num_threads(os.cpu_count() or 1)
    if a.breakdown:
        breakdown(a.checkpoint or DEMO_CHECKPOINT)
        return
    bench_deploy(a.quick, row, a.checkpoint, a.models)


if __name__ == "__main__":
    main()
