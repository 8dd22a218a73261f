import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import TINY, make_voc, tiny_config
from multibox.engine.trainer import Trainer, TrainingError, clip_grad_norm, lr_factor, make_sgd, param_groups
from multibox.inference.checkpoint import load_checkpoint, model_from_checkpoint


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return make_voc(str(tmp_path_factory.mktemp("shapes")), n=8)


def test_lr_schedule_by_hand():
    assert lr_factor(0, 100, 10, "multistep", [0.5, 0.8], 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "multistep", [0.5, 0.8], 0.1) == pytest.approx(1.0)
    assert lr_factor(50, 100, 10, "multistep", [0.5, 0.8], 0.1) == pytest.approx(0.1)
    assert lr_factor(80, 100, 10, "multistep", [0.5, 0.8], 0.1) == pytest.approx(0.01)
    # paper recipe in absolute iterations: drops at 80k and 100k of 120k
    assert lr_factor(99_999, 120_000, 0, "multistep", [80_000, 100_000], 0.1) == pytest.approx(0.1)
    assert lr_factor(10, 110, 10, "cosine", [], 0.1) == pytest.approx(1.0)
    assert lr_factor(60, 110, 10, "cosine", [], 0.1) == pytest.approx(0.02 + 0.98 * 0.5)


def test_no_weight_decay_on_biases_and_norms():
    from multibox import create_model

    m = create_model("ssd300_vgg16", num_classes=2)
    decay, no_decay = param_groups(m, 5e-4)
    assert all(p.ndim == 4 for p in decay["params"])
    assert any(p is m.backbone.l2norm.weight for p in no_decay["params"]) and no_decay["weight_decay"] == 0


def test_fused_sgd_and_clipping_match_pytorchs_loop_bit_for_bit():
    torch.manual_seed(0)
    nets = [
        torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 4, 1))
        for _ in range(2)
    ]
    nets[1].load_state_dict(nets[0].state_dict())
    ours = make_sgd(param_groups(nets[0], 1e-4), 0.01, 0.9, torch.device("cpu"))
    ref = torch.optim.SGD(param_groups(nets[1], 1e-4), lr=0.01, momentum=0.9, foreach=False)
    assert ours.defaults.get("fused")
    for step in range(4):
        x = torch.randn(2, 3, 8, 8)
        limit = 0.1 if step % 2 else 1e6  # clipped on odd steps only
        for net in nets:
            net.zero_grad()
            net(x).square().mean().backward()
        norm = clip_grad_norm(nets[0].parameters(), limit)
        ref_norm = torch.nn.utils.clip_grad_norm_(nets[1].parameters(), limit)
        assert torch.equal(norm, ref_norm) and (norm > limit) == bool(step % 2)
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.equal(a.grad, b.grad)
        ours.step()
        ref.step()
        for g in ours.param_groups + ref.param_groups:
            g["lr"] *= 0.7
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.isfinite(a).all() and torch.equal(a, b)
    # a NaN gradient: the norm is NaN and every gradient is multiplied by it, as in PyTorch
    grads = [torch.tensor([1.0, float("nan")]), torch.tensor([2.0, 3.0])]
    ref_grads = [g.clone() for g in grads]
    params = [torch.zeros(2, requires_grad=True) for _ in grads]
    ref_params = [torch.zeros(2, requires_grad=True) for _ in grads]
    for p, g, q, h in zip(params, grads, ref_params, ref_grads):
        p.grad, q.grad = g, h
    assert clip_grad_norm(params, 1.0).isnan() and torch.nn.utils.clip_grad_norm_(ref_params, 1.0).isnan()
    assert all(p.grad.isnan().all() and q.grad.isnan().all() for p, q in zip(params, ref_params))


def test_training_lowers_the_loss(voc_root, tmp_path):
    # 15 steps on one batch of 4 images; the schedule spans 40 steps so the lr stays high
    cfg = tiny_config(voc_root, tmp_path, "train.epochs=20", "train.lr=0.05", "train.clip_grad=null")
    tr = Trainer(cfg, progress=False)
    batch = next(iter(tr.loader))
    losses = [tr.train_step(batch)["loss"] for _ in range(15)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(voc_root, tmp_path, ema):
    opts = ("train.epochs=3", f"train.ema_decay={ema}")
    full = Trainer(tiny_config(voc_root, tmp_path / "full", *opts), progress=False)
    full.fit()
    part = Trainer(tiny_config(voc_root, tmp_path / "part", *opts), progress=False)
    part.fit(stop_after_epoch=1)  # "stopped" after epoch 1; last.pt written
    resumed = Trainer(tiny_config(voc_root, tmp_path / "part", *opts), progress=False)
    resumed.resume(str(tmp_path / "part" / "last.pt"))
    assert resumed.epoch == 1 and resumed.step == part.step
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = full.eval_model().state_dict(), resumed.eval_model().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["loss"] for h in full.history] == [h["loss"] for h in resumed.history]
    # files a user expects
    for f in ("last.pt", "log.csv", "config.yaml", "training_curves.png"):
        assert (tmp_path / "full" / f).exists(), f


