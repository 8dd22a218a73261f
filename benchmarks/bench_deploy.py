"""Deployment runtimes on the CPU: latency at batch 1 and throughput at batch 8 of the whole
detector (network, decoding, NMS) in eager PyTorch, ONNX Runtime float32 and int8, and
OpenVINO float32 and int8, each runtime's detections compared with PyTorch's; and, where a
trained demo checkpoint and BCCD are present, the BCCD test mAP of the float32 and int8 exports.

    python -m benchmarks --only deploy                      # part of the full table
    python -m benchmarks.bench_deploy [--checkpoint runs/demo/last.pt] [--models ssdlite_effl0,ssd300_vgg16]
    python -m benchmarks.bench_deploy --breakdown          # where the demo model's time goes

int8: the network's convolutions quantised, calibrated on 100 training images (BCCD train when
present, else generated pictures), decoding and NMS in float32: for ONNX Runtime by its own
quantiser (QDQ, per-channel weights), for OpenVINO by NNCF where installed (else ONNX Runtime's
file, converted). All runtimes use every core of the machine; each is timed on its own, one
after another (median of the calls after a warm-up), ONNX Runtime before OpenVINO.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
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
    """Per image, each of the reference runtime's 10 best detections against the other runtime's
    detection of the same label that overlaps it most: how many have one (IoU above 0.5), and
    the largest coordinate difference among those (fractions of the image side)."""
    from multibox.core.boxes import box_iou

    boxes_a, _, labels_a, num_a = ref
    boxes_b, _, labels_b, num_b = out
    worst, found, total = 0.0, 0, 0
    for i in range(len(num_a)):
        n, m = min(int(num_a[i]), 10), int(num_b[i])
        total += n
        if n == 0 or m == 0:
            continue
        a, b = torch.from_numpy(boxes_a[i, :n]), torch.from_numpy(boxes_b[i, :m])
        iou = box_iou(a, b) * torch.from_numpy(labels_a[i, :n, None] == labels_b[i, None, :m])
        best, j = iou.max(1)
        hit = best > 0.5
        found += int(hit.sum())
        if hit.any():
            worst = max(worst, float((a[hit] - b[j[hit]]).abs().max()))
    return f"{found}/{total} of the top-10 detections found (same label, IoU > 0.5), largest box difference {worst:.1e}"


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
    from multibox.inference.quantize import quantize_onnx, quantize_openvino

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
        exports = {"ONNX Runtime float32": f32, "ONNX Runtime int8": i8}
        try:
            exports["OpenVINO float32"] = export_openvino(f32, os.path.join(tmp, "f32.xml"))
            exports["OpenVINO int8"] = quantize_openvino(f32, os.path.join(tmp, "i8.xml"), calib)
        except ImportError:
            print("  (OpenVINO not installed: pip install openvino)")
        images = os.path.join(tmp, "batch8.npy")
        np.save(images, batch8)
        eager = _eager_runner(model)
        reference = eager(batch8)
        latency = {"PyTorch eager": _median_ms(lambda: eager(batch1), repeat)}
        row(f"deploy {what}: PyTorch eager, batch 1", latency["PyTorch eager"], latency["PyTorch eager"], "ms", "")
        ms8 = _median_ms(lambda: eager(batch8), max(3, repeat // 4))
        row(f"deploy {what}: PyTorch eager, batch 8", 8000 / ms8, None, "img/s", "", higher_is_better=True)
        paths = {}
        for label, path in exports.items():
            ms1, ms8, outputs, quantiser = _time_apart(path, images, repeat, tmp)
            label += f" ({quantiser})" if quantiser else ""
            latency[label], paths[label] = ms1, path
            row(f"deploy {what}: {label}, batch 1", ms1, latency["PyTorch eager"], "ms", "")
            row(f"deploy {what}: {label}, batch 8", 8000 / ms8, None, "img/s", "", higher_is_better=True)
            print(f"    {label} vs PyTorch: {_compare(reference, outputs)}")
        int8 = {k: v for k, v in latency.items() if "int8" in k}
        best = min(int8, key=int8.get)
        # the target's ratio from alternating runs (this machine's speed drifts from minute to minute)
        pair = {"ONNX Runtime float32": [latency["ONNX Runtime float32"]], best: [int8[best]]}
        for _ in range(0 if quick else 2):
            for label in pair:
                pair[label].append(_time_apart(paths[label], images, repeat, tmp)[0])
        f32_ms, int8_ms = (float(np.median(pair[k])) for k in pair)
        ratio = f32_ms / int8_ms
        row(
            f"deploy {what}: fastest int8 ({best}) vs ONNX Runtime float32, batch 1",
            int8_ms,
            f32_ms,
            "ms",
            ">= 2x",
            ok=ratio >= 2.0,
        )
        if report_map and test_paths:
            _bccd_map(exports, names, row, what)


def _bccd_map(exports: dict[str, str], names, row, what: str) -> None:
    """BCCD test area mAP@0.5 and COCO AP of the float32 and int8 exports (each scored once)."""
    from multibox.data.base import remap_classes
    from multibox.data.build import resolve_root
    from multibox.data.voc import voc_dataset
    from multibox.inference.evaluate import evaluate_model

    test = remap_classes(voc_dataset(resolve_root("bccd"), "test"), names)
    scores = {}
    candidates = [
        (k, _load(exports[k])) for k in ("ONNX Runtime float32", "ONNX Runtime int8", "OpenVINO int8") if k in exports
    ]
    for label, det in candidates:
        report = evaluate_model(det, test, batch_size=8, workers=0, coco=True, progress=False)
        scores[label] = (report.map, report.coco["AP"])  # area mAP@0.5 (devkit convention), COCO AP
        print(f"    BCCD test, {label}: area mAP@0.5 {report.map:.4f}, COCO AP@[.5:.95] {report.coco['AP']:.4f}")
    for label, (area, coco) in scores.items():
        row(f"deploy {what}: BCCD test area mAP@0.5, {label}", area, None, "mAP", "")
        row(f"deploy {what}: BCCD test COCO AP, {label}", coco, None, "AP", "")
    lost = scores["ONNX Runtime float32"][0] - min(v[0] for k, v in scores.items() if "int8" in k)
    row(
        f"deploy {what}: area mAP@0.5 lost in int8 (worst runtime)", 100 * lost, None, "points", "<= 1", ok=lost <= 0.01
    )


def breakdown(checkpoint: str, repeat: int = 30) -> None:
    """Where the time of a checkpoint's exports goes, batch 1: the detector with its test-time
    views and with one view, and the network alone (at the batch of the views), in ONNX Runtime
    float32 and int8 and OpenVINO float32 and int8; and, where NNCF is installed, OpenVINO's own
    int8 quantiser against ONNX Runtime's (prints ms)."""
    import onnxruntime as ort
    import openvino as ov

    from multibox.core.tta import TTA_MODES
    from multibox.inference.quantize import calibration_batches, quantize_onnx, quantize_openvino
    from multibox.inference.runtime import OpenVinoDetector

    model, names = model_from_checkpoint(checkpoint)
    calib = _bccd_paths("train")[:100]
    x = _images(1, model.image_size, _bccd_paths("test"))
    labels = ("ONNX Runtime float32", "ONNX Runtime int8", "OpenVINO float32", "OpenVINO int8")
    print("batch 1, ms: " + " / ".join(labels))
    core = ov.Core()

    def openvino(path: str, batch: int):
        m = core.read_model(path)
        m.reshape({"images": [batch, 3, *model.image_size]})
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        return core.compile_model(m, "CPU", config).create_infer_request()

    with tempfile.TemporaryDirectory() as d:
        views = model.postprocess_config.tta
        for tta in dict.fromkeys([views, "none"]):
            model.postprocess_config.tta = tta
            f = export_onnx(model, f"{d}/f_{tta}.onnx", names)
            q = quantize_onnx(f, f"{d}/q_{tta}.onnx", calib)
            runners = [OnnxDetector(f), OnnxDetector(q), OpenVinoDetector(export_openvino(f, f[:-5] + ".xml"))]
            runners.append(OpenVinoDetector(quantize_openvino(f, f"{d}/ov8_{tta}.xml", calib)))
            times = [_median_ms(lambda r=r: r.run(x), repeat) for r in runners]
            print(f"  detector, views {tta}: " + " / ".join(f"{t:.1f}" for t in times))
        model.postprocess_config.tta = views
        batch = 1 + len(TTA_MODES[views])
        xb = np.concatenate([x] * batch)
        n = export_onnx(model, f"{d}/net.onnx", names, postprocess=False)
        nq = quantize_onnx(n, f"{d}/netq.onnx", calib)
        sessions = [ort.InferenceSession(n), ort.InferenceSession(nq)]
        times = [_median_ms(lambda s=s: s.run(None, {"images": xb}), repeat) for s in sessions]
        requests = [openvino(export_openvino(p, p[:-5] + ".xml"), batch) for p in (n, nq)]
        times += [_median_ms(lambda r=r: r.infer({"images": xb}), repeat) for r in requests]
        print(f"  network alone, batch {batch}: " + " / ".join(f"{t:.1f}" for t in times))
        try:
            import nncf
        except ImportError:
            print("  (NNCF not installed: pip install nncf to compare OpenVINO's own int8 quantiser)")
            return
        data = nncf.Dataset(list(calibration_batches(calib, model.image_size)), lambda b: {"images": b})
        quantised = nncf.quantize(core.read_model(n[:-5] + ".xml"), data, subset_size=len(calib))
        ov.save_model(quantised, f"{d}/nncf.xml", compress_to_fp16=False)
        request = openvino(f"{d}/nncf.xml", batch)
        t = _median_ms(lambda: request.infer({"images": xb}), repeat)
        print(f"  network alone, batch {batch}, OpenVINO int8 quantised by NNCF {nncf.__version__}: {t:.1f}")


