"""Test-time augmentation by mirroring.

The detector also runs on mirrored copies of the batch. Mirroring maps the prior grid
onto itself: the prior in row r, column c (shape a) of a map with ``cols`` columns sees,
in the horizontally mirrored image, what the prior in column ``cols - 1 - c`` (same row,
same shape) sees in the original. So every prior gets one prediction per view: its own,
and its partner's on each mirrored view, whose decoded box is mirrored back. The views
are averaged per prior (decoded boxes, and class probabilities), re-encoded against the
prior, and handed to the usual post-processing, which never knows the difference.

Averaging probabilities rather than merging boxes after NMS steadies the scores, which
rank the detections that average precision is computed from.

Modes: ``"none"``, ``"hflip"`` (2 views), ``"hvflip"`` (4 views: as is, mirrored
left-right, top-bottom, both), for data with no up or down such as microscopy or aerial
images, and ``"dihedral"`` (8 views: those four and their transposes, i.e. every rotation
by a multiple of 90 degrees with and without mirroring). A transpose swaps rows and
columns of every grid and the width and height of every prior shape, so it needs square
inputs, square grids and a shape set closed under that swap (SSD's: ``1, r, 1/r`` and the
extra square). Inference costs grow with the number of views.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .boxes import decode_boxes, encode_boxes
from .priors import FeatureMapPriors

# each view beside the image as given: (mirror left-right, mirror top-bottom, then transpose)
TTA_MODES = {
    "none": (),
    "hflip": ((True, False, False),),
    "hvflip": ((True, False, False), (False, True, False), (True, True, False)),
    "dihedral": (
        (True, False, False),
        (False, True, False),
        (True, True, False),
        (False, False, True),
        (True, False, True),
        (False, True, True),
        (True, True, True),
    ),
}


def check_tta(mode: str) -> str:
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    return mode


def check_views(maps: Sequence[FeatureMapPriors], mode: str) -> str:
    """``mode`` if every view it asks for exists on these maps (transposes need square grids and
    shapes in transposed pairs), else a ValueError saying what is missing."""
    for view in TTA_MODES[check_tta(mode)]:
        mirror_partners(maps, *view)
    return mode


def transposed_shapes(fm: FeatureMapPriors) -> list[int]:
    """For each prior shape of ``fm``, the index of its transpose (width and height swapped)."""
    rows, cols = fm.size
    if rows != cols or (fm.step is not None and fm.step[0] != fm.step[1]):
        raise ValueError(
            f"transposed views (tta 'dihedral') need square grids with equal steps, got {rows}x{cols} (step {fm.step})"
        )
    out = []
    for w, h in fm.box_sizes:
        match = [b for b, (w2, h2) in enumerate(fm.box_sizes) if abs(w2 - h) < 1e-9 and abs(h2 - w) < 1e-9]
        if not match:
            raise ValueError(
                f"transposed views (tta 'dihedral') need every prior shape's transpose among the shapes; "
                f"{w:g} x {h:g} has none in {fm.box_sizes}"
            )
        out.append(match[0])
    return out


def mirror_partners(
    maps: Sequence[FeatureMapPriors], horizontal: bool = True, vertical: bool = False, transpose: bool = False
) -> Tensor:
    """Index ``(P,)`` of each prior's partner in the view that mirrors the image and then, if
    ``transpose``, transposes it (see the module docstring).

    Exact for grids centred on the image (the default steps); with explicit steps that do not
    tile the image exactly the partner is the mirrored cell, off the mirror image of the prior's
    centre by the grid's overhang (SSD300: 38 x 8 = 304 px, 4 px; 10 x 32 = 320 px, 20 px)."""
    out, offset = [], 0
    for fm in maps:
        rows, cols = fm.size
        idx = torch.arange(fm.num_priors).view(rows, cols, fm.num_priors_per_cell)
        if transpose:  # what the original sees at (r, c) the view sees at (c, r), in the swapped shape
            idx = idx.permute(1, 0, 2)[..., transposed_shapes(fm)]
        dims = [d for d, on in ((0, vertical), (1, horizontal)) if on]
        out.append((idx.flip(dims) if dims else idx).reshape(-1) + offset)
        offset += fm.num_priors
    return torch.cat(out)


