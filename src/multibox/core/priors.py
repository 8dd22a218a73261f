"""Prior (default) boxes.

A detector head predicts, for every cell of every feature map, one set of
offsets per prior shape. A :class:`FeatureMapPriors` lists those shapes for one
map; :func:`make_priors` tiles them over the grid and concatenates the maps in
head order: map by map, row by row, column by column, shape by shape (the order
in which a head's ``(N, A*K, H, W)`` output is flattened).

Presets:

* :func:`ssd_feature_maps` - the paper's rule: scale ``s_k`` per map, boxes of
  aspect ratios ``1, r, 1/r`` (width ``s*sqrt(r)``, height ``s/sqrt(r)``) plus one
  extra square of side ``sqrt(s_k * s_{k+1})``;
* :func:`grid_feature_maps` - the ResNet34 walkthrough's anchors, zooms times
  (w, h) ratios relative to the cell size.

Priors are returned in centre form ``(P, 4)`` as fractions of the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .boxes import cxcywh_to_xyxy, xyxy_to_cxcywh


@dataclass(frozen=True)
class FeatureMapPriors:
    """Prior shapes of one feature map.

    Attributes:
        size: grid size ``(rows, cols)`` of the feature map.
        box_sizes: ``(w, h)`` of each prior shape as fractions of the image.
        step: distance between cell centres as a fraction of the image
            (``(sy, sx)``); ``None`` means ``1/rows, 1/cols`` as in the paper.
    """

    size: tuple[int, int]
    box_sizes: tuple[tuple[float, float], ...]
    step: tuple[float, float] | None = None

    @property
    def num_priors_per_cell(self) -> int:
        return len(self.box_sizes)

    @property
    def num_priors(self) -> int:
        return self.size[0] * self.size[1] * len(self.box_sizes)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def ssd_feature_maps(
    sizes: Sequence[int | Sequence[int]],
    scales: Sequence[float],
    aspect_ratios: Sequence[Sequence[float]],
    steps: Sequence[float] | None = None,
) -> list[FeatureMapPriors]:
    """Prior shapes following SSD section 2.2.

    Args:
        sizes: grid size of each of the ``m`` feature maps.
        scales: ``m + 1`` scales ``s_1..s_{m+1}``; map ``k`` uses ``s_k`` and an
            extra square box of side ``sqrt(s_k * s_{k+1})``.
        aspect_ratios: per map, the ratios ``r > 1`` to add as ``r`` and ``1/r``
            (``[2]`` gives 4 boxes per cell, ``[2, 3]`` gives 6).
        steps: optional cell stride per map in units of the input size
            (e.g. torchvision's ``8, 16, 32, 64, 100, 300`` over 300 pixels are
            passed as ``s / 300``); default ``1 / size``.

    Shapes per cell, in order: ``(s_k, s_k)``, the extra square, then for each
    ratio ``(s*sqrt(r), s/sqrt(r))`` and ``(s/sqrt(r), s*sqrt(r))``.
    """
    m = len(sizes)
    if len(scales) != m + 1:
        raise ValueError(f"need {m + 1} scales for {m} feature maps (the last is s_(m+1)), got {len(scales)}")
    if len(aspect_ratios) != m:
        raise ValueError(f"need aspect ratios for each of the {m} feature maps, got {len(aspect_ratios)}")
    if steps is not None and len(steps) != m:
        raise ValueError(f"need one step per feature map ({m}), got {len(steps)}")
    maps = []
    for k in range(m):
        s, s_next = float(scales[k]), float(scales[k + 1])
        extra = math.sqrt(s * s_next)
        shapes = [(s, s), (extra, extra)]
        for r in aspect_ratios[k]:
            if r <= 0:
                raise ValueError(f"aspect ratios must be positive, got {r} for map {k}")
            q = math.sqrt(r)
            shapes += [(s * q, s / q), (s / q, s * q)]
        step = None if steps is None else (float(steps[k]), float(steps[k]))
        maps.append(FeatureMapPriors(_pair(sizes[k]), tuple(shapes), step))
    return maps


def grid_feature_maps(
    cells: Sequence[int] = (4, 2, 1),
    zooms: Sequence[float] = (0.7, 1.0, 1.3),
    ratios: Sequence[tuple[float, float]] = ((1.0, 1.0), (1.0, 0.5), (0.5, 1.0)),
) -> list[FeatureMapPriors]:
    """The walkthrough's grid anchors: ``k = len(zooms) * len(ratios)`` per cell,
    each ``(zoom * rw / cells, zoom * rh / cells)``; defaults give k = 9 and 189 priors."""
    maps = []
    for c in cells:
        shapes = tuple((z * rw / c, z * rh / c) for z in zooms for rw, rh in ratios)
        maps.append(FeatureMapPriors((int(c), int(c)), shapes))
    return maps


def make_priors(maps: Sequence[FeatureMapPriors], clip: bool | str = False) -> Tensor:
    """Tile the prior shapes over each grid: ``(P, 4)`` cxcywh in image fractions.

    ``clip=True`` (or ``"box"``) clips each prior to the image (in corner form) and
    converts back, as the reference SSD implementation does; ``clip="size"`` only
    caps widths and heights at 1, as torchvision's ``DefaultBoxGenerator`` does.
    """
    if clip not in (False, True, "box", "size", "none", None):
        raise ValueError(f"clip must be False, True/'box' or 'size', got {clip!r}")
    out = []
    for fm in maps:
        rows, cols = fm.size
        if fm.step is None:  # (i + 0.5) / rows, as the paper writes it (bit for bit the seed's centres)
            cy = (torch.arange(rows, dtype=torch.float64) + 0.5) / rows
            cx = (torch.arange(cols, dtype=torch.float64) + 0.5) / cols
        else:
            sy, sx = fm.step
            cy = (torch.arange(rows, dtype=torch.float64) + 0.5) * sy
            cx = (torch.arange(cols, dtype=torch.float64) + 0.5) * sx
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")  # (rows, cols)
        wh = torch.tensor(fm.box_sizes, dtype=torch.float64)  # (A, 2)
        centres = torch.stack((cx, cy), dim=-1).reshape(-1, 1, 2).expand(-1, len(wh), 2)
        sizes = wh.unsqueeze(0).expand(rows * cols, -1, 2)
        out.append(torch.cat((centres, sizes), dim=-1).reshape(-1, 4))
    priors = torch.cat(out, dim=0)
    if clip == "size":
        priors = torch.cat((priors[:, :2], priors[:, 2:].clamp(max=1.0)), dim=1)
    elif clip in (True, "box"):
        priors = xyxy_to_cxcywh(cxcywh_to_xyxy(priors).clamp(0.0, 1.0))
    return priors.to(torch.float32)


# --- presets -----------------------------------------------------------------

SSD300_SCALES = (0.1, 0.2, 0.375, 0.55, 0.725, 0.9, 1.0)
SSD300_SIZES = (38, 19, 10, 5, 3, 1)
SSD300_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))

SSD512_SCALES = (0.07, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05)
SSD512_SIZES = (64, 32, 16, 8, 4, 2, 1)
SSD512_RATIOS = ((2,), (2, 3), (2, 3), (2, 3), (2, 3), (2,), (2,))


def ssd300_priors(clip: bool = False) -> Tensor:
    """The paper's SSD300 priors (8732), scales 0.1, 0.2, 0.375, 0.55, 0.725, 0.9."""
    return make_priors(ssd_feature_maps(SSD300_SIZES, SSD300_SCALES, SSD300_RATIOS), clip)


