"""Every speed benchmark in one run: a table of figure, baseline, ratio and target, also as JSON.

    python -m benchmarks [--out benchmarks.json] [--markdown docs/benchmarks.md]
                         [--only postprocess,loss,data,forward,train] [--quick]

Each baseline (``benchmarks/baselines.py``) runs in the same process on the same
inputs, and each benchmark first asserts that multibox and the baseline compute
the same result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings

import numpy as np
import torch

from multibox.memory import keep_freed_memory

from . import baselines

ROWS: list[dict] = []


def row(
    name: str,
    ours: float,
    base: float | None,
    unit: str,
    target: str = "",
    ok: bool | None = None,
    higher_is_better: bool = False,
) -> None:
    ratio = None if base is None else (ours / base if higher_is_better else base / ours)
    ROWS.append(
        {
            "benchmark": name,
            "multibox": ours,
            "baseline": base,
            "unit": unit,
            "speedup": ratio,
            "target": target,
            "met": ok,
        }
    )
    r = "" if ratio is None else f"{ratio:8.2f}x"
    b = "" if base is None else f"{base:10.4g}"
    flag = "" if ok is None else ("  met" if ok else "  NOT MET")
    print(f"  {name:<58} {ours:10.4g} {b:>10} {unit:<8} {r:>9}  {target}{flag}", flush=True)


def timeit(fn, repeat: int, warmup: int = 1) -> float:
    """Median seconds per call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def timeit_pair(ours, base, rounds: int, ours_per_round: int = 1) -> tuple[float, float]:
    """Median seconds per call of ``ours`` and ``base``, timed in alternation (``ours_per_round``
    calls of ``ours``, then one of ``base``, ``rounds`` times) after one warm-up call each, so
    that both sides of a ratio see the same spells of a shared machine's speed."""
    ours(), base()
    t_ours, t_base = [], []
    for _ in range(rounds):
        for _ in range(ours_per_round):
            t = time.perf_counter()
            ours()
            t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        base()
        t_base.append(time.perf_counter() - t)
    return float(np.median(t_ours)), float(np.median(t_base))


# --- 1. post-processing ---------------------------------------------------------------


def head_outputs(n: int, realistic: bool, seed: int = 0):
    """SSD300 head outputs for 21 classes. Realistic: background dominates except around a few
    objects per image (a few hundred candidates above 0.01); worst: an untrained model, whose
    near-uniform scores put every prior of every class above 0.01."""
    from multibox.core.priors import ssd300_priors

    g = torch.Generator().manual_seed(seed)
    priors = ssd300_priors()
    p = priors.shape[0]
    loc = torch.randn(n, p, 4, generator=g) * 0.5
    if not realistic:
        return loc, torch.randn(n, p, 21, generator=g) * 0.01, priors
    logits = torch.randn(n, p, 21, generator=g)
    logits[..., 0] += 10.0
    for i in range(n):
        for _ in range(int(torch.randint(2, 8, (1,), generator=g))):
            c = int(torch.randint(1, 21, (1,), generator=g))
            centre = torch.rand(2, generator=g)
            near = ((priors[:, :2] - centre).abs() < 0.04).all(1)
            logits[i, near, c] += 8.0 + 2 * torch.rand(int(near.sum()), generator=g)
    return loc, logits, priors


def same_detections(ours, base) -> None:
    for i, (b, s, l) in enumerate(base):
        n = int(ours.num[i])
        assert n == len(s), f"image {i}: {n} vs {len(s)} detections"
        torch.testing.assert_close(ours.scores[i, :n], s)
        torch.testing.assert_close(ours.boxes[i, :n], b)
        assert torch.equal(ours.labels[i, :n], l)


