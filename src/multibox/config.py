"""Typed configuration: dataclasses, YAML presets and ``key=value`` overrides.

    cfg = load_config("ssdlite_effl0_bccd", overrides=["train.epochs=40", "train.lr=0.02"])

A preset is a YAML file in ``multibox/configs`` (by name) or any path. Every
field can be overridden from the command line with its dotted name; values are
parsed as YAML (``train.milestones=[0.6,0.8]``, ``data.val=null``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
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
    choose_tta: list | None = (
        None  # test-time views chosen on the val split after training, by COCO AP (first wins ties)
    )
    device: str = "auto"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/train"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config value of the wrong type or out of range; the message names the key and the value."""


# Ranges and choices of the fields that have them: (low, high, low inclusive, high inclusive) or a set.
_INF = float("inf")
CHECKS: dict[str, tuple | frozenset] = {
    "model.freeze": (0, _INF, True, True),
    "model.freeze_depthwise": (0, _INF, True, True),
    "data.format": frozenset({"auto", "voc", "xml", "folder", "coco", "yolo", "csv"}),
    "data.workers": (0, _INF, True, True),
    "data.coco_min_annotations": (0, _INF, True, True),
    "data.augment.expand_prob": (0, 1, True, True),
    "data.augment.max_expand": (1, _INF, True, True),
    "data.augment.crop_trials": (1, _INF, True, True),
    "data.augment.min_crop_scale": (0, 1, False, True),
    "data.augment.flip_prob": (0, 1, True, True),
    "data.augment.vflip_prob": (0, 1, True, True),
    "data.augment.brightness": (0, 255, True, True),
    "data.augment.hue": (0, 180, True, True),
    "data.augment.channel_swap_prob": (0, 1, True, True),
    "train.epochs": (1, _INF, True, True),
    "train.iterations": (1, _INF, True, True),
    "train.batch_size": (1, _INF, True, True),
    "train.lr": (0, _INF, False, True),
    "train.momentum": (0, 1, True, False),
    "train.weight_decay": (0, _INF, True, True),
    "train.warmup_iters": (0, _INF, True, True),
    "train.schedule": frozenset({"cosine", "multistep"}),
    "train.gamma": (0, 1, False, True),
    "train.clip_grad": (0, _INF, False, True),
    "train.match_iou": (0, 1, False, True),
    "train.matcher": frozenset({"iou", "atss"}),
    "train.atss_top_k": (1, _INF, True, True),
    "train.neg_pos_ratio": (0, _INF, False, True),
    "train.loc_weight": (0, _INF, True, True),
    "train.ema_decay": (0, 1, True, False),
    "train.amp": frozenset({"auto", "bf16", "fp16", "off"}),
    "train.eval_every": (0, _INF, True, True),
    "train.max_bad_steps": (1, _INF, True, True),
    "train.threads": (1, _INF, True, True),
    "train.time_budget": (0, _INF, False, True),
}


def _type_name(hint) -> str:
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        tuple: "a list",
    }.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(value, hint, key: str):
    """``value`` as the declared type ``hint`` (exponent numbers such as ``1e-3`` read as strings
    by YAML become floats; integral floats become ints); a :class:`ConfigError` otherwise."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"config key {key!r}: expected {_type_name(options[0])}, got null")
    for t in options:
        if t is type(None):
            continue
        if t is bool and isinstance(value, bool):
            return value
        if t is int and not isinstance(value, bool):
            if isinstance(value, int):
                return value
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
                return int(value)
        if t is float and not isinstance(value, bool):
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
        if t is str:
            if isinstance(value, str):
                return value
            if isinstance(value, bool):  # YAML 1.1 reads off/on/no/yes as booleans
                return "on" if value else "off"
            if isinstance(value, (int, float)):
                return str(value)
        if t in (list, tuple) and isinstance(value, (list, tuple)):
            return t(value)
        if t is dict and isinstance(value, dict):
            return value
    wanted = " or ".join(_type_name(t) for t in options if t is not type(None))
    raise ConfigError(f"config key {key!r}: expected {wanted}, got {value!r}")


def _check_range(key: str, value) -> None:
    rule = CHECKS.get(key)
    if rule is None or value is None:
        return
    if isinstance(rule, frozenset):
        if value not in rule:
            raise ConfigError(f"config key {key!r}: expected one of {', '.join(sorted(rule))}, got {value!r}")
        return
    lo, hi, lo_in, hi_in = rule
    ok = (value >= lo if lo_in else value > lo) and (value <= hi if hi_in else value < hi)
    if not ok:
        left, right = "[" if lo_in else "(", "]" if hi_in else ")"
        span = f"{left}{lo:g}, {hi:g}{right}" if hi != _INF else f"{'>=' if lo_in else '>'} {lo:g}"
        raise ConfigError(f"config key {key!r}: expected a value {'in ' if hi != _INF else ''}{span}, got {value!r}")


def _build(cls, values: dict, where: str):
    """Dataclass from a dict, recursively: unknown keys, wrong types and out-of-range values are
    a :class:`ConfigError` naming the dotted key, what was expected and the value given."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in values.items():
        if k not in fields:
            raise ConfigError(f"unknown config key {where + k!r}; valid keys: {', '.join(fields)}")
        hint = hints[k]
        sub = hint if dataclasses.is_dataclass(hint) else None
        if sub is not None:
            kwargs[k] = _build(sub, v, f"{where}{k}.")
        else:
            kwargs[k] = _coerce(v, hint, where + k)
            _check_range(where + k, kwargs[k])
    obj = cls(**kwargs)
    if cls is AugmentConfig:
        obj.min_ious = tuple(obj.min_ious)
        obj.contrast, obj.saturation = tuple(obj.contrast), tuple(obj.saturation)
        for name in ("contrast", "saturation"):
            pair = getattr(obj, name)
            if len(pair) != 2 or not all(isinstance(x, (int, float)) and x >= 0 for x in pair) or pair[0] > pair[1]:
                raise ConfigError(
                    f"config key {where + name!r}: expected [low, high] with 0 <= low <= high, got {list(pair)}"
                )
    if cls is TrainConfig and not all(isinstance(m, (int, float)) and m > 0 for m in obj.milestones):
        raise ConfigError(
            f"config key {where + 'milestones'!r}: expected fractions of training (0-1) or step counts, "
            f"got {obj.milestones}"
        )
    return obj


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot override {key!r}: {p!r} is not a section")
    d[parts[-1]] = value


def _parse_override(item: str) -> tuple[str, Any]:
    """``"key=value"`` -> ``(key, value parsed as YAML)``."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. train.lr=0.01)")
    key, raw = item.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        reason = str(e).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({reason})") from None


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
                raise ConfigError(f"{path}: invalid YAML ({e})") from None
    for item in overrides or []:
        _set_dotted(values, *_parse_override(item))
    return config_from_dict(values)


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of ``cfg`` with ``key=value`` overrides applied (values parsed as YAML)."""
    values = _plain(cfg.to_dict())
    for item in overrides:
        _set_dotted(values, *_parse_override(item))
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