def test_checkpoint_rebuilds_the_detector(voc_root, tmp_path):
    tr = Trainer(tiny_config(voc_root, tmp_path, "train.epochs=1"), progress=False)
    tr.fit()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["class_names"] == ["blue", "green", "red", "yellow"]
    assert {"optimizer", "rng", "config", "epoch", "step"} <= set(ckpt)
    model, names = model_from_checkpoint(ckpt)
    x = torch.rand(1, 3, 128, 128) * 255
    tr.model.eval()
    assert torch.allclose(model.eval()(x)[1], tr.model(x)[1])


def test_weight_average_is_what_checkpoints_and_validation_use(voc_root, tmp_path):
    tr = Trainer(tiny_config(voc_root, tmp_path, "train.epochs=1", "train.ema_decay=0.99"), progress=False)
    tr.fit()
    ckpt = load_checkpoint(tmp_path / "last.pt")
    raw, avg = tr.model.state_dict(), tr.eval_model().state_dict()
    assert ckpt["ema_updates"] == tr.step
    assert all(torch.equal(ckpt["train_model"][k], raw[k]) for k in raw)
    assert all(torch.equal(ckpt["model"][k], avg[k]) for k in avg)
    key = (
        "head.classification.0.1.weight"
        if "head.classification.0.1.weight" in raw
        else next(k for k in raw if k.startswith("head.") and k.endswith("weight"))
    )
    assert not torch.equal(raw[key], avg[key])  # two updates at d = 2/11 and 3/12 already differ
    model, _ = model_from_checkpoint(ckpt)
    assert all(torch.equal(model.state_dict()[k], avg[k]) for k in avg)


def test_non_finite_losses_are_skipped_then_stop_the_run(voc_root, tmp_path, monkeypatch):
    tr = Trainer(tiny_config(voc_root, tmp_path, "train.max_bad_steps=3"), progress=False)
    batch = next(iter(tr.loader))
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    real = tr.loss_fn.forward

    def nan_loss(*a, **k):
        out = real(*a, **k)
        return out._replace(loss=out.loss * float("nan"))

    monkeypatch.setattr(tr.loss_fn, "forward", nan_loss)
    assert tr.train_step(batch)["skipped"] and tr.skipped == 1
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())  # no update
    tr.train_step(batch)
    with pytest.raises(TrainingError, match=r"not finite for 3 steps.*learning rate.*bad boxes"):
        tr.train_step(batch)


def test_validation_keeps_the_best_checkpoint(voc_root, tmp_path):
    cfg = tiny_config(voc_root, tmp_path, "data.val=train", "train.eval_every=1")
    tr = Trainer(cfg, progress=False)
    tr.fit()
    assert all("val_mAP50" in h for h in tr.history)
    assert (tmp_path / "best.pt").exists()
    assert load_checkpoint(tmp_path / "best.pt")["best"] == max(h["val_mAP50"] for h in tr.history)


DDP_SCRIPT = r"""
import os, sys, torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from multibox.config import load_config
from multibox.engine.trainer import Trainer
root, out, tiny = sys.argv[1], sys.argv[2], sys.argv[3]
cfg = load_config(None, [f"data.root={root}", "data.val=null", "data.test=null", "data.workers=0",
    "model.name=ssdlite_effl0", f"model.kwargs={tiny}", "train.batch_size=4", "train.epochs=1",
    "train.clip_grad=null", "train.freeze_bn=true", "train.threads=1", "train.amp=off",  # fp32: exact sums
    f"out_dir={out}"])
tr = Trainer(cfg, progress=False)
tr._seed_epoch(0)
batch = next(iter(tr.loader))
tr.train_step(batch)
if tr.rank == 0:
    torch.save({"grads": {n: p.grad for n, p in tr.model.named_parameters() if p.grad is not None},
                "paths": batch["paths"], "world": tr.world}, os.path.join(out, f"grads{tr.world}.pt"))
"""


