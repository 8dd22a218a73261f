"""A training recipe fitted to a dataset: SSD's counterpart of fitting anchors to the data.

    layout = detect_layout("my_data")
    cfg, reasons = fit_recipe(layout, time_budget=600)
    print("\\n".join(reasons))
    Trainer(cfg).fit()

The recipe is chosen from the training split's box statistics (:mod:`multibox.data.stats`)
by fixed rules, the same for every dataset:

* input size 320, or 416 when a tenth of the boxes are under 32 px at 320;
* a stride-8 feature map only when the smallest boxes (2nd percentile) are under 40 px;
* prior scales of three cells of each backbone map (smaller on the first map when the
  smallest boxes are), then linearly up to 0.95 over the extra maps (crops zoom objects in
  during training, so the large scales stay); aspect ratios 2 (and 3 when more than 5% of the
  boxes are more elongated than 1:2.5);
* zoom-out up to 2x for small objects (4x, the paper's, otherwise); the channel order kept;
* SSDLite on EfficientNet-Lite0 with ImageNet weights, the stem and first blocks frozen, every
  depthwise kernel kept (the demo's settings: fast steps on a CPU), batch 8, lr 0.04, cosine;
* box voting after NMS; at test time left-right mirroring, or left-right and up-down mirroring
  when the validation split scores that higher (COCO AP, after training);
* epochs from the time budget and the measured speed (``train.time_budget``, applied by the
  trainer).
"""

from __future__ import annotations

import os

import numpy as np

from ..config import Config, DataConfig, ModelConfig, TrainConfig
from ..data.base import DetectionDataset
from ..data.layout import Layout
from ..data.stats import BoxStats, box_stats
from ..data.transforms import AugmentConfig

VAL_FRACTION = 0.1  # held out of train when a dataset has no validation split


def plan_splits(layout: Layout) -> tuple[str, str | None, str | None, list[str]]:
    """``(train, val, test, notes)`` split expressions for a detected layout: the official
    splits where present, else a fixed, seeded tenth of train held out for validation."""
    names = layout.split_names()
    train = "train" if "train" in names else ("all" if "all" in names else None)
    if train is None:
        raise ValueError(f"{layout.root}: no training split found (splits: {', '.join(names)})")
    notes = []
    val = "val" if "val" in names else None
    if val is None:
        pct = round(VAL_FRACTION * 100)
        val, train = f"{train}[:{pct}%]", f"{train}[{pct}%:]"
        notes.append(f"no validation split: {pct}% of {train.split('[')[0]} held out (a fixed, seeded choice)")
    test = "test" if "test" in names else None
    if test is None:
        notes.append("no test split: the final report is written on the held-out validation split")
    return train, val, test, notes