def bench_deploy(quick: bool, row=None, checkpoint: str | None = None, models: str = "ssdlite_effl0,ssd300_vgg16"):
    if row is None:
        from benchmarks.__main__ import row
    for name in models.split(","):
        ckpt = checkpoint if checkpoint else (DEMO_CHECKPOINT if name == "ssdlite_effl0" else None)
        if ckpt and not os.path.exists(ckpt):
            ckpt = None
        bench_model(name, ckpt, row, quick, report_map=ckpt is not None)


def _load(path: str):
    if path.endswith(".xml"):
        from multibox.inference.runtime import OpenVinoDetector

        return OpenVinoDetector(path)
    return OnnxDetector(path)


def _time_apart(path: str, images: str, repeat: int, tmp: str):
    """:func:`_time` in a process of its own (no thread pool of another runtime competes):
    ``(ms at batch 1, ms at batch 8, the batch's outputs, the int8 quantiser or None)``."""
    out = os.path.join(tmp, "timed.npz")
    command = [sys.executable, "-m", "benchmarks.bench_deploy", "--time", path, images, str(repeat), out]
    subprocess.run(command, check=True)
    with np.load(out) as timed:
        ms1, ms8 = (float(v) for v in timed["ms"])
        outputs = [timed[k] for k in ("boxes", "scores", "labels", "num")]
        quantiser = str(timed["quantiser"]) if "quantiser" in timed else None
    return ms1, ms8, outputs, quantiser


