"""Box math: format conversions, areas, IoU, SSD offset encoding and clipping.

Every function is a pure, vectorised tensor function that accepts any number of
leading (batch) dimensions. Boxes are ``(..., 4)`` tensors, either corner form
``xyxy = (x1, y1, x2, y2)`` with ``x1 <= x2, y1 <= y2`` or centre form
``cxcywh = (cx, cy, w, h)``. Inside a model coordinates are fractions of the
image in ``[0, 1]``; at the API boundary they are pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# SSD's "variances": the regression targets of the centre are divided by 0.1 and
# those of the log-size by 0.2, which is torchvision's BoxCoder weights (10, 10, 5, 5).
DEFAULT_VARIANCES: tuple[float, float] = (0.1, 0.2)

# exp() of a predicted log-scale above this is clamped, so an untrained head
# cannot produce inf boxes (a box 1000/16 times the prior is already absurd).
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def check_boxes(boxes: Tensor, name: str = "boxes", fmt: str = "xyxy") -> None:
    """Raise ``ValueError`` naming the first bad box: wrong shape, NaN/inf, or x2 < x1."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4), got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {boxes.dtype}")
    if boxes.numel() == 0:
        return
    flat = boxes.reshape(-1, 4)
    bad = ~torch.isfinite(flat).all(dim=1)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"{name} contains a non-finite box at index {i}: {flat[i].tolist()}")
    if fmt == "xyxy":
        bad = (flat[:, 2] < flat[:, 0]) | (flat[:, 3] < flat[:, 1])
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{name} has a box with x2 < x1 or y2 < y1 at index {i}: {flat[i].tolist()} (expected [x1, y1, x2, y2])"
            )
    elif fmt == "cxcywh":
        bad = (flat[:, 2] < 0) | (flat[:, 3] < 0)
        if bad.any():
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name} has a negative width or height at index {i}: {flat[i].tolist()}")
    else:
        raise ValueError(f"unknown box format {fmt!r}; expected 'xyxy' or 'cxcywh'")


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Areas of ``(..., 4)`` xyxy boxes; degenerate boxes have area 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise Jaccard overlap of xyxy boxes.

    ``boxes1`` is ``(..., A, 4)`` and ``boxes2`` is ``(..., B, 4)``; leading
    dimensions broadcast, so ``(N, A, 4)`` against ``(B, 4)`` gives ``(N, A, B)``.
    Pairs whose union is empty (two degenerate boxes) have IoU 0.
    """
    if boxes1.shape[-1] != 4 or boxes2.shape[-1] != 4:
        raise ValueError(f"box_iou expects (..., 4) tensors, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    # Coordinates as contiguous rows (..., 4, A) and (..., 4, B): the (A, B) arithmetic then runs
    # on unit-stride operands, several times faster than slicing the interleaved last dimension.
    a = [c.unsqueeze(-1) for c in boxes1.transpose(-1, -2).contiguous().unbind(-2)]
    b = [c.unsqueeze(-2) for c in boxes2.transpose(-1, -2).contiguous().unbind(-2)]
    return iou_from_coordinates(*a, *b)


def iou_from_coordinates(
    ax1: Tensor, ay1: Tensor, ax2: Tensor, ay2: Tensor, bx1: Tensor, by1: Tensor, bx2: Tensor, by2: Tensor
) -> Tensor:
    """Jaccard overlap of boxes given as broadcastable coordinate tensors (``(A, 1)`` against
    ``(1, B)`` for a matrix, ``(Q,)`` against ``(Q,)`` for listed pairs); an empty union gives 0."""
    inter = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
    inter = inter.mul_((torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0))
    union = ((ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)) + (
        (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    )
    union = union.sub_(inter)
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), 0.0)


def box_iou_numpy(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """:func:`box_iou` for ``(A, 4)`` and ``(B, 4)`` numpy arrays (data loading and
    evaluation work in numpy); pairs with an empty union have IoU 0."""
    lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area1 = np.prod(np.clip(boxes1[:, 2:] - boxes1[:, :2], 0, None), axis=1)
    area2 = np.prod(np.clip(boxes2[:, 2:] - boxes2[:, :2], 0, None), axis=1)
    union = area1[:, None] + area2[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def box_iou_inclusive_numpy(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """IoU as the Pascal VOC devkit computes it (``VOCevaldet.m``): coordinates are inclusive
    pixel indices, so a box spans ``x2 - x1 + 1`` pixels; pairs whose intersection is not
    positive in both directions get ``-inf`` (the devkit never considers them).

    Args:
        boxes1: ``(A, 4)`` xyxy.
        boxes2: ``(B, 4)`` xyxy.

    Returns:
        ``(A, B)`` float64 overlaps.
    """
    b1, b2 = np.asarray(boxes1, np.float64), np.asarray(boxes2, np.float64)
    iw = np.minimum(b1[:, None, 2], b2[None, :, 2]) - np.maximum(b1[:, None, 0], b2[None, :, 0]) + 1
    ih = np.minimum(b1[:, None, 3], b2[None, :, 3]) - np.maximum(b1[:, None, 1], b2[None, :, 1]) + 1
    inter = iw * ih
    area1 = (b1[:, 2] - b1[:, 0] + 1) * (b1[:, 3] - b1[:, 1] + 1)
    area2 = (b2[:, 2] - b2[:, 0] + 1) * (b2[:, 3] - b2[:, 1] + 1)
    union = area1[:, None] + area2[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((iw > 0) & (ih > 0), inter / union, -np.inf)


def tanh_offsets(raw: Tensor, variances: tuple[float, float] = DEFAULT_VARIANCES) -> Tensor:
    """The ResNet walkthrough's bounded offsets (its ``actn_to_bb``), as SSD offsets.

    The walkthrough squashes a head's raw output with ``tanh`` and moves each prior by at most
    half its size: centre ``p_c + tanh(r_c) / 2 * p_wh``, size ``(1 + tanh(r_wh) / 2) * p_wh``.
    Those boxes in SSD's encoding (:func:`encode_boxes`) are ``tanh(r_c) / (2 v0)`` and
    ``log(1 + tanh(r_wh) / 2) / v1``, so :func:`decode_boxes` then gives the walkthrough's boxes
    and every later stage (post-processing, mirroring, export, the loss) stays as it is.

    Args:
        raw: ``(..., 4)`` raw head outputs.
        variances: SSD's ``(v0, v1)``.

    Returns:
        ``(..., 4)`` SSD offsets.
    """
    t = torch.tanh(raw)
    return torch.cat((t[..., :2] / (2 * variances[0]), torch.log1p(t[..., 2:] / 2) / variances[1]), dim=-1)


def encode_boxes(boxes: Tensor, priors: Tensor, variances: tuple[float, float] = DEFAULT_VARIANCES) -> Tensor:
    """Regression targets of xyxy ``boxes`` against cxcywh ``priors`` (SSD eq. 2).

    ``t_cx = (g_cx - p_cx) / (v0 p_w)``, ``t_w = log(g_w / p_w) / v1`` and the same
    for y and h. Shapes broadcast: ``(N, P, 4)`` boxes against ``(P, 4)`` priors.
    Boxes must have positive width and height.
    """
    g = xyxy_to_cxcywh(boxes)
    v0, v1 = variances
    centre = (g[..., :2] - priors[..., :2]) / (v0 * priors[..., 2:])
    size = torch.log(g[..., 2:] / priors[..., 2:]) / v1
    return torch.cat((centre, size), dim=-1)


def decode_boxes(offsets: Tensor, priors: Tensor, variances: tuple[float, float] = DEFAULT_VARIANCES) -> Tensor:
    """Exact inverse of :func:`encode_boxes`: offsets ``(..., P, 4)`` to xyxy boxes."""
    v0, v1 = variances
    centre = priors[..., :2] + offsets[..., :2] * v0 * priors[..., 2:]
    half = priors[..., 2:] * torch.exp((offsets[..., 2:] * v1).clamp(max=_MAX_LOG_SCALE)) / 2
    return torch.cat((centre - half, centre + half), dim=-1)


def clip_boxes(boxes: Tensor, width: float | Tensor = 1.0, height: float | Tensor = 1.0) -> Tensor:
    """Clip xyxy boxes to ``[0, width] x [0, height]`` (per-image sizes broadcast)."""
    if isinstance(width, (int, float)) and isinstance(height, (int, float)) and width == height:  # one clamp
        return boxes.clamp(0.0, float(width))  # both floats: the torch.export-based ONNX exporter needs one type
    w = torch.as_tensor(width, dtype=boxes.dtype, device=boxes.device)
    h = torch.as_tensor(height, dtype=boxes.dtype, device=boxes.device)
    upper = torch.stack((w, h, w, h), dim=-1)
    return torch.minimum(boxes.clamp(min=0), upper)
