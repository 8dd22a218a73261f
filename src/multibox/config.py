"""Typed configuration: dataclasses, YAML presets and ``key=value`` overrides.

    cfg = load_config("ssdlite_effl0_bccd", overrides=["train.epochs=40", "train.lr=0.02"])

A preset is a YAML file in ``multibox/configs`` (by name) or any path. Every
field can be overridden from the command line with its dotted name; values are
parsed as YAML (``train.milestones=[0.6,0.8]``, ``data.val=null``).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from .data.transforms import AugmentConfig

PRESET_DIR = os.path.join(os.path.dirname(__file__), "configs")


@dataclass
class ModelConfig:
    name: str = "ssdlite_effl0"
    kwargs: dict = field(default_factory=dict)  # passed to create_model (image_size, scales, ...)
    freeze: int = 0  # backbone units frozen from the input side (blocks, layers or convs), BN included
    freeze_depthwise: int = 0  # freeze backbone depthwise kernels at least this size (5: the 5x5 ones); 0 = none
    checkpoint: str | None = None  # start from these detector weights


@dataclass
class DataConfig:
    format: str = "voc"  # auto (detect) | voc | xml | folder | coco | yolo | csv
    root: str | list = "bccd"  # folder (or list, concatenated); relative names are looked up in the data dirs
    train: str = "train"
    val: str | None = "val"
    test: str | None = "test"
    class_names: list | None = None
    skip_bad: bool = False  # skip (count and list) unreadable or malformed files instead of stopping
    verify_images: bool = False  # decode every image before training (finds truncated files at once)
    workers: int = 1
    coco_min_annotations: int = 1  # drop COCO categories with fewer annotations (stray labels)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class TrainConfig:
    epochs: int = 50
    iterations: int | None = None  # if set, overrides epochs (the paper counts iterations)
    batch_size: int = 16
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = 100
    schedule: str = "cosine"  # cosine | multistep
    milestones: list = field(default_factory=lambda: [0.667, 0.833])  # fractions of training (multistep)
    gamma: float = 0.1
    clip_grad: float | None = 10.0
    match_iou: float = 0.5  # a prior is positive for an object it overlaps by at least this (the paper's 0.5)
    matcher: str = "iou"  # iou (SSD's: match_iou) | atss (per-object threshold, multibox.matching.match_atss)
    atss_top_k: int = 9  # atss: candidate priors per feature map, nearest the object's centre
    neg_pos_ratio: float = 3.0  # hard negatives per positive (softmax heads; the paper's 3:1)
    loc_weight: float = 1.0  # weight of the localization loss (the paper's alpha)
    ema_decay: float = 0.0  # exponential moving average of the weights (e.g. 0.998); 0 = off
    amp: str = "auto"  # auto (fp16/bf16 on CUDA, bf16 on CPUs with AMX, else off) | bf16 | fp16 | off
    channels_last: bool = True
    eval_every: int = 5  # epochs; 0 = only at the end
    seed: int = 0
    max_bad_steps: int = 20  # consecutive non-finite losses before stopping
    freeze_bn: bool = False  # keep every BatchNorm in eval mode
    threads: int | None = None  # torch CPU threads (default: all cores)
    time_budget: float | None = None  # seconds of training: epochs fitted to the measured speed (at most `epochs`)
    device: str = "auto"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/train"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    """Dataclass from a dict, recursively, rejecting unknown keys with their dotted path."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k not in fields:
            raise ValueError(f"unknown config key {where + k!r}; valid keys: {', '.join(fields)}")
        ftype = fields[k].type
        sub = {
            "ModelConfig": ModelConfig,
            "DataConfig": DataConfig,
            "TrainConfig": TrainConfig,
            "AugmentConfig": AugmentConfig,
        }.get(ftype if isinstance(ftype, str) else getattr(ftype, "__name__", ""))
        if ftype in ("str", str) and isinstance(v, bool):  # YAML 1.1 reads off/on/no/yes as booleans
            v = "on" if v else "off"
        kwargs[k] = _build(sub, v, f"{where}{k}.") if sub is not None else v
    obj = cls(**kwargs)
    if cls is AugmentConfig:
        obj.min_ious = tuple(obj.min_ious)
        obj.contrast, obj.saturation = tuple(obj.contrast), tuple(obj.saturation)
    return obj


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ValueError(f"cannot override {key!r}: {p!r} is not a section")
    d[parts[-1]] = value


def list_presets() -> list[str]:
    return sorted(f[:-5] for f in os.listdir(PRESET_DIR) if f.endswith(".yaml"))


def load_config(preset: str | None = None, overrides: list[str] | None = None) -> Config:
    """A preset name (see :func:`list_presets`) or YAML path, then ``key=value`` overrides."""
    values: dict = {}
    if preset:
        path = preset if os.path.isfile(preset) else os.path.join(PRESET_DIR, f"{preset}.yaml")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no config file or preset named {preset!r}; presets: {', '.join(list_presets())}")
        with open(path) as f:
            try:
                values = yaml.safe_load(f) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"{path}: invalid YAML ({e})") from None
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. train.lr=0.01)")
        key, raw = item.split("=", 1)
        _set_dotted(values, key.strip(), yaml.safe_load(raw))
    return config_from_dict(values)


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of ``cfg`` with ``key=value`` overrides applied (values parsed as YAML)."""
    values = _plain(cfg.to_dict())
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (e.g. train.lr=0.01)")
        key, raw = item.split("=", 1)
        _set_dotted(values, key.strip(), yaml.safe_load(raw))
    return config_from_dict(values)


def config_from_dict(values: dict) -> Config:
    return _build(Config, values, "")


def save_config(cfg: Config, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(_plain(cfg.to_dict()), f, sort_keys=False)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
