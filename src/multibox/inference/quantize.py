"""Post-training int8 quantisation of an exported detector.

    quantize_onnx("model.onnx", "model.int8.onnx", calibration=["train/img1.jpg", ...])
    quantize_openvino("model.onnx", "model.int8.xml", calibration=[...])

:func:`quantize_onnx` (ONNX Runtime's static quantiser) gives the network's convolutions int8
weights (per output channel) and int8 activations (QDQ format: ``QuantizeLinear``/
``DequantizeLinear`` pairs around each quantised operator), with activation ranges calibrated
on the given images, which should come from the training set. Decoding, top-k and NMS stay in
float32. The file keeps the export's metadata (class names, input size, thresholds), so
:class:`~multibox.inference.runtime.OnnxDetector` runs it as it runs the float one.

:func:`quantize_openvino` writes an OpenVINO IR with the same split (convolutions int8, the
rest float32) using OpenVINO's own quantiser, NNCF, where it is installed: on the demo model it
ran faster in OpenVINO than ONNX Runtime's QDQ file and kept COCO AP within 0.1 point of float
instead of losing 1.8 (docs/benchmarks.md). Without NNCF it converts :func:`quantize_onnx`'s file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence

import numpy as np

from .images import resize_batch, to_rgb_array

QUANTISED_OPS = ("Conv",)  # the network; the decode/NMS tail has no convolution


def calibration_batches(images: Sequence[str], size: tuple[int, int]):
    """One float32 ``(1, 3, H, W)`` batch per calibration image, resized as the detector does."""
    for path in images:
        yield resize_batch([to_rgb_array(path)], size).numpy().astype(np.float32)


def quantize_onnx(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: Sequence[str],
    method: str = "minmax",
) -> str:
    """Write ``src`` (a multibox ONNX export) as ``dst`` with an int8 network, calibrated on the
    ``calibration`` image files (``method``: ``minmax``, ``percentile`` or ``entropy``)."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .runtime import OnnxDetector

    src, dst = os.fspath(src), os.fspath(dst)
    if not calibration:
        raise ValueError("int8 quantisation needs calibration images (e.g. 50-200 from the training set)")
    det = OnnxDetector(src)
    inputs = {i.name for i in det.session.get_inputs()}
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise ValueError(f"unknown calibration method {method!r}; choose from {', '.join(methods)}")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration_batches(calibration, det.image_size)

        def get_next(self):
            batch = next(self.batches, None)
            if batch is None:
                return None
            feeds = det.feeds(batch)
            return {k: v for k, v in feeds.items() if k in inputs}  # a network-only export takes images alone

    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(src, prepared, skip_symbolic_shape=True)
        quantize_static(
            prepared,
            dst,
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTISED_OPS),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[method],
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
    # the quantiser drops custom metadata: carry the export's over
    meta = {p.key: p.value for p in onnx.load(src).metadata_props}
    meta["precision"] = "int8"
    meta["calibration_images"] = str(len(calibration))
    meta["quantiser"] = f"onnxruntime {onnxruntime.__version__}"
    proto = onnx.load(dst)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, dst)
    return dst


QUANTISED_OPENVINO_OPS = ("Convolution", "GroupConvolution")


def quantize_openvino(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    calibration: Sequence[str],
    quantiser: str = "auto",
) -> str:
    """Write ``src`` (a float multibox ONNX export) as the OpenVINO IR ``dst`` (``.xml``, with its
    ``.bin``) with an int8 network calibrated on the ``calibration`` image files. ``quantiser``:
    ``"nncf"`` (OpenVINO's; fast bias correction on), ``"onnxruntime"`` (:func:`quantize_onnx`,
    then converted), or ``"auto"``: NNCF if installed, else ONNX Runtime's."""
    from .export import export_openvino

    src, dst = os.fspath(src), os.fspath(dst)
    if not calibration:
        raise ValueError("int8 quantisation needs calibration images (e.g. 50-200 from the training set)")
    if quantiser not in ("auto", "nncf", "onnxruntime"):
        raise ValueError(f"unknown quantiser {quantiser!r}; choose from auto, nncf, onnxruntime")
    import importlib.util

    use_nncf = quantiser != "onnxruntime" and importlib.util.find_spec("nncf") is not None
    if quantiser == "nncf" and not use_nncf:
        raise ImportError("quantiser 'nncf' needs NNCF: pip install nncf")
    if not use_nncf:
        with tempfile.TemporaryDirectory() as tmp:
            return export_openvino(quantize_onnx(src, os.path.join(tmp, "int8.onnx"), calibration), dst)
    # NNCF runs in a Python process of its own, which leaves this one as it was (NNCF keeps
    # worker threads alive, and imports a good deal)
    import subprocess
    import sys

    args = json.dumps([os.path.abspath(src), os.path.abspath(dst), [os.path.abspath(p) for p in calibration]])
    code = (
        "import json, sys\nfrom multibox.inference import quantize\nquantize._nncf_quantize(*json.loads(sys.argv[1]))"
    )
    done = subprocess.run([sys.executable, "-c", code, args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        lines = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()]
        raise RuntimeError(f"NNCF quantisation of {src} failed: {lines[-1] if lines else 'no message'}")
    return dst


def _nncf_quantize(src: str, dst: str, calibration: list[str]) -> None:
    import logging

    import nncf
    import onnx
    import openvino as ov

    from .export import export_openvino

    nncf.set_log_level(logging.WARNING)  # not a line per operator it leaves in float
    with tempfile.TemporaryDirectory() as tmp:
        meta = {p.key: p.value for p in onnx.load(src, load_external_data=False).metadata_props}
        model = ov.Core().read_model(export_openvino(src, os.path.join(tmp, "float.xml")))
        size = tuple(json.loads(meta["image_size"]))
        thresholds = {  # (a network-only export takes images alone)
            k: np.array(float(meta[k]), np.float32) for k in ("score_threshold", "iou_threshold") if k in meta
        }
        inputs = {port.get_any_name() for port in model.inputs}
        data = nncf.Dataset(
            list(calibration_batches(calibration, size)),
            lambda batch: {k: v for k, v in {"images": batch, **thresholds}.items() if k in inputs},
        )
        # quantisers only on the inputs of convolutions: decoding, top-k, NMS and voting stay float
        others = sorted({op.get_type_name() for op in model.get_ordered_ops()} - set(QUANTISED_OPENVINO_OPS))
        quantised = nncf.quantize(
            model,
            data,
            subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(types=others, validate=False),
        )
        meta.update(precision="int8", calibration_images=str(len(calibration)), quantiser=f"nncf {nncf.__version__}")
        for key, value in meta.items():
            quantised.set_rt_info(value, ["multibox", key])
        os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
        ov.save_model(quantised, dst, compress_to_fp16=False)
