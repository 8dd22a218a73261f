"""Export a detector to ONNX, decoding and NMS included (run it with :mod:`multibox.inference.runtime`).

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
    OnnxDetector("model.onnx").predict(["a.jpg"])   # multibox.inference.runtime
    export_openvino("model.onnx", "model.xml")      # the same graph as an OpenVINO IR

The graph is written by PyTorch's ``torch.export``-based exporter (NMS as the
``multibox::nms_groups`` operator, translated to ONNX's ``NonMaxSuppression``) when
``onnxscript`` is installed, else by the TorchScript-based one (``dynamo=False``, or the
environment variable ``MULTIBOX_ONNX_EXPORTER=legacy``, asks for it: 1.5 s instead of 14 s for
SSDLite); both give the same detections (tests/test_export.py, tests/test_deploy.py).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..core.boxes import clip_boxes
from ..core.nms import overlaps_above
from ..models.ssd import SSD

OPSET = 17


class _NonMaxSuppression(torch.autograd.Function):
    """Per-group greedy NMS; traced into ONNX as one ``NonMaxSuppression`` node.

    ``boxes (G, K, 4)``, ``scores (G, 1, K)`` -> ``(S, 3)`` int64 rows ``(group, 0, index)``.
    The eager forward (used while tracing and in tests) computes the same thing in torch.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_out: Tensor, iou: Tensor, thr: Tensor) -> Tensor:
        from ..core.boxes import box_iou
        from ..core.nms import greedy_nms_mask

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


@torch.library.custom_op("multibox::nms_groups", mutates_args=())
def nms_groups(boxes: Tensor, scores: Tensor, max_out: Tensor, iou: Tensor, thr: Tensor) -> Tensor:
    """:class:`_NonMaxSuppression` as a PyTorch operator, for the ``torch.export``-based ONNX
    exporter, which writes it as one ``NonMaxSuppression`` node (:func:`_nms_to_onnx`)."""
    return _NonMaxSuppression.forward(None, boxes, scores, max_out, iou, thr)


@nms_groups.register_fake
def _(boxes, scores, max_out, iou, thr):
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((n, 3), dtype=torch.int64)


def _nms_to_onnx(boxes, scores, max_out, iou, thr):
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(boxes, scores, max_out, iou, thr, center_point_box=0)


