"""Post-training int8 quantisation of an exported detector (ONNX Runtime's static quantiser).

    quantize_onnx("model.onnx", "model.int8.onnx", calibration=["train/img1.jpg", ...])

The network's convolutions get int8 weights (per output channel) and int8 activations
(QDQ format: ``QuantizeLinear``/``DequantizeLinear`` pairs around each quantised operator),
with activation ranges calibrated on the given images, which should come from the training
set. Decoding, top-k and NMS stay in float32. The file keeps the export's metadata (class
names, input size, thresholds), so :class:`~multibox.inference.runtime.OnnxDetector` runs it
as it runs the float one; OpenVINO reads the same file and runs the network in int8.
"""

from __future__ import annotations

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
    proto = onnx.load(dst)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, dst)
    return dst