def bench_postprocess(quick: bool) -> None:
    from multibox.core.postprocess import postprocess

    for realistic in (True, False):
        n = 8
        loc, logits, priors = head_outputs(n, realistic)
        cand = int((torch.softmax(logits, -1)[..., 1:] > 0.01).sum() / n)
        ours = postprocess(loc, logits, priors)
        if realistic or not quick:
            base_out = baselines.loop_postprocess(loc, logits, priors)
            same_detections(ours, base_out)
        if realistic:
            t_ours, t_base = timeit_pair(
                lambda: postprocess(loc, logits, priors),
                lambda: baselines.loop_postprocess(loc, logits, priors),
                rounds=7,
                ours_per_round=3,
            )
            row(
                f"post-process, batch 8, realistic ({cand} candidates/img)",
                t_ours * 1e3,
                t_base * 1e3,
                "ms",
                ">= 20x",
                t_base / t_ours >= 20,
            )
        else:
            t_ours = timeit(lambda: postprocess(loc, logits, priors), repeat=2)
            if quick:
                t_base = None
            else:
                one = (loc[:1], logits[:1], priors)
                t_base = timeit(lambda: baselines.loop_postprocess(*one), repeat=1, warmup=0) * n
            per_img = t_ours * 1e3 / n
            row(
                "post-process, batch 8, worst case (all priors), ms/image",
                per_img,
                None if t_base is None else t_base * 1e3 / n,
                "ms/img",
                "< 100 ms/img",
                per_img < 100,
            )


# --- 2. matching + loss -------------------------------------------------------------


