"""Export a detector to ONNX, decoding and NMS included, and run it with ONNX Runtime.

The exported graph takes ``images (N, 3, H, W)`` float RGB in 0-255 at the
model's input size, plus two scalars, ``score_threshold`` and ``iou_threshold``,
and returns padded detections, best first:

    boxes  (N, D, 4)  xyxy in fractions of the image (multiply by width/height)
    scores (N, D)     0 where padding
    labels (N, D)     classes 1..C, 0 where padding
    num    (N,)       real rows per image

``N`` is dynamic; ``D`` is the ``max_detections`` given at export time. The
post-processing is the same as :func:`multibox.nms.postprocess`: scores, decode,
clip, the best ``candidates_per_class`` per class, per-class greedy NMS (ONNX's
``NonMaxSuppression`` operator over every (image, class) group at once), then the
``D`` best over all classes, and box voting if the model has it on.

    export_onnx(model, "model.onnx", class_names)
    det = OnnxDetector("model.onnx")
    det.predict(["a.jpg"])   # same Prediction objects as multibox.Detector
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .boxes import clip_boxes, decode_boxes
from .detector import ImageInput, Prediction, image_list, resize_batch, to_rgb_array
from .models.ssd import SSD
from .nms import overlaps_above

OPSET = 17


class _NonMaxSuppression(torch.autograd.Function):
    """Per-group greedy NMS; traced into ONNX as one ``NonMaxSuppression`` node.

    ``boxes (G, K, 4)``, ``scores (G, 1, K)`` -> ``(S, 3)`` int64 rows ``(group, 0, index)``.
    The eager forward (used while tracing and in tests) computes the same thing in torch.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_out: Tensor, iou: Tensor, thr: Tensor) -> Tensor:
        from .boxes import box_iou
        from .nms import greedy_nms_mask

        s = scores[:, 0]
        order = s.argsort(dim=1, descending=True, stable=True)
        sb = torch.gather(boxes, 1, order.unsqueeze(-1).expand_as(boxes))
        ss = torch.gather(s, 1, order)
        keep = greedy_nms_mask(box_iou(sb, sb), ss > thr, float(iou))
        g, r = keep.nonzero(as_tuple=True)
        return torch.stack((g, torch.zeros_like(g), order[g, r]), dim=1)

    @staticmethod
    def symbolic(g, boxes, scores, max_out, iou, thr):
        return g.op("NonMaxSuppression", boxes, scores, max_out, iou, thr, center_point_box_i=0)


