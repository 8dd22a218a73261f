"""Run an exported detector: :class:`OnnxDetector` (ONNX Runtime), with the same
``predict`` as :class:`~multibox.inference.detector.Detector`.

    det = OnnxDetector("model.onnx")
    det.predict(["a.jpg"])   # Prediction objects, boxes in pixels of each image
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from .images import ImageInput, image_list, original_size, reading_limit, resize_batch, to_rgb_array
from .results import Prediction


class OnnxDetector:
    """Runs an exported ``.onnx`` detector with ONNX Runtime; the same ``predict`` as :class:`Detector`."""

    def __init__(
        self, path: str | os.PathLike, providers: Sequence[str] | None = None, threads: int | None = None
    ) -> None:
        import onnxruntime as ort

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"ONNX model not found: {path}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(path, opts, providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as e:
            raise ValueError(f"{path}: not a loadable ONNX model ({e})") from e
        self._read_meta(self.session.get_modelmeta().custom_metadata_map, path)

    def _read_meta(self, meta: dict, path: str) -> None:
        if "class_names" not in meta:
            raise ValueError(f"{path}: not a multibox export (no class_names metadata)")
        self.path = path
        self.precision = meta.get("precision", "float32")
        self.quantiser = meta.get("quantiser", "onnxruntime" if self.precision == "int8" else None)
        self.class_names: list[str] = json.loads(meta["class_names"])
        self.image_size: tuple[int, int] = tuple(json.loads(meta["image_size"]))
        self.score_threshold = float(meta["score_threshold"])
        self.iou_threshold = float(meta["iou_threshold"])
        self.max_detections = int(meta["max_detections"])
        self.outputs = meta.get("outputs", "detections")

    def feeds(self, images: np.ndarray, conf: float | None = None, iou: float | None = None) -> dict:
        """The graph's inputs for a float32 ``(N, 3, H, W)`` batch (default thresholds: the export's)."""
        return {
            "images": np.ascontiguousarray(images, dtype=np.float32),
            "score_threshold": np.array(self.score_threshold if conf is None else conf, dtype=np.float32),
            "iou_threshold": np.array(self.iou_threshold if iou is None else iou, dtype=np.float32),
        }

    def run(self, images: np.ndarray, conf: float | None = None, iou: float | None = None):
        """Raw outputs for a float32 ``(N, 3, H, W)`` batch: ``boxes, scores, labels, num``."""
        return self.session.run(None, self.feeds(images, conf, iou))

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` the exported model sees."""
        return self.image_size

    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        batch_size: int = 8,
    ) -> list[Prediction]:
        images = image_list(images)
        if self.outputs != "detections":
            raise ValueError(
                f"{self.path} holds the network alone (exported with postprocess=False); "
                "export the checkpoint again without it to predict"
            )
        if max_det is not None and max_det > self.max_detections:
            raise ValueError(f"max_det {max_det} is above the {self.max_detections} this model was exported with")
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            arrays = [to_rgb_array(im, reading_limit(self.image_size)) for im in chunk]  # huge files read reduced
            batch = resize_batch(arrays, self.image_size).numpy().astype(np.float32)
            boxes, scores, labels, num = self.run(batch, conf, iou)
            for i, a in enumerate(arrays):
                n = int(num[i]) if max_det is None else min(int(num[i]), max_det)
                h, w = original_size(chunk[i], a)
                scale = np.array([w, h, w, h], dtype=np.float32)
                lab = labels[i, :n].astype(np.int64)
                src = chunk[i]
                results.append(
                    Prediction(
                        boxes=(boxes[i, :n] * scale).astype(np.float32),
                        scores=scores[i, :n].astype(np.float32),
                        labels=lab,
                        names=[self.class_names[l - 1] for l in lab],
                        image_size=(h, w),
                        source=os.fspath(src) if isinstance(src, (str, os.PathLike)) else None,
                    )
                )
        return results


class OpenVinoDetector(OnnxDetector):
    """Runs an OpenVINO IR export (``.xml`` beside its ``.bin``) on OpenVINO's CPU (or another
    of its devices); the same ``predict`` as :class:`Detector`."""

    def __init__(self, path: str | os.PathLike, device: str = "CPU", threads: int | None = None) -> None:
        import openvino as ov

        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"OpenVINO model not found: {path}")
        core = ov.Core()
        try:
            model = core.read_model(path)
        except Exception as e:
            raise ValueError(f"{path}: not a loadable OpenVINO model ({str(e).splitlines()[0]})") from e
        meta = {}
        if model.has_rt_info(["multibox"]):
            info = model.get_rt_info()["multibox"]
            info = info.astype(dict) if hasattr(info, "astype") else info
            meta = {k: v.astype(str) if hasattr(v, "astype") else str(v) for k, v in info.items()}
        self._read_meta(meta, path)
        # float32 arithmetic where the model is float (OpenVINO would pick bf16 on CPUs with AMX,
        # moving scores by ~3e-3); an int8 network still runs in int8
        self._config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = int(threads)
        self._core, self._model, self._device = core, model, device
        self._requests: dict[int, tuple] = {}  # batch size -> (compiled model, infer request)
        self._request(1)  # compile now, so that an unrunnable model fails at load

    def _request(self, batch: int):
        """The model compiled for a fixed batch size (OpenVINO picks faster kernels for static
        shapes); the last few sizes are kept."""
        if batch not in self._requests:
            model = self._model.clone()
            h, w = self.image_size
            model.reshape({"images": [batch, 3, h, w]})
            compiled = self._core.compile_model(model, self._device, self._config)
            if len(self._requests) >= self.KEEP_SIZES:
                self._requests.pop(next(iter(self._requests)))
            self._requests[batch] = (compiled, compiled.create_infer_request())
        return self._requests[batch]

    KEEP_SIZES = 4

    def run(self, images: np.ndarray, conf: float | None = None, iou: float | None = None):
        compiled, request = self._request(len(images))
        out = request.infer(self.feeds(images, conf, iou))
        return [out[compiled.output(name)] for name in ("boxes", "scores", "labels", "num")]