def ssd512_priors(clip: bool = False) -> Tensor:
    """SSD512 priors (24564), the reference implementation's scales 0.07 ... 0.9."""
    return make_priors(ssd_feature_maps(SSD512_SIZES, SSD512_SCALES, SSD512_RATIOS), clip)


# SSD300 prior variants (``create_model("ssd300_vgg16", priors=...)``), 8732 boxes each:
#   paper        the paper's rule: scales 0.1, 0.2, 0.375, ... 0.9, the last map's extra square
#                sqrt(0.9 * 1.0), no clipping (the default)
#   seed         the seed tutorial's create_prior_boxes: per cell 1, extra, 2, [3,] 0.5, [.333] (its
#                literal ratio), the last extra square 1.0, every (cx, cy, w, h) clamped to [0, 1]
#   caffe        the original implementation: min/max sizes 30, 60, 111, 162, 213, 264 / 315 px
#                over 300, steps 8, 16, 32, 64, 100, 300, centres at (i + 0.5) * step
#   torchvision  torchvision's DefaultBoxGenerator: scales 0.07 ... 1.05, the same steps, widths
#                and heights capped at 1
SSD300_PRIOR_VARIANTS = ("paper", "seed", "caffe", "torchvision")
SSD300_STEPS = (8, 16, 32, 64, 100, 300)
SSD300_CAFFE_SIZES = (30, 60, 111, 162, 213, 264, 315)  # min sizes, then the last max size
SSD512_PRIOR_VARIANTS = ("paper", "caffe")
SSD512_STEPS = (8, 16, 32, 64, 128, 256, 512)
SSD512_CAFFE_SIZES = (20.48, 51.2, 133.12, 215.04, 296.96, 378.88, 460.8, 542.72)
TORCHVISION_SSD300_SCALES = (0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05)
# input size -> (grid sizes, aspect ratios, steps in pixels, Caffe pixel sizes, variants offered)
_VARIANT_TABLES = {
    300: (SSD300_SIZES, SSD300_RATIOS, SSD300_STEPS, SSD300_CAFFE_SIZES, SSD300_PRIOR_VARIANTS),
    512: (SSD512_SIZES, SSD512_RATIOS, SSD512_STEPS, SSD512_CAFFE_SIZES, SSD512_PRIOR_VARIANTS),
}