def fit_model(stats: BoxStats) -> tuple[dict, dict, list[str]]:
    """Model keyword arguments and augmentation changes for these box statistics, with reasons."""
    reasons = []
    p2, p10 = stats.size_quantile(0.02), stats.size_quantile(0.10)
    size = 320
    if stats.boxes and p10 * 320 < 32:
        size = 416
        reasons.append(f"input 416 px: a tenth of the boxes are under {p10 * 320:.0f} px at 320")
    else:
        reasons.append(f"input 320 px: 90% of the boxes are at least {p10 * 320:.0f} px at 320")
    small = bool(stats.boxes) and p2 * size < 40
    strides = [8, 16, 32] if small else [16, 32]
    reasons.append(
        f"feature strides {strides}: "
        + (f"the smallest boxes (2%) are {p2 * size:.0f} px" if small else f"no boxes under {p2 * size:.0f} px")
    )
    # each backbone map's priors span about three of its cells (the paper's SSD300: 3.5-3.75),
    # so neighbouring priors overlap and every object lands near one; the extra maps go on
    # linearly to 0.95 (crops zoom objects in during training, so the large scales stay)
    backbone = [3 * st / size for st in strides]
    if stats.boxes and p2 < 0.75 * backbone[0]:  # objects smaller than the first map's priors
        backbone[0] = max(p2, 0.04)
    extras = np.linspace(backbone[-1], 0.95, 5)[1:]
    scales = [round(float(s), 3) for s in [*backbone, *extras]] + [1.05]
    reasons.append(
        f"prior scales {scales[:-1]}: three cells of each backbone map, then on to 0.95 "
        f"(smallest boxes: {p2:.3f} of the image)"
    )
    elongated = stats.fraction_elongated(2.5)
    ratios = [2, 3] if elongated > 0.05 else [2]
    reasons.append(f"aspect ratios {ratios}: {elongated:.0%} of the boxes are beyond 1:2.5")
    kwargs = {
        "image_size": size,
        "feature_strides": strides,
        "scales": scales,
        "aspect_ratios": ratios,
        "tta": "hflip",
        "box_voting": True,
    }
    augment = {"max_expand": 2.0 if small else 4.0, "channel_swap_prob": 0.0}
    reasons.append(
        f"zoom-out up to {augment['max_expand']}x; colour channels kept in order; box voting after NMS; at test, "
        "left-right mirroring, or both mirrorings if the validation split scores them higher"
    )
    return kwargs, augment, reasons


def prior_shapes(kwargs: dict) -> list[tuple[float, float]]:
    """``(width, height)`` of every prior shape of a recipe's model (fractions of the input):
    per map, a square of its scale, one between it and the next scale, and each aspect ratio."""
    scales, ratios = kwargs["scales"], kwargs["aspect_ratios"]
    shapes = []
    for s, s_next in zip(scales[:-1], scales[1:]):
        shapes += [(s, s), ((s * s_next) ** 0.5, (s * s_next) ** 0.5)]
        for r in ratios:
            shapes += [(s * r**0.5, s / r**0.5), (s / r**0.5, s * r**0.5)]
    return shapes


def fit_recipe(
    layout: Layout,
    time_budget: float = 600.0,
    out_dir: str | None = None,
    train_set: DetectionDataset | None = None,
) -> tuple[Config, list[str]]:
    """The :class:`~multibox.config.Config` of a run on a detected dataset, and its reasons.

    Args:
        layout: the dataset (:func:`multibox.data.layout.detect_layout`).
        time_budget: seconds of training; the trainer fits the epochs to its measured speed.
        out_dir: where the run writes (default ``runs/<dataset folder name>``).
        train_set: the training split if already loaded (its statistics are read).

    Returns:
        ``(config, reasons)``: the config and one line per choice saying why.
    """
    train, val, test, notes = plan_splits(layout)
    data = DataConfig(
        format="auto", root=layout.root, train=train, val=val, test=test, skip_bad=True, verify_images=True
    )
    if train_set is None:
        from ..data.build import load_split

        train_set = load_split(data, train)
    stats = box_stats(train_set)
    kwargs, augment, reasons = fit_model(stats)
    data.class_names = list(train_set.class_names)
    data.augment = AugmentConfig(**{**AugmentConfig().__dict__, **augment})
    name = os.path.basename(os.path.normpath(layout.root)) or "data"
    cfg = Config(
        model=ModelConfig(name="ssdlite_effl0", kwargs=kwargs, freeze=4, freeze_depthwise=3),
        data=data,
        train=TrainConfig(
            epochs=100,  # an upper bound; the time budget decides
            batch_size=8,
            lr=0.04,
            weight_decay=1e-4,
            warmup_iters=100,
            schedule="cosine",
            eval_every=0,
            time_budget=float(time_budget),
            choose_tta=["hflip", "hvflip"],  # chosen on the validation split after training
        ),
        out_dir=out_dir or os.path.join("runs", name),
    )
    reasons = notes + reasons
    reasons.append(f"epochs: as many as {time_budget / 60:.1f} minutes of training allow at the measured speed")
    return cfg, reasons