def test_two_process_gloo_run_matches_single_process_gradients(voc_root, tmp_path):
    script = tmp_path / "ddp_step.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(
        [sys.executable, str(script), voc_root, str(tmp_path), str(TINY)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    multi = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(script),
            voc_root,
            str(tmp_path),
            str(TINY),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    g1 = torch.load(tmp_path / "grads1.pt", weights_only=True)
    g2 = torch.load(tmp_path / "grads2.pt", weights_only=True)
    assert g2["world"] == 2 and len(g2["paths"]) == 2 and len(g1["paths"]) == 4
    assert set(g2["paths"]) < set(g1["paths"])
    assert g1["grads"].keys() == g2["grads"].keys()
    a = torch.cat([g2["grads"][k].flatten() for k in g1["grads"]])
    b = torch.cat([g1["grads"][k].flatten() for k in g1["grads"]])
    # float32 sums in a different order: equal to 1e-5 of the largest gradient entry
    assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    for k in g1["grads"]:
        x, y = g2["grads"][k], g1["grads"][k]
        assert (x - y).norm() <= 1e-3 * y.norm() + 1e-7, k


def test_freeze_depthwise_keeps_5x5_kernels_and_trains_the_rest(voc_root, tmp_path):
    from multibox.models.layers import DepthwiseConv2d

    cfg = tiny_config(voc_root, tmp_path, "model.freeze_depthwise=5", "train.amp=off")
    tr = Trainer(cfg, progress=False)
    dws = [m for m in tr.model.backbone.modules() if isinstance(m, DepthwiseConv2d)]
    big = [m for m in dws if m.kernel_size == (5, 5)]
    small = [m for m in dws if m.kernel_size == (3, 3)]
    assert len(big) == 9 and small  # EfficientNet-Lite0: stages 3, 5 and 6 (2 + 3 + 4 blocks) have 5x5 kernels
    assert not any(m.weight.requires_grad for m in big) and all(m.weight.requires_grad for m in small)
    optimised = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    assert not any(id(m.weight) in optimised for m in big)
    before = [m.weight.detach().clone() for m in big + small]
    batch = next(iter(tr.loader))
    for _ in range(2):
        tr.train_step(batch)
    after = [m.weight for m in big + small]
    assert all(torch.equal(b, a) for b, a in zip(before[: len(big)], after[: len(big)]))
    assert any(not torch.equal(b, a) for b, a in zip(before[len(big) :], after[len(big) :]))


def test_loss_settings_come_from_the_config(voc_root, tmp_path):
    from multibox.core.losses import MultiBoxLoss

    tr = Trainer(
        tiny_config(voc_root, tmp_path, "train.match_iou=0.6", "train.neg_pos_ratio=2", "train.loc_weight=2.5"),
        progress=False,
    )
    batch = next(iter(tr.loader))
    g = torch.Generator().manual_seed(0)
    p = tr.model.priors.shape[0]
    n, k = batch["boxes"].shape[0], tr.model.num_classes + 1
    loc, logits = torch.randn(n, p, 4, generator=g), torch.randn(n, p, k, generator=g)
    got = tr.loss_fn(loc, logits, batch["boxes"], batch["labels"])
    ref = MultiBoxLoss(tr.model.priors, iou_threshold=0.6, neg_pos_ratio=2.0, alpha=2.5)(
        loc, logits, batch["boxes"], batch["labels"]
    )
    default = MultiBoxLoss(tr.model.priors)(loc, logits, batch["boxes"], batch["labels"])
    assert torch.equal(got.loss, ref.loss) and not torch.allclose(got.loss, default.loss)


def test_atss_matcher_comes_from_the_config(voc_root, tmp_path):
    from multibox.core.losses import MultiBoxLoss
    from multibox.core.matching import match_atss

    tr = Trainer(tiny_config(voc_root, tmp_path, "train.matcher=atss", "train.atss_top_k=4"), progress=False)
    batch = next(iter(tr.loader))
    sizes = [fm.num_priors for fm in tr.model.prior_maps]
    got = tr.loss_fn.match(batch["boxes"], batch["labels"])
    want = match_atss(batch["boxes"], batch["labels"], tr.model.priors, sizes, top_k=4)
    assert torch.equal(got.object_index, want.object_index) and torch.equal(got.labels, want.labels)
    ssd = MultiBoxLoss(tr.model.priors).match(batch["boxes"], batch["labels"])
    assert not torch.equal(got.labels, ssd.labels)
    with pytest.raises(ValueError, match="'train.matcher': expected one of atss, iou, got 'nearest'"):
        Trainer(tiny_config(voc_root, tmp_path / "bad", "train.matcher=nearest"), progress=False)


def test_test_time_views_are_chosen_on_validation_and_saved(voc_root, tmp_path):
    """``train.choose_tta``: each mode scored on val by COCO AP (computed here independently),
    the best kept in the model, config.yaml and both checkpoints."""
    import yaml

    from multibox.inference.evaluate import evaluate_model

    cfg = tiny_config(voc_root, tmp_path, "data.val=train", "train.epochs=2", "train.choose_tta=[none, hflip, hvflip]")
    tr = Trainer(cfg, progress=False)
    tr.fit()
    model = tr.eval_model()
    chosen = model.postprocess_config.tta
    scores = {}
    for mode in ("none", "hflip", "hvflip"):
        model.postprocess_config.tta = mode
        scores[mode] = evaluate_model(model, tr.datasets["val"], workers=0, progress=False).coco["AP"]
    best = max(["none", "hflip", "hvflip"], key=lambda m: (scores[m], -["none", "hflip", "hvflip"].index(m)))
    assert chosen == best
    assert yaml.safe_load(open(os.path.join(tmp_path, "config.yaml")))["model"]["kwargs"]["tta"] == best
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(os.path.join(tmp_path, name))
        assert ckpt["model_kwargs"]["tta"] == best and ckpt["config"]["model"]["kwargs"]["tta"] == best
        assert model_from_checkpoint(ckpt)[0].postprocess_config.tta == best