class ExportableSSD(nn.Module):
    """An :class:`SSD` with its post-processing as traceable tensor operations."""

    def __init__(self, model: SSD, max_detections: int | None = None, dynamo: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.dynamo = dynamo  # NMS as the multibox::nms_groups operator (torch.export) or a traced Function
        cfg = model.postprocess_config
        self.max_detections = max_detections or cfg.max_detections
        self.candidates = min(cfg.candidates_per_class or model.num_priors, model.num_priors)

    def forward(self, images: Tensor, score_threshold: Tensor, iou_threshold: Tensor):
        m = self.model
        # decoded boxes and probabilities, with the model's test-time mirroring if it has one
        boxes, probs = m.forward_tta(images, decoded=True)
        scores = probs[..., 1:] if m.score_type == "softmax" else probs
        boxes = clip_boxes(boxes)  # (N, P, 4)
        c, k = scores.shape[-1], self.candidates
        # ONNX TopK puts the lower index first among equal values, as nms.postprocess's stable sort does
        top_scores, top_idx = scores.transpose(1, 2).topk(k, dim=-1)  # (N, C, K)
        cand = torch.gather(boxes.unsqueeze(1).expand(-1, c, -1, -1), 2, top_idx.unsqueeze(-1).expand(-1, -1, -1, 4))
        flat_boxes = cand.reshape(-1, k, 4)
        flat_scores = top_scores.reshape(-1, 1, k)
        nms = nms_groups if self.dynamo else _NonMaxSuppression.apply
        selected = nms(
            flat_boxes,
            flat_scores,
            torch.tensor([k], dtype=torch.int64),
            iou_threshold.reshape(1),
            score_threshold.reshape(1),
        )
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


def _vote(
    kept: Tensor, cls: Tensor, cand: Tensor, cand_scores: Tensor, score_threshold: Tensor, iou_threshold: Tensor
) -> Tensor:
    """:func:`multibox.nms.vote_boxes` on dense blocks: ``kept (N, D, 4)`` of classes ``cls (N, D)``
    against the candidates ``cand (N, C, K, 4)`` with ``cand_scores (N, C, K)`` of their class
    (those above the score threshold vote). The voters are gathered coordinate-major,
    ``(N, D, 4, K)``, so that each coordinate is one contiguous ``(N, D, K)`` block."""
    n, d = cls.shape
    c, k = cand.shape[1], cand.shape[2]
    # row of each kept box's class among the N * C candidate blocks (a Gather of whole blocks,
    # cheaper than a GatherElements with its index expanded to every coordinate)
    rows = (cls + torch.arange(n, device=cls.device).unsqueeze(1) * c).reshape(-1)
    voters = cand.transpose(2, 3).reshape(n * c, 4, k).index_select(0, rows).reshape(n, d, 4, k)
    scores = cand_scores.reshape(n * c, k).index_select(0, rows).reshape(n, d, k)
    member = overlaps_above(kept.unsqueeze(-1), voters, iou_threshold, dim=2) & (scores > score_threshold)
    weight = torch.where(member, scores, torch.zeros_like(scores))  # (N, D, K)
    total = weight.sum(-1, keepdim=True)
    voted = (voters * weight.unsqueeze(2)).sum(-1) / total.clamp(min=torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, voted, kept)


def export_onnx(
    model: SSD,
    path: str | os.PathLike,
    class_names: Sequence[str],
    max_detections: int | None = None,
    opset: int = OPSET,
    postprocess: bool = True,
    dynamo: bool | None = None,
) -> str:
    """Write the whole detector (network, decoding, NMS) as one ONNX file with a dynamic batch.

    The class names, input size and default thresholds go into the file's metadata,
    so :class:`OnnxDetector` needs nothing else. ``postprocess=False`` writes the
    network alone (``images -> offsets, logits``), e.g. for benchmarking.
    """
    import onnx

    if dynamo is None:  # the torch.export-based exporter where its ONNX builder is installed
        dynamo = os.environ.get("MULTIBOX_ONNX_EXPORTER", "dynamo") != "legacy"
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            dynamo = False
    path = os.fspath(path)
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    wrapper = ExportableSSD(model.cpu().float(), max_detections, dynamo=dynamo).eval()
    h, w = model.image_size
    example = (
        torch.rand(2, 3, h, w) * 255,
        torch.tensor(model.postprocess_config.score_threshold),
        torch.tensor(model.postprocess_config.iou_threshold),
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about Python scalars that are constants here
        if dynamo:
            _export_dynamo(wrapper if postprocess else wrapper.model, example if postprocess else example[:1], path)
        elif postprocess:
            torch.onnx.export(
                wrapper,
                example,
                path,
                dynamo=False,
                opset_version=opset,
                input_names=["images", "score_threshold", "iou_threshold"],
                output_names=["boxes", "scores", "labels", "num"],
                dynamic_axes={
                    "images": {0: "batch"},
                    "boxes": {0: "batch"},
                    "scores": {0: "batch"},
                    "labels": {0: "batch"},
                    "num": {0: "batch"},
                },
            )
        else:
            torch.onnx.export(
                wrapper.model,
                example[:1],
                path,
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["offsets", "logits"],
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


def _export_dynamo(module: nn.Module, example: tuple, path: str) -> None:
    """The ``torch.export``-based exporter (``dynamo=True``), NMS translated to ONNX's operator."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    full = len(example) == 3
    names_in = ["images", "score_threshold", "iou_threshold"] if full else ["images"]
    names_out = ["boxes", "scores", "labels", "num"] if full else ["offsets", "logits"]
    shapes = ({0: batch}, None, None) if full else ({0: batch},)
    program = torch.onnx.export(
        module,
        example,
        dynamo=True,
        opset_version=18,
        input_names=names_in,
        output_names=names_out,
        dynamic_shapes=shapes,
        custom_translation_table={torch.ops.multibox.nms_groups.default: _nms_to_onnx},
        optimize=True,
        verbose=False,
    )
    program.save(path)


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
    meta = {
        "class_names": list(class_names),
        "image_size": [h, w],
        "score_type": model.score_type,
        "variances": list(model.variances),
        "priors": model.priors.tolist(),
    }
    batch = torch.export.Dim("batch", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(model, (torch.rand(2, 3, h, w) * 255,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path, extra_files={"meta.json": json.dumps(meta)})
    return path


def export_openvino(onnx_path: str | os.PathLike, path: str | os.PathLike) -> str:
    """Convert a multibox ONNX export (float or int8) to an OpenVINO IR (``path``: the ``.xml``;
    the weights go to the ``.bin`` beside it), decoding and NMS included, its metadata kept."""
    import onnx
    import openvino as ov

    onnx_path, path = os.fspath(onnx_path), os.fspath(path)
    meta = {p.key: p.value for p in onnx.load(onnx_path, load_external_data=False).metadata_props}
    model = ov.convert_model(onnx_path)
    for key, value in meta.items():
        model.set_rt_info(value, ["multibox", key])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ov.save_model(model, path, compress_to_fp16=False)
    return path