def _time(path: str, images: str, repeat: int, out: str) -> None:
    """Latency of one export at batch 1 and 8 (run in a fresh process by :func:`bench_model`);
    writes the times and the batch's detections to ``out``."""
    det = _load(path)
    batch8 = np.load(images)
    ms1 = _median_ms(lambda: det.run(batch8[:1]), repeat)
    ms8 = _median_ms(lambda: det.run(batch8), max(3, repeat // 4))
    boxes, scores, labels, num = det.run(batch8)
    extra = {"quantiser": det.quantiser} if path.endswith(".xml") and det.precision == "int8" else {}
    np.savez(out, ms=np.array([ms1, ms8]), boxes=boxes, scores=scores, labels=labels, num=num, **extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help=f"a trained checkpoint (default {DEMO_CHECKPOINT} if present)")
    ap.add_argument("--models", default="ssdlite_effl0,ssd300_vgg16")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="only where the checkpoint's time goes")
    ap.add_argument("--time", nargs=4, metavar=("EXPORT", "IMAGES", "REPEAT", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.time:
        path, images, repeat, out = a.time
        _time(path, images, int(repeat), out)
        return
    from benchmarks.__main__ import row

    torch.set_num_threads(os.cpu_count() or 1)
    if a.breakdown:
        breakdown(a.checkpoint or DEMO_CHECKPOINT)
        return
    bench_deploy(a.quick, row, a.checkpoint, a.models)


if __name__ == "__main__":
    main()