class ExportableSSD(nn.Module):
    """An :class:`SSD` with its post-processing as traceable tensor operations."""

    def __init__(self, model: SSD, max_detections: int | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        cfg = model.postprocess_config
        self.max_detections = max_detections or cfg.max_detections
        self.candidates = min(cfg.candidates_per_class or model.num_priors, model.num_priors)

    def forward(self, images: Tensor, score_threshold: Tensor, iou_threshold: Tensor):
        m = self.model
        loc, logits = m.forward_tta(images)  # with the model's test-time mirroring, if it has one
        if m.score_type == "softmax":
            scores = torch.softmax(logits.float(), dim=-1)[..., 1:]
        else:
            scores = torch.sigmoid(logits.float())
        boxes = clip_boxes(decode_boxes(loc.float(), m.priors, m.variances))  # (N, P, 4)
        c, k = scores.shape[-1], self.candidates
        # ONNX TopK puts the lower index first among equal values, as nms.postprocess's stable sort does
        top_scores, top_idx = scores.transpose(1, 2).topk(k, dim=-1)  # (N, C, K)
        cand = torch.gather(boxes.unsqueeze(1).expand(-1, c, -1, -1), 2, top_idx.unsqueeze(-1).expand(-1, -1, -1, 4))
        flat_boxes = cand.reshape(-1, k, 4)
        flat_scores = top_scores.reshape(-1, 1, k)
        selected = _NonMaxSuppression.apply(flat_boxes, flat_scores, torch.tensor([k], dtype=torch.int64),
                                            iou_threshold.reshape(1), score_threshold.reshape(1))
        pos = selected[:, 0] * k + selected[:, 2]
        all_scores = flat_scores.reshape(-1)
        kept = torch.full_like(all_scores, -1.0).index_put((pos,), all_scores[pos])
        kept = kept.reshape(images.shape[0], c * k)
        d = min(self.max_detections, c * k)
        best_scores, best = kept.topk(d, dim=1)
        real = best_scores > score_threshold
        out_boxes = torch.gather(cand.reshape(images.shape[0], c * k, 4), 1, best.unsqueeze(-1).expand(-1, -1, 4))
        labels = torch.div(best, k, rounding_mode="floor") + 1
        if m.postprocess_config.box_voting:
            out_boxes = _vote(out_boxes, labels - 1, cand, top_scores, score_threshold, iou_threshold)
        zero = torch.zeros((), dtype=out_boxes.dtype)
        return (
            torch.where(real.unsqueeze(-1), out_boxes, zero),
            torch.where(real, best_scores, zero),
            torch.where(real, labels, torch.zeros_like(labels)),
            real.sum(dim=1),
        )


def _vote(kept: Tensor, cls: Tensor, cand: Tensor, cand_scores: Tensor, score_threshold: Tensor,
          iou_threshold: Tensor) -> Tensor:
    """:func:`multibox.nms.vote_boxes` on dense blocks: ``kept (N, D, 4)`` of classes ``cls (N, D)``
    against the candidates ``cand (N, C, K, 4)`` with ``cand_scores (N, C, K)`` of their class
    (those above the score threshold vote)."""
    n, d = cls.shape
    k = cand.shape[2]
    voters = torch.gather(cand, 1, cls.view(n, d, 1, 1).expand(-1, -1, k, 4))  # (N, D, K, 4)
    scores = torch.gather(cand_scores, 1, cls.view(n, d, 1).expand(-1, -1, k))  # (N, D, K)
    member = overlaps_above(kept.unsqueeze(2), voters, iou_threshold) & (scores > score_threshold)
    weight = torch.where(member, scores, torch.zeros_like(scores))
    total = weight.sum(-1, keepdim=True)
    voted = (voters * weight.unsqueeze(-1)).sum(2) / total.clamp(min=torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, voted, kept)


def export_onnx(
    model: SSD,
    path: str | os.PathLike,
    class_names: Sequence[str],
    max_detections: int | None = None,
    opset: int = OPSET,
    postprocess: bool = True,
) -> str:
    """Write the whole detector (network, decoding, NMS) as one ONNX file with a dynamic batch.

    The class names, input size and default thresholds go into the file's metadata,
    so :class:`OnnxDetector` needs nothing else. ``postprocess=False`` writes the
    network alone (``images -> offsets, logits``), e.g. for benchmarking.
    """
    import onnx

    path = os.fspath(path)
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    wrapper = ExportableSSD(model.cpu().float(), max_detections).eval()
    h, w = model.image_size
    example = (torch.rand(2, 3, h, w) * 255, torch.tensor(model.postprocess_config.score_threshold),
               torch.tensor(model.postprocess_config.iou_threshold))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about Python scalars that are constants here
        if postprocess:
            torch.onnx.export(
                wrapper, example, path, dynamo=False, opset_version=opset,
                input_names=["images", "score_threshold", "iou_threshold"],
                output_names=["boxes", "scores", "labels", "num"],
                dynamic_axes={"images": {0: "batch"}, "boxes": {0: "batch"}, "scores": {0: "batch"},
                              "labels": {0: "batch"}, "num": {0: "batch"}},
            )
        else:
            torch.onnx.export(
                wrapper.model, example[:1], path, dynamo=False, opset_version=opset,
                input_names=["images"], output_names=["offsets", "logits"],
                dynamic_axes={"images": {0: "batch"}, "offsets": {0: "batch"}, "logits": {0: "batch"}},
            )
    proto = onnx.load(path)
    meta = {
        "class_names": json.dumps(list(class_names)),
        "image_size": json.dumps(list(model.image_size)),
        "score_threshold": str(model.postprocess_config.score_threshold),
        "iou_threshold": str(model.postprocess_config.iou_threshold),
        "max_detections": str(wrapper.max_detections),
        "producer": "multibox",
        "outputs": "detections" if postprocess else "network",
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


class OnnxDetector:
    """Runs an exported ``.onnx`` detector with ONNX Runtime; the same ``predict`` as :class:`Detector`."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
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
        meta = self.session.get_modelmeta().custom_metadata_map
        if "class_names" not in meta:
            raise ValueError(f"{path}: not a multibox ONNX export (no class_names metadata)")
        self.path = path
        self.class_names: list[str] = json.loads(meta["class_names"])
        self.image_size: tuple[int, int] = tuple(json.loads(meta["image_size"]))
        self.score_threshold = float(meta["score_threshold"])
        self.iou_threshold = float(meta["iou_threshold"])
        self.max_detections = int(meta["max_detections"])
        self.outputs = meta.get("outputs", "detections")

    def run(self, images: np.ndarray, conf: float | None = None, iou: float | None = None):
        """Raw outputs for a float32 ``(N, 3, H, W)`` batch: ``boxes, scores, labels, num``."""
        feeds = {
            "images": np.ascontiguousarray(images, dtype=np.float32),
            "score_threshold": np.array(self.score_threshold if conf is None else conf, dtype=np.float32),
            "iou_threshold": np.array(self.iou_threshold if iou is None else iou, dtype=np.float32),
        }
        return self.session.run(None, feeds)

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
            raise ValueError(f"{self.path} holds the network alone (exported with postprocess=False); "
                             "export the checkpoint again without it to predict")
        if max_det is not None and max_det > self.max_detections:
            raise ValueError(f"max_det {max_det} is above the {self.max_detections} this model was exported with")
        results: list[Prediction] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            arrays = [to_rgb_array(im) for im in chunk]
            batch = resize_batch(arrays, self.image_size).numpy().astype(np.float32)
            boxes, scores, labels, num = self.run(batch, conf, iou)
            for i, a in enumerate(arrays):
                n = int(num[i]) if max_det is None else min(int(num[i]), max_det)
                h, w = a.shape[:2]
                scale = np.array([w, h, w, h], dtype=np.float32)
                lab = labels[i, :n].astype(np.int64)
                src = chunk[i]
                results.append(Prediction(
                    boxes=(boxes[i, :n] * scale).astype(np.float32),
                    scores=scores[i, :n].astype(np.float32),
                    labels=lab,
                    names=[self.class_names[l - 1] for l in lab],
                    image_size=(h, w),
                    source=os.fspath(src) if isinstance(src, (str, os.PathLike)) else None,
                ))
        return results


def export_program(model: SSD, path: str | os.PathLike, class_names: Sequence[str]) -> str:
    """The network alone as a ``torch.export`` program (``.pt2``; ``images -> offsets, logits``,
    dynamic batch), with the priors and class names stored in the archive as ``meta.json``.
    Decode and NMS its outputs with :func:`multibox.nms.postprocess`; ONNX is the full-detector export.

        files = {"meta.json": ""}
        program = torch.export.load("model.pt2", extra_files=files)
        loc, logits = program.module()(images)
    """
    path = os.fspath(path)
    model = model.cpu().float().eval()
    h, w = model.image_size
    meta = {"class_names": list(class_names), "image_size": [h, w], "score_type": model.score_type,
            "variances": list(model.variances), "priors": model.priors.tolist()}
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(model, (torch.rand(2, 3, h, w) * 255,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path, extra_files={"meta.json": json.dumps(meta)})
    return path