def ssd_prior_variant(variant: str, image_size: int = 300) -> tuple[list[FeatureMapPriors], bool | str]:
    """The prior maps and clipping of a named SSD300 or SSD512 variant (see the table above).

    Args:
        variant: one of :data:`SSD300_PRIOR_VARIANTS` (``image_size`` 300) or
            :data:`SSD512_PRIOR_VARIANTS` (512).
        image_size: 300 or 512.

    Returns:
        ``(maps, clip)`` for :func:`make_priors`.
    """
    if image_size not in _VARIANT_TABLES:
        raise ValueError(f"prior variants exist for SSD300 and SSD512, not {image_size} px inputs")
    sizes, ratios, steps, caffe, known = _VARIANT_TABLES[image_size]
    if variant not in known:
        raise ValueError(f"priors must be one of {', '.join(known)} for SSD{image_size}, got {variant!r}")
    if variant == "paper":
        scales = SSD300_SCALES if image_size == 300 else SSD512_SCALES
        return ssd_feature_maps(sizes, scales, ratios), False
    if variant == "caffe":
        scales = [v / image_size for v in caffe]
        return ssd_feature_maps(sizes, scales, ratios, [st / image_size for st in steps]), False
    if variant == "torchvision":
        steps_f = [st / image_size for st in steps]
        return ssd_feature_maps(sizes, TORCHVISION_SSD300_SCALES, ratios, steps_f), "size"
    # seed: its own order and its literal ratios, the last extra square 1.0, clamped
    scales = SSD300_SCALES[:-1]
    maps = []
    for k, (n, rs) in enumerate(zip(sizes, ratios)):
        s = scales[k]
        extra = math.sqrt(s * scales[k + 1]) if k + 1 < len(scales) else 1.0
        seed_ratios = (2.0, 3.0, 0.5, 0.333) if 3 in rs else (2.0, 0.5)
        shapes = [(s, s), (extra, extra)] + [(s * math.sqrt(r), s / math.sqrt(r)) for r in seed_ratios]
        maps.append(FeatureMapPriors(_pair(n), tuple(shapes)))
    return maps, "size"


def linear_scales(num_maps: int, s_min: float = 0.2, s_max: float = 0.9) -> tuple[float, ...]:
    """``m + 1`` scales by the paper's rule ``s_k = s_min + (s_max - s_min)(k - 1)/(m - 1)``,
    continued one step past ``s_max`` for the last map's extra box."""
    if num_maps < 2:
        return (s_min, s_max)
    d = (s_max - s_min) / (num_maps - 1)
    return tuple(s_min + d * k for k in range(num_maps + 1))
