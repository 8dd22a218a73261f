"""High-level inference: a model, its class names and its preprocessing in one object.

    det = Detector(create_model("ssdlite_effl0", num_classes=3), ["RBC", "WBC", "Platelets"])
    preds = det.predict(["a.jpg", array_hwc_rgb, tensor_chw])
    preds[0].boxes  # (K, 4) xyxy pixels of the original image

Images may be file paths, ``(H, W, 3)`` uint8 RGB arrays, or ``(3, H, W)`` tensors
(uint8 0-255, or float in 0-1). Each is resized to the model's input size; the
boxes come back in pixels of the image as given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from ..models.fuse import inference_copy
from ..models.ssd import SSD
from .device import resolve_device
from .images import ImageInput, image_list, original_size, reading_limit, resize_batch, to_rgb_array
from .results import Prediction


class Detector:
    """A trained :class:`~multibox.models.SSD` ready for use on ordinary images."""

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str | torch.device = "cpu"):
        """A detector from a training checkpoint (``.pt``, loaded with ``weights_only=True``)
        or from an export (``.onnx``: ONNX Runtime; ``.xml``: OpenVINO); all have the same ``predict``."""
        if os.fspath(path).lower().endswith(".xml"):
            from .runtime import OpenVinoDetector

            return OpenVinoDetector(path)
        if os.fspath(path).lower().endswith(".onnx"):
            from .runtime import OnnxDetector

            return OnnxDetector(
                path,
                providers=["CUDAExecutionProvider", "CPUExecutionProvider"] if str(device).startswith("cuda") else None,
            )
        from .checkpoint import model_from_checkpoint

        model, names = model_from_checkpoint(path)
        return cls(model, names, device)

    def __init__(
        self,
        model: SSD,
        class_names: Sequence[str],
        device: str | torch.device = "cpu",
        tta: str | None = None,
        box_voting: bool | None = None,
    ) -> None:
        if len(class_names) != model.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
        device = resolve_device(device)
        self.model = model.to(device).eval()
        self.class_names = list(class_names)
        self.device = device
        self.tta = tta  # test-time mirroring (multibox.tta); None: the model's setting
        self.box_voting = box_voting  # box voting after NMS (multibox.nms); None: the model's setting
        # what predict() runs: BatchNorm folded, channels-last (same outputs, faster; docs/benchmarks.md)
        self._net = inference_copy(self.model, channels_last=True)

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` the model sees; images are resized to it."""
        return tuple(self.model.image_size)

    @torch.no_grad()
    def predict(
        self,
        images: ImageInput | Iterable[ImageInput],
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        batch_size: int = 8,
    ) -> list[Prediction]:
        """Detect objects; returns one :class:`Prediction` per image, in order."""
        images = image_list(images)
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            limit = reading_limit(self.model.image_size)
            arrays = [to_rgb_array(im, limit) for im in chunk]  # huge files read reduced
            originals = [original_size(im, a) for im, a in zip(chunk, arrays)]
            sizes = torch.tensor(originals, dtype=torch.float32)
            batch = resize_batch(arrays, self.model.image_size).to(self.device).float()
            batch = batch.contiguous(memory_format=torch.channels_last)
            det = self._net.predict(
                batch, sizes.to(self.device), conf, iou, max_det, tta=self.tta, box_voting=self.box_voting
            )
            for i, d in enumerate(det.per_image()):
                labels = d["labels"].cpu().numpy()
                src = chunk[i]
                results.append(
                    Prediction(
                        boxes=d["boxes"].cpu().numpy().astype(np.float32),
                        scores=d["scores"].cpu().numpy().astype(np.float32),
                        labels=labels.astype(np.int64),
                        names=[self.class_names[l - 1] for l in labels],
                        image_size=tuple(int(v) for v in originals[i]),
                        source=os.fspath(src) if isinstance(src, (str, os.PathLike)) else None,
                    )
                )
        return results
