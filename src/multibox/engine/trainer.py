"""Training loop.

``Trainer(cfg).fit()`` builds the datasets, model, loss and optimiser from a
:class:`~multibox.config.Config` and trains:

* SGD with momentum; weight decay on weights only (not on biases or norms);
* linear warmup, then cosine or multistep decay, stepped per iteration;
* mixed precision on CUDA (bf16, or fp16 with loss scaling) and on CPUs with AMX (bf16,
  depthwise convolutions kept in float32);
* gradient clipping; non-finite losses are skipped and counted, and a run of
  them stops training with a message naming the likely causes;
* optionally an exponential moving average of the weights (``ema_decay``), which is
  what validation scores and what checkpoints hand to inference;
* validation every ``eval_every`` epochs with the VOC metric, keeping the best;
* atomic checkpoints after every epoch (``last.pt``, ``best.pt``) holding weights,
  optimiser, schedule position, RNG states, config and class names; ``resume``
  continues exactly: every epoch re-seeds its shuffling, augmentation and
  dropout from ``(seed, epoch)``, so a resumed run retraces an uninterrupted one;
* a progress bar, ``log.csv``, loss/mAP curves (PNG) and TensorBoard if installed;
* DistributedDataParallel under ``torchrun`` (NCCL on GPUs, gloo on CPU); the
  loss is normalised by the positives of the whole global batch, and only
  rank 0 writes files.
"""

from __future__ import annotations