def random_targets(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = 20
    boxes = torch.zeros(n, m, 4)
    labels = torch.zeros(n, m, dtype=torch.long)
    for i in range(n):
        k = int(torch.randint(1, m + 1, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * 0.7
        wh = 0.03 + torch.rand(k, 2, generator=g) * 0.5
        boxes[i, :k] = torch.cat((xy, (xy + wh).clamp(max=1)), 1)
        labels[i, :k] = torch.randint(1, 21, (k,), generator=g)
    return boxes, labels


def bench_loss(quick: bool) -> None:
    from multibox.core.losses import MultiBoxLoss
    from multibox.core.priors import ssd300_priors

    n = 32
    priors = ssd300_priors()
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(n, priors.shape[0], 4, generator=g)
    logits = torch.randn(n, priors.shape[0], 21, generator=g)
    boxes, labels = random_targets(n)
    fn = MultiBoxLoss(priors)
    ours = fn(loc, logits, boxes, labels)
    base = baselines.loop_multibox_loss(loc, logits, priors, boxes, labels)
    torch.testing.assert_close(ours.loss, base[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.loc, base[1], rtol=1e-4, atol=1e-4)
    t_ours, t_base = timeit_pair(
        lambda: fn(loc, logits, boxes, labels),
        lambda: baselines.loop_multibox_loss(loc, logits, priors, boxes, labels),
        rounds=3,
        ours_per_round=2,
    )
    row(
        "matching + MultiBox loss, batch 32, 8732 priors",
        t_ours * 1e3,
        t_base * 1e3,
        "ms",
        ">= 5x",
        t_base / t_ours >= 5,
    )


# --- 3. augmentation + collate --------------------------------------------------------


def bench_data(quick: bool) -> None:
    from multibox.config import load_config
    from multibox.data.build import load_split
    from multibox.data.transforms import SSDTransform, collate

    sets = [
        ("BCCD", ["data.root=bccd", "data.format=voc"], "trainval"),
        ("chess", ["data.root=chess", "data.format=coco"], "train"),
    ]
    for name, over, split in sets:
        try:
            cfg = load_config("demo_bccd", over)
            ds = load_split(cfg.data, split)
        except FileNotFoundError as e:
            print(f"  data pipeline {name}: skipped ({e})")
            continue
        n = min(len(ds), 32 if quick else 64)
        ours_ds = ds.with_transform(SSDTransform((300, 300), train=True, seed=0))
        base = baselines.PilSSDAugment(300)

        def run_ours():
            for s in range(0, n, 16):
                collate([ours_ds[i] for i in range(s, min(n, s + 16))])

        def run_base():
            for s in range(0, n, 16):
                baselines.loop_collate(
                    [
                        base(ds.records[i].image_path, ds.records[i].boxes, ds.records[i].labels)
                        for i in range(s, min(n, s + 16))
                    ]
                )

        # same geometry check: with augmentation off, both give the same boxes
        plain = ds.with_transform(SSDTransform((300, 300), train=False))[0]
        r = ds.records[0]
        torch.testing.assert_close(
            plain["boxes"],
            torch.from_numpy(r.boxes / np.array([r.size[1], r.size[0], r.size[1], r.size[0]], np.float32)).float(),
        )
        t_ours = timeit(run_ours, repeat=1)
        t_base = timeit(run_base, repeat=1)
        row(
            f"augment + collate, {name} -> 300px, 1 worker",
            n / t_ours,
            n / t_base,
            "img/s",
            ">= 2x",
            t_base / t_ours >= 2,
            higher_is_better=True,
        )


# --- 4. model forward -----------------------------------------------------------------


def bench_forward(quick: bool) -> None:
    import tempfile

    from multibox.inference.export import export_onnx
    from multibox.models import create_model
    from multibox.models.fuse import inference_copy

    models = [
        (
            "ssdlite_effl0",
            dict(
                pretrained_backbone=False,
                image_size=320,
                feature_strides=[8, 16, 32],
                scales=[0.07, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 1.05],
                aspect_ratios=[2],
            ),
            3,
        ),
        ("ssd300_vgg16", {}, 20),
    ]
    for name, kwargs, classes in models:
        torch.manual_seed(0)
        model = create_model(name, num_classes=classes, **kwargs).eval()
        h, w = model.image_size
        x1 = torch.rand(1, 3, h, w) * 255
        x8 = torch.rand(8, 3, h, w) * 255
        results = {}
        with torch.no_grad():
            ref = model(x8)
            results["eager"] = (timeit(lambda: model(x1), 10), timeit(lambda: model(x8), 3))
            cl = create_model(name, num_classes=classes, **kwargs).eval()
            cl.load_state_dict(model.state_dict())
            cl = cl.to(memory_format=torch.channels_last)
            results["channels-last"] = (
                timeit(lambda: cl(x1.contiguous(memory_format=torch.channels_last)), 10),
                timeit(lambda: cl(x8.contiguous(memory_format=torch.channels_last)), 3),
            )
            # what Detector and evaluation run: BatchNorm folded, ReLU/ReLU6 fused, channels-last
            fast = inference_copy(model)
            torch.testing.assert_close(
                fast(x8.contiguous(memory_format=torch.channels_last))[1], ref[1], rtol=1e-3, atol=1e-3
            )
            results["folded + fused"] = (
                timeit(lambda: fast(x1.contiguous(memory_format=torch.channels_last)), 10),
                timeit(lambda: fast(x8.contiguous(memory_format=torch.channels_last)), 3),
            )
            if not quick:
                try:
                    comp = torch.compile(model, dynamic=False)
                    t0 = time.perf_counter()
                    comp(x1)
                    comp(x8)
                    compile_s = time.perf_counter() - t0
                    torch.testing.assert_close(comp(x8)[1], ref[1], rtol=1e-3, atol=1e-3)
                    results["torch.compile"] = (timeit(lambda: comp(x1), 10), timeit(lambda: comp(x8), 3))
                    print(f"    ({name}: torch.compile took {compile_s:.0f} s)")
                except Exception as e:  # inductor needs a C++ compiler
                    print(f"    ({name}: torch.compile unavailable: {type(e).__name__})")
        with tempfile.TemporaryDirectory() as d:
            path = export_onnx(model, os.path.join(d, "m.onnx"), [str(i) for i in range(classes)], postprocess=False)
            from multibox.inference.runtime import OnnxDetector

            sess = OnnxDetector(path).session
            xn1, xn8 = x1.numpy(), x8.numpy()
            got = sess.run(None, {"images": xn8})
            np.testing.assert_allclose(got[1], ref[1].numpy(), rtol=1e-3, atol=1e-3)
            results["ONNX Runtime"] = (
                timeit(lambda: sess.run(None, {"images": xn1}), 10),
                timeit(lambda: sess.run(None, {"images": xn8}), 3),
            )
        eager1, eager8 = results["eager"]
        for variant, (t1, t8) in results.items():
            target = ""
            ok = None
            if variant == "ONNX Runtime":
                target, ok = ">= 1.5x eager at batch 1", eager1 / t1 >= 1.5
            row(f"{name} forward batch 1 latency, {variant}", t1 * 1e3, eager1 * 1e3, "ms", target, ok)
            row(f"{name} forward batch 8 throughput, {variant}", 8 / t8, 8 / eager8, "img/s", higher_is_better=True)


# --- 5. training step -----------------------------------------------------------------


def bench_train(quick: bool) -> None:
    from .bench_train import train_rate

    steps = 6 if quick else 10
    try:
        rate = train_rate([], steps)
        # the straightforward way: fp32, NCHW, every backbone layer trained (no frozen, folded prefix)
        base = train_rate(["model.freeze=0", "train.channels_last=false"], max(4, steps // 2))
    except FileNotFoundError as e:
        print(f"  training step: skipped ({e})")
        return
    row(
        "training step ssdlite_effl0 320px, demo settings (batch 8)",
        rate,
        base,
        "img/s",
        ">= 20 img/s",
        rate >= 20,
        higher_is_better=True,
    )


TABLE_BEGIN, TABLE_END = "<!-- benchmark table: written by python -m benchmarks -->", "<!-- end of table -->"


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one) and whether it has AMX (bf16 matrix units)."""
    from multibox.models.layers import cpu_has_fast_bf16

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({'AMX' if cpu_has_fast_bf16() else 'no AMX'})"


def numba_version() -> str:
    """Whether post-processing and the loss run their compiled CPU loops (multibox.loops) here."""
    from multibox._kernels import loops

    if not loops.available():
        return "no compiled loops (no Numba, or MULTIBOX_NO_NUMBA=1): tensor operations only"
    return f"Numba {loops.numba.__version__}"


def markdown_table(machine: str, seconds: float, command: str) -> str:
    def num(v):
        return "" if v is None else f"{v:.1f}"

    lines = [
        TABLE_BEGIN,
        "",
        f"Machine: {machine}. Command: `{command}` ({seconds:.0f} s).",
        "",
        "| benchmark | multibox | baseline | unit | speed-up | target | met |",
        "|---|---:|---:|---|---:|---|---|",
    ]
    for r in ROWS:
        met = "" if r["met"] is None else ("yes" if r["met"] else "**no**")
        ratio = "" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        lines.append(
            f"| {r['benchmark']} | {num(r['multibox'])} | {num(r['baseline'])} | {r['unit']} | {ratio} "
            f"| {r['target']} | {met} |"
        )
    return "\n".join(lines + ["", TABLE_END])


def write_markdown(path: str, table: str) -> None:
    """Replace the table between the markers of ``path`` (or create the file with just the table)."""
    text = open(path).read() if os.path.exists(path) else ""
    if TABLE_BEGIN in text and TABLE_END in text:
        head, rest = text.split(TABLE_BEGIN, 1)
        text = head + table + rest.split(TABLE_END, 1)[1]
    else:
        text = (text + "\n" if text else "") + table + "\n"
    with open(path, "w") as f:
        f.write(text)


def bench_deploy(quick: bool) -> None:
    from .bench_deploy import bench_deploy as run

    run(quick, row)


PARTS = {
    "postprocess": bench_postprocess,
    "loss": bench_loss,
    "data": bench_data,
    "forward": bench_forward,
    "train": bench_train,
    "deploy": bench_deploy,
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks.json", help="JSON file for the table")
    ap.add_argument("--markdown", default=None, help="also write the table into this Markdown file (between markers)")
    ap.add_argument("--only", default=",".join(PARTS), help="comma-separated parts: " + ", ".join(PARTS))
    ap.add_argument("--quick", action="store_true", help="fewer repeats, no torch.compile, no worst-case baseline")
    ap.add_argument("--data", default=None, help="folder holding bccd/ and chess/")
    a = ap.parse_args()
    if a.data:
        os.environ["MULTIBOX_DATA"] = a.data
    warnings.simplefilter("ignore")
    torch.set_num_threads(os.cpu_count() or 1)
    # as the command line and the trainer do; it applies to both sides of every comparison
    print(f"malloc keeps freed memory (multibox.memory): {keep_freed_memory()}")
    start = time.perf_counter()
    machine = f"{cpu_name()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {numba_version()}"
    print(f"multibox benchmarks on {machine}")
    print(f"  {'benchmark':<58} {'multibox':>10} {'baseline':>10} {'unit':<8} {'speedup':>9}  target")
    for part in a.only.split(","):
        PARTS[part.strip()](a.quick)
    total = time.perf_counter() - start
    print(f"total {total:.0f} s")
    with open(a.out, "w") as f:
        json.dump({"machine": machine, "seconds": round(total, 1), "rows": ROWS}, f, indent=2)
    print(f"wrote {a.out}")
    if a.markdown:
        command = (
            "python -m benchmarks"
            + (" --quick" if a.quick else "")
            + (f" --only {a.only}" if a.only != ",".join(PARTS) else "")
        )
        write_markdown(a.markdown, markdown_table(machine, total, command))
        print(f"wrote {a.markdown}")


if __name__ == "__main__":
    main()