def mirror_images(images: Tensor, horizontal: bool, vertical: bool, transpose: bool = False) -> Tensor:
    """The view of ``(N, C, H, W)`` images: mirrored, then transposed if asked."""
    dims = [d for d, on in ((-2, vertical), (-1, horizontal)) if on]
    if torch.onnx.is_in_onnx_export():  # a Gather: runtimes run ONNX's reversing Slice slowly (OpenVINO 0.3 ms)
        out = images
        for d in dims:
            n = out.shape[d]  # (n - 1 - arange: the TorchScript exporter writes a descending arange wrong)
            out = out.index_select(d, n - 1 - torch.arange(n, device=out.device))
    else:
        out = images.flip(dims) if dims else images  # (an empty flip exports to an invalid ONNX Slice)
    if transpose:
        out = out.transpose(-1, -2)
    if images.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def mirror_boxes(boxes: Tensor, horizontal: bool, vertical: bool, transpose: bool = False) -> Tensor:
    """xyxy boxes in image fractions of a view mapped back to the image: transposed back if
    the view was transposed, then mirrored in the unit square."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    if transpose:
        x1, y1, x2, y2 = y1, x1, y2, x2
    if horizontal:
        x1, x2 = 1 - x2, 1 - x1
    if vertical:
        y1, y2 = 1 - y2, 1 - y1
    return torch.stack((x1, y1, x2, y2), dim=-1)


def probabilities(logits: Tensor, score_type: str) -> Tensor:
    return logits.softmax(-1) if score_type == "softmax" else logits.sigmoid()


def logits_of(probs: Tensor, score_type: str) -> Tensor:
    """Inverse of :func:`probabilities` (softmax: up to a per-row constant, which it ignores)."""
    tiny = torch.finfo(probs.dtype).tiny
    if score_type == "softmax":
        return probs.clamp_min(tiny).log()
    return probs.clamp(tiny, 1 - 1e-7).logit()


def merge_views(
    views: Sequence[tuple[Tensor, Tensor]],
    partners: Sequence[Tensor | None],
    flips: Sequence[tuple[bool, ...]],
    priors: Tensor,
    score_type: str,
    variances: tuple[float, float],
    encode: bool = True,
) -> tuple[Tensor, Tensor]:
    """Average the ``(offsets, logits)`` of each view per prior; the first view is the
    image as given (partner ``None``, flips ``(False, False)``); ``flips`` are the arguments
    of :func:`mirror_boxes` that map each view back. Returns ``(offsets, logits)``
    of the merged prediction, for :func:`multibox.nms.postprocess`, or with ``encode=False``
    the averages themselves: ``(boxes, probabilities)``, boxes xyxy in image fractions."""
    boxes_sum, probs_sum = None, None
    for (loc, logits), idx, flip in zip(views, partners, flips):
        loc, logits, own = loc.float(), logits.float(), priors
        if idx is not None:  # the partner's prediction on the mirrored view, decoded against the partner
            loc, logits, own = loc.index_select(1, idx), logits.index_select(1, idx), priors.index_select(0, idx)
        boxes = mirror_boxes(decode_boxes(loc, own, variances), *flip)
        probs = probabilities(logits, score_type)
        boxes_sum = boxes if boxes_sum is None else boxes_sum + boxes
        probs_sum = probs if probs_sum is None else probs_sum + probs
    n = len(views)
    if not encode:
        return boxes_sum / n, probs_sum / n
    return encode_boxes(boxes_sum / n, priors, variances), logits_of(probs_sum / n, score_type)