import copy
import csv
import logging
import math
import os
import random
import time
import weakref

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from ..config import Config, save_config
from ..core.losses import FocalLoss, MultiBoxLoss
from ..core.matching import make_matcher
from ..data.base import DetectionDataset
from ..data.loader import make_loader
from ..data.transforms import SSDTransform
from ..inference.checkpoint import atomic_save, load_checkpoint
from ..inference.device import resolve_device
from ..inference.evaluate import evaluate_model
from ..models import SSD, create_model
from ..models.layers import cpu_has_fast_bf16
from ..models.weights import check_state_dict, load_matching
from .ema import WeightAverage
from .rundir import RunLock

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    pass


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only; biases, norm weights and scales are exempt."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_sgd(groups: list[dict], lr: float, momentum: float, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum; on CPUs and GPUs the fused kernel, one pass per parameter with the
    same numbers as the per-tensor loop, and faster (docs/benchmarks.md)."""
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.SGD(groups, lr=lr, momentum=momentum, fused=True)
        except (RuntimeError, TypeError, ValueError):  # a torch without it
            pass
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (same gradients, bit for bit; returns the total norm)
    that leaves the gradients alone when they are within the limit instead of multiplying
    every one by 1."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = max_norm / (total + 1e-6)
    if total.device.type != "cpu":  # no host sync on accelerators: multiply as PyTorch does
        torch._foreach_mul_(grads, coef.clamp(max=1.0))
    elif not coef >= 1:  # below 1, or NaN (which PyTorch's clamp keeps and multiplies by)
        torch._foreach_mul_(grads, coef)
    return total


def lr_factor(step: int, total: int, warmup: int, schedule: str, milestones, gamma: float) -> float:
    """Multiplier of the base learning rate at iteration ``step`` (0-based)."""
    if warmup > 0 and step < warmup:
        warm = (step + 1) / warmup
    else:
        warm = 1.0
    if schedule == "cosine":
        t = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
        return warm * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))  # floor at 2% of the base lr
    if schedule == "multistep":
        drops = sum(step >= int(m * total) if m < 1 else step >= m for m in milestones)
        return warm * gamma**drops
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'multistep'")


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    def __init__(self, cfg: Config, datasets: dict[str, DetectionDataset] | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        t = cfg.train
        self.rank, self.world = _distributed()
        self.is_main = self.rank == 0
        self.progress = progress and self.is_main
        if t.threads:
            torch.set_num_threads(t.threads)
        self.device = resolve_device(t.device)
        self._lock = RunLock(cfg.out_dir)
        created = not os.path.exists(cfg.out_dir)
        if self.is_main:  # before anything is read or written: a second run into the folder fails at once
            self._lock.acquire()
            weakref.finalize(self, self._lock.release)
        try:
            self._setup(cfg, datasets)
        except BaseException:  # nothing built: the folder is left as it was found
            self._lock.release()
            if self.is_main and created and os.path.isdir(cfg.out_dir) and not os.listdir(cfg.out_dir):
                os.rmdir(cfg.out_dir)
            raise

    def _setup(self, cfg: Config, datasets: dict[str, DetectionDataset] | None) -> None:
        t = cfg.train
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)

        if datasets is None:
            from ..data.build import build_datasets

            datasets = build_datasets(cfg.data)
        self.datasets = dict(datasets)
        train_set = datasets["train"]
        self.class_names = train_set.class_names

        torch.manual_seed(t.seed)
        kwargs = dict(cfg.model.kwargs)
        self.model: SSD = create_model(cfg.model.name, num_classes=len(self.class_names), **kwargs)
        if cfg.model.checkpoint:
            self._load_weights(cfg.model.checkpoint)
        if cfg.model.freeze:
            self.model.freeze_backbone(cfg.model.freeze)
        if cfg.model.freeze_depthwise:
            self.model.freeze_depthwise(cfg.model.freeze_depthwise)
        if t.freeze_bn:
            self.model.freeze_batchnorm()
        self.model.to(self.device)
        self.channels_last = t.channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

        fill = tuple(float(v) for v in self.model.mean.flatten().tolist())
        train_set = train_set.with_transform(
            SSDTransform(self.model.image_size, train=True, fill=fill, config=cfg.data.augment, seed=t.seed)
        )
        self.datasets["train"] = train_set
        self.loader = make_loader(
            train_set,
            t.batch_size // self.world,
            train=True,
            workers=cfg.data.workers,
            seed=t.seed,
            rank=self.rank,
            world_size=self.world,
        )
        self.iters_per_epoch = len(self.loader)
        if t.iterations:
            self.epochs = math.ceil(t.iterations / self.iters_per_epoch)
            self.total_iters = t.iterations
        else:
            self.epochs = t.epochs
            self.total_iters = t.epochs * self.iters_per_epoch

        priors = self.model.priors
        matcher = make_matcher(t.matcher, self.model.prior_maps, t.atss_top_k)
        if self.model.score_type == "softmax":
            self.loss_fn = MultiBoxLoss(priors, t.match_iou, t.neg_pos_ratio, alpha=t.loc_weight, matcher=matcher)
        else:
            self.loss_fn = FocalLoss(priors, t.match_iou, loc_weight=t.loc_weight, matcher=matcher)
        self.loss_fn = self.loss_fn.to(self.device)
        self.optimizer = make_sgd(param_groups(self.model, t.weight_decay), t.lr, t.momentum, self.device)
        self.ema = WeightAverage(self.model, t.ema_decay) if t.ema_decay else None
        self.ddp = (
            nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None
            )
            if self.world > 1
            else None
        )

        self.amp_dtype = self._amp_dtype(t.amp)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.step = 0
        self.epoch = 0  # epochs completed
        self.best = -1.0
        self.bad_steps = 0
        self.skipped = 0
        self.history: list[dict] = []
        self.budget_deadline: float | None = None  # set by fit_to_time_budget: when training must end
        self.out_dir = cfg.out_dir
        if self.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            # partial checkpoint writes left by a killed run (atomic_save's temporary files)
            for name in os.listdir(self.out_dir):
                if name.startswith(".tmp-") and name.endswith(".pt"):
                    os.remove(os.path.join(self.out_dir, name))
            save_config(cfg, os.path.join(self.out_dir, "config.yaml"))
            self._write_skipped()
        self._tb = None

    def close(self) -> None:
        """Release the run folder (its lock); the trainer's results stay where they are."""
        self._lock.release()

    # --- setup helpers ------------------------------------------------------

    def _write_skipped(self) -> None:
        """List every file the datasets skipped (and why) in ``skipped_files.txt`` of the run, and
        every change made to the data while reading it (boxes clipped, rescaled or dropped,
        entries listed twice) in ``data_report.txt``."""
        report = [f"{split} ({ds.name}): {line}" for split, ds in self.datasets.items() for line in ds.problems.lines()]
        if report:
            with open(os.path.join(self.out_dir, "data_report.txt"), "w") as f:
                f.write("\n".join(report) + "\n")
        lines, seen = [], set()
        for split, ds in self.datasets.items():  # slices of one split (train[10%:], train[:10%]) share its skips
            for reason in ds.problems.skip_reasons:
                if reason not in seen:
                    seen.add(reason)
                    lines.append(f"{split}: {reason}")
        path = os.path.join(self.out_dir, "skipped_files.txt")
        if lines:
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            log.warning(f"{len(lines)} file(s) skipped; listed in {path}")

    def _load_weights(self, path: str) -> None:
        """Start from a checkpoint's weights: every tensor whose name and shape match; class
        predictors of another class list are re-initialised (fine-tuning)."""
        ckpt = load_checkpoint(path)
        given = dict(ckpt["model"])
        same = list(ckpt.get("class_names", [])) == list(self.class_names)
        if not same:  # another class list: its class predictors mean other classes, even at equal counts
            for name in self.model.class_predictor_names():
                given.pop(name, None)
        loaded, rest = load_matching(self.model, given, path)
        log.info(
            f"weights from {path}: {len(loaded)} of {len(loaded) + len(rest)} tensors loaded"
            + ("" if same else f" (its classes {ckpt.get('class_names')} differ from the data's)")
            + (
                f"; initialised afresh: {', '.join(rest[:6])}" + (f" and {len(rest) - 6} more" if len(rest) > 6 else "")
                if rest
                else ""
            )
        )

    def _amp_dtype(self, amp: str):
        if amp == "off":
            return None
        if amp == "auto":
            if self.device.type == "cuda":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            # CPUs: bf16 only where AMX makes it pay (elsewhere it is several times slower)
            return torch.bfloat16 if self.device.type == "cpu" and cpu_has_fast_bf16() else None
        if amp in ("bf16", "fp16"):
            return torch.bfloat16 if amp == "bf16" else torch.float16
        raise ValueError(f"train.amp must be auto, bf16, fp16 or off, got {amp!r}")

    def _set_lr(self) -> float:
        t = self.cfg.train
        lr = t.lr * lr_factor(self.step, self.total_iters, t.warmup_iters, t.schedule, t.milestones, t.gamma)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    # --- one step -------------------------------------------------------------

    def _bn_buffers(self) -> list[torch.Tensor]:
        return [
            b
            for m in self.model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)
            if b is not None
        ]

    def train_step(self, batch: dict) -> dict:
        """Forward, loss, backward and (unless the loss is not finite) an optimiser step."""
        t = self.cfg.train
        lr = self._set_lr()
        images = batch["images"].to(self.device, non_blocking=True).float()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        boxes = batch["boxes"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        net = self.ddp or self.model
        # BatchNorm statistics move during the forward pass; keep a copy so that a skipped
        # (non-finite) step leaves no trace, not even NaN running means.
        bn_state = [(b, b.clone()) for b in self._bn_buffers()]
        with torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            loc, logits = net(images)
        out = self.loss_fn(loc.float(), logits.float(), boxes, labels)
        loss = out.loss
        if self.world > 1:
            # normalise by the positives of the global batch; DDP averages gradients over ranks
            num_pos = out.num_positives.clone().float()
            dist.all_reduce(num_pos)
            loss = loss * out.num_positives.clamp(min=1).float() / num_pos.clamp(min=1) * self.world
        finite = bool(torch.isfinite(loss))
        if self.world > 1:
            flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
            dist.all_reduce(flag)
            finite = flag.item() == 0
        self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            with torch.no_grad():
                for buf, saved in bn_state:
                    buf.copy_(saved)
            self.skipped += 1
            self.bad_steps += 1
            if self.bad_steps >= t.max_bad_steps:
                raise TrainingError(
                    f"the loss was not finite for {self.bad_steps} steps in a row (step {self.step}, lr {lr:.3g}); "
                    "likely causes: a learning rate too high for this batch size (lower train.lr or raise "
                    "train.warmup_iters), or bad boxes in the data (check the dataset warnings)"
                )
            self.step += 1
            return {"loss": float("nan"), "loc": float("nan"), "conf": float("nan"), "lr": lr, "skipped": True}
        self.bad_steps = 0
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if t.clip_grad:
            clip_grad_norm(self.model.parameters(), t.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return {"loss": out.loss.item(), "loc": out.loc.item(), "conf": out.conf.item(), "lr": lr, "skipped": False}

    # --- epochs -------------------------------------------------------------

    def _seed_epoch(self, epoch: int) -> None:
        s = self.cfg.train.seed * 100_003 + epoch
        torch.manual_seed(s)
        random.seed(s)
        np.random.seed(s % 2**32)
        self.loader.batch_sampler.sampler.set_epoch(epoch)

    def train_epoch(self, epoch: int) -> dict:
        self._seed_epoch(epoch)
        self.model.train()
        sums = {"loss": 0.0, "loc": 0.0, "conf": 0.0}
        n_ok = 0
        images = 0
        start = time.perf_counter()
        bar = tqdm(
            self.loader,
            desc=f"epoch {epoch + 1}/{self.epochs}",
            disable=not self.progress,
            leave=False,
            mininterval=1.0,
            dynamic_ncols=True,
        )
        for batch in bar:
            if self.step >= self.total_iters:
                break
            r = self.train_step(batch)
            images += batch["images"].shape[0] * self.world
            if not r["skipped"]:
                n_ok += 1
                for k in sums:
                    sums[k] += r[k]
            rate = images / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{r['loss']:.3f}", lr=f"{r['lr']:.2g}", img_s=f"{rate:.1f}")
        elapsed = time.perf_counter() - start
        stats = {k: v / max(n_ok, 1) for k, v in sums.items()}
        stats.update(
            epoch=epoch + 1,
            step=self.step,
            lr=self.optimizer.param_groups[0]["lr"],
            images_per_s=images / max(elapsed, 1e-9),
            epoch_s=elapsed,
            skipped=self.skipped,
        )
        return stats

    def fit_to_time_budget(self, budget: float, calibration_steps: int = 8) -> int:
        """Set the number of epochs that fit in ``budget`` seconds of training, from the speed of
        a few training steps measured on the real data (on a copy of the training state, which
        is restored afterwards, so the run is the same as one told that number of epochs).
        Returns the epochs; the config is updated so that its saved copy reproduces the run."""
        start = time.perf_counter()
        saved = copy.deepcopy(
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "ema": self.ema}
        )
        self.model.train()
        self.loader.batch_sampler.sampler.set_epoch(10**6)  # batches of their own: epoch 0 is drawn again later
        warmup, timed, step_s = 2, 0, 0.0
        batches = iter(self.loader)
        tick = time.perf_counter()
        for i in range(warmup + min(calibration_steps, max(1, self.iters_per_epoch - warmup))):
            batch = next(batches, None)
            if batch is None:
                break
            self.train_step(batch)
            now = time.perf_counter()
            if i >= warmup:
                step_s += now - tick
                timed += 1
            tick = now
        del batches
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.ema = saved["ema"]
        self.step, self.bad_steps, self.skipped = 0, 0, 0
        step_s = step_s / timed if timed else (time.perf_counter() - start)
        epoch_s = step_s * self.iters_per_epoch
        remaining = budget - (time.perf_counter() - start)
        # a margin for the hour-to-hour drift of shared machines; fit() also stops at the budget
        epochs = max(1, min(self.cfg.train.epochs, int(0.9 * remaining / max(epoch_s, 1e-9))))
        self.epochs, self.total_iters = epochs, epochs * self.iters_per_epoch
        t = self.cfg.train
        t.epochs, t.iterations, t.time_budget = epochs, None, None
        if t.warmup_iters > self.total_iters // 5:  # a short run: warm up over its first tenth
            t.warmup_iters = max(1, self.total_iters // 10)
        self.budget_deadline = start + budget
        batch = self.cfg.train.batch_size
        log.info(
            f"time budget {budget / 60:.1f} min: {step_s:.2f} s per step of {batch} images "
            f"({batch / max(step_s, 1e-9):.1f} images/s, measured) -> {epochs} epochs ({self.total_iters} steps)"
        )
        if self.is_main:
            save_config(self.cfg, os.path.join(self.out_dir, "config.yaml"))
        return epochs

    def fit(self, stop_after_epoch: int | None = None) -> dict:
        """Train to the end (or until ``stop_after_epoch`` epochs are done); returns the last stats.

        With ``train.time_budget`` set, a fresh run first fits its epochs to the budget
        (:meth:`fit_to_time_budget`) and stops early if a slower machine would overrun it."""
        t = self.cfg.train
        if t.time_budget and self.step == 0:
            self.fit_to_time_budget(t.time_budget)
        val = self.datasets.get("val")
        last = {}
        while self.epoch < self.epochs and self.step < self.total_iters:
            epoch_start = time.perf_counter()
            stats = self.train_epoch(self.epoch)
            self.epoch += 1
            if self.budget_deadline is not None and self.epoch < self.epochs:
                now = time.perf_counter()
                if now + (now - epoch_start) > self.budget_deadline:
                    log.warning(
                        f"stopping after epoch {self.epoch} of {self.epochs}: another epoch would overrun the "
                        "time budget (the machine runs slower than measured)"
                    )
                    self.epochs = self.epoch
            final = self.epoch >= self.epochs or self.step >= self.total_iters
            if val is not None and ((t.eval_every and self.epoch % t.eval_every == 0) or final):
                stats["val_mAP50"] = self._validate(val)
            self.history.append(stats)
            if self.is_main:
                self._log(stats)
                self.save(os.path.join(self.out_dir, "last.pt"))
                if val is not None and stats.get("val_mAP50", -1) > self.best:
                    self.best = stats["val_mAP50"]
                    self.save(os.path.join(self.out_dir, "best.pt"))
            last = stats
            if stop_after_epoch is not None and self.epoch >= stop_after_epoch:
                break
        if self.is_main and self.epoch >= self.epochs:
            self.choose_test_time()
        if self.is_main:
            self._plot()
        return last

    def choose_test_time(self) -> str | None:
        """With ``train.choose_tta``, score the validation split under each test-time mirroring
        mode listed and keep the best by COCO AP (mAP@0.5 saturates on small sets; a tie keeps
        the earlier, cheaper mode): the model, the config, ``config.yaml`` and the checkpoints
        get it. Returns the mode chosen (None when there is nothing to choose)."""
        choices, val = self.cfg.train.choose_tta, self.datasets.get("val")
        if not choices or val is None or not self.is_main:
            return None
        model = self.eval_model()
        scores = {}
        for mode in choices:
            model.postprocess_config.tta = mode
            report = evaluate_model(
                model, val, batch_size=16, device=self.device, workers=self.cfg.data.workers, coco=True, progress=False
            )
            scores[mode] = (report.coco or {}).get("AP", report.map)
        best = max(choices, key=lambda m: (scores[m], -choices.index(m)))
        for m in {id(model): model, id(self.model): self.model}.values():
            m.postprocess_config.tta = best
        self.cfg.model.kwargs["tta"] = best
        log.info(
            f"test-time views chosen on {val.name}: {best} ("
            + ", ".join(f"{m} COCO AP {v:.4f}" for m, v in scores.items())
            + ")"
        )
        save_config(self.cfg, os.path.join(self.out_dir, "config.yaml"))
        for name in ("last.pt", "best.pt"):
            path = os.path.join(self.out_dir, name)
            if os.path.exists(path):
                ckpt = load_checkpoint(path)
                ckpt["model_kwargs"] = dict(ckpt.get("model_kwargs", {}), tta=best)
                ckpt["config"] = self.cfg.to_dict()
                atomic_save(ckpt, path)
        return best

    def eval_model(self) -> SSD:
        """The model to score and ship: the weight average if training keeps one, else the model."""
        if self.ema is None:
            return self.model
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.ema.averaged_state(self.model))
        return model

    def _validate(self, dataset: DetectionDataset) -> float:
        value = torch.zeros(1)
        if self.is_main:
            report = evaluate_model(
                self.eval_model(),
                dataset,
                batch_size=max(8, self.cfg.train.batch_size),
                device=self.device,
                workers=self.cfg.data.workers,
                coco=False,
                progress=self.progress,
                channels_last=self.channels_last,
            )
            value[0] = report.map
        if self.world > 1:
            value = value.to(self.device)
            dist.broadcast(value, 0)
        return float(value.item())

    # --- files ----------------------------------------------------------------

    def checkpoint_dict(self) -> dict:
        averaged = self.ema is not None
        return {
            # "model": the weights to use (the average, if kept); "train_model": the raw ones, to resume
            "model": self.ema.averaged_state(self.model) if averaged else self.model.state_dict(),
            "train_model": self.model.state_dict() if averaged else None,
            "ema_updates": self.ema.updates if averaged else None,
            "model_name": self.cfg.model.name,
            "model_kwargs": dict(self.cfg.model.kwargs),
            "class_names": list(self.class_names),
            "category_ids": list(self.datasets["train"].category_ids),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "best": self.best,
            "skipped": self.skipped,
            "history": self.history,
            "config": self.cfg.to_dict(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "python": list(random.getstate()[1]),
            },
        }

    def save(self, path: str) -> None:
        atomic_save(self.checkpoint_dict(), path)

    def resume(self, path: str) -> None:
        """Continue from a checkpoint written by this trainer (same config)."""
        ckpt = load_checkpoint(path, map_location=self.device)
        if list(ckpt["class_names"]) != list(self.class_names):
            raise ValueError(f"{path}: classes {ckpt['class_names']} differ from the data's {self.class_names}")
        weights = ckpt.get("train_model") or ckpt["model"]
        check_state_dict(self.model.state_dict(), weights, f"{path}: cannot resume this run's model from it")
        self.model.load_state_dict(weights)
        if self.ema is not None:
            # a checkpoint without an average starts one from its weights
            self.ema.load(ckpt["model"], ckpt.get("ema_updates") or 0)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step, self.best = ckpt["epoch"], ckpt["step"], ckpt["best"]
        self.skipped, self.history = ckpt.get("skipped", 0), list(ckpt.get("history", []))
        rng = ckpt.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"].cpu())
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])

    def _log(self, stats: dict) -> None:
        path = os.path.join(self.out_dir, "log.csv")
        fields = ["epoch", "step", "lr", "loss", "loc", "conf", "val_mAP50", "images_per_s", "epoch_s", "skipped"]
        new = not os.path.exists(path) or stats["epoch"] == 1
        with open(path, "w" if new else "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in stats.items()})
        if self.progress:
            msg = (
                f"epoch {stats['epoch']}/{self.epochs}  loss {stats['loss']:.4f} (loc {stats['loc']:.3f}, "
                f"conf {stats['conf']:.3f})  lr {stats['lr']:.3g}  {stats['images_per_s']:.1f} img/s"
            )
            if "val_mAP50" in stats:
                msg += f"  val mAP50 {stats['val_mAP50']:.4f}"
            log.info(msg)
        if self._tb is False:
            return
        try:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(os.path.join(self.out_dir, "tensorboard"))
            for k in ("loss", "loc", "conf", "lr", "images_per_s", "val_mAP50"):
                if k in stats:
                    self._tb.add_scalar(k, stats[k], stats["step"])
        except Exception:  # TensorBoard is optional
            self._tb = False

    def _plot(self) -> None:
        from ..viz.draw import plot_training_curves

        if self.history:
            plot_training_curves(self.history, os.path.join(self.out_dir, "training_curves.png"))
