"""GPU benchmark: multibox ssd300_vgg16 against torchvision's ssd300_vgg16 on the same GPU.

    python -m benchmarks.bench_gpu [--out gpu.json] [--steps 30]
    python -m benchmarks.bench_gpu --device cpu --smoke    # a quick run of every code path

In one run, on the same weights (torchvision's model with random weights and a
background-biased classifier, imported into multibox):

- inference images/second at batch 1 and 64: torchvision (fp32, and under bf16
  autocast) vs multibox (fp32; bf16 autocast + channels-last; + torch.compile;
  + CUDA graphs at batch 1), post-processing included on both sides, and whether
  the fp32 detections are equal;
- training images/second at batch 32 (forward, loss, backward, SGD step):
  torchvision vs multibox (bf16 autocast, channels-last, torch.compile);
- the data pipeline's images/second with every CPU core (generated JPEGs,
  multibox's augmentation, DataLoader workers), and training fed by it.

torchvision is optional: without it only the multibox columns are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch

from .torchvision_parity import match, textured_images


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def rate(fn, n_images: int, steps: int, device, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return n_images * steps / (time.perf_counter() - t)


def build(device, background_bias=6.0):
    """(torchvision model or None, multibox model) with the same weights."""
    from multibox.inference.interop import TORCHVISION_SSD300_KWARGS, ssd300_from_torchvision
    from multibox.models import create_model

    torch.manual_seed(0)
    try:
        from torchvision.models.detection import ssd300_vgg16

        tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91)
        with torch.no_grad():
            for conv in tv.head.classification_head.module_list:
                conv.bias.view(-1, 91)[:, 0] += background_bias
        ours, _ = ssd300_from_torchvision(tv.state_dict())
        return tv.to(device), ours.to(device)
    except ImportError:
        ours = create_model("ssd300_vgg16", num_classes=90, **TORCHVISION_SSD300_KWARGS)
        with torch.no_grad():
            for conv in ours.head.classification:
                conv.bias.view(-1, 91)[:, 0] += background_bias
        return None, ours.to(device)


def random_targets(n: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    boxes, labels = torch.zeros(n, 8, 4), torch.zeros(n, 8, dtype=torch.long)
    for i in range(n):
        k = int(torch.randint(1, 9, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * 0.6
        boxes[i, :k] = torch.cat((xy, xy + 0.1 + torch.rand(k, 2, generator=g) * 0.3), 1).clamp(max=1)
        labels[i, :k] = torch.randint(1, 91, (k,), generator=g)
    return boxes.to(device), labels.to(device)


def inference(tv, ours, device, batches, steps, compile_ok, rows):
    amp = dict(device_type=device.type, dtype=torch.bfloat16)
    ours.eval()
    for b in batches:
        x = textured_images(b).to(device)
        xs = [im / 255.0 for im in x]
        with torch.no_grad():
            if tv is not None:
                tv.eval()
                rows.append(("inference", b, "torchvision fp32", rate(lambda: tv(xs), b, steps, device)))
                with torch.autocast(**amp):
                    rows.append(("inference", b, "torchvision bf16 autocast", rate(lambda: tv(xs), b, steps, device)))
            rows.append(("inference", b, "multibox fp32", rate(lambda: ours.predict(x), b, steps, device)))
            cl = ours.to(memory_format=torch.channels_last)
            xc = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(**amp):
                rows.append(
                    ("inference", b, "multibox bf16 + channels-last", rate(lambda: cl.predict(xc), b, steps, device))
                )
                if compile_ok:
                    mode = "reduce-overhead" if (b == 1 and device.type == "cuda") else "max-autotune-no-cudagraphs"
                    net = torch.compile(cl, mode=mode)
                    from multibox.core.postprocess import postprocess

                    def run():
                        loc, logits = net(xc)
                        return postprocess(loc, logits, cl.priors)

                    label = "+ torch.compile" + (" + CUDA graphs" if mode == "reduce-overhead" else "")
                    rows.append(
                        (
                            "inference",
                            b,
                            f"multibox bf16 + channels-last {label}",
                            rate(run, b, steps, device, warmup=5),
                        )
                    )
            ours.to(memory_format=torch.contiguous_format)
    # equality of fp32 detections on the same weights
    if tv is not None:
        x = textured_images(8, seed=1).to(device)
        with torch.no_grad():
            t = tv([im / 255.0 for im in x])
            o = ours.predict(x).per_image()
        hits = total = 0
        for a, b in zip(t, o):
            h, n = match(
                {k: v.cpu().numpy() for k, v in a.items()}, {k: v.cpu().numpy() for k, v in b.items()}, 1e-2, 1e-4
            )
            hits, total = hits + h, total + n
        return f"{hits}/{total} torchvision detections matched (fp32)"
    return "torchvision not installed: equality not checked"


def training(tv, ours, device, batch, steps, compile_ok, rows):
    from multibox.core.losses import MultiBoxLoss
    from multibox.engine.trainer import param_groups

    x = textured_images(batch, seed=2).to(device)
    boxes, labels = random_targets(batch, device)
    amp = dict(device_type=device.type, dtype=torch.bfloat16)
    if tv is not None:
        tv.train()
        opt = torch.optim.SGD(tv.parameters(), lr=1e-4, momentum=0.9)
        xs = [im / 255.0 for im in x]
        h, w = x.shape[-2:]
        scale = torch.tensor([w, h, w, h], device=device)
        targets = [{"boxes": b[l > 0] * scale, "labels": l[l > 0]} for b, l in zip(boxes, labels)]

        def tv_step(autocast: bool):
            with torch.autocast(**amp, enabled=autocast):
                loss = sum(tv(xs, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        rows.append(("training", batch, "torchvision fp32", rate(lambda: tv_step(False), batch, steps, device)))
        rows.append(("training", batch, "torchvision bf16 autocast", rate(lambda: tv_step(True), batch, steps, device)))
    ours.train()
    loss_fn = MultiBoxLoss(ours.priors).to(device)
    opt = torch.optim.SGD(param_groups(ours, 5e-4), lr=1e-4, momentum=0.9)

    def make_step(net, images, autocast):
        def step():
            with torch.autocast(**amp, enabled=autocast):
                loc, logits = net(images)
            out = loss_fn(loc.float(), logits.float(), boxes, labels)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        return step

    rows.append(("training", batch, "multibox fp32", rate(make_step(ours, x, False), batch, steps, device)))
    ours.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    rows.append(
        ("training", batch, "multibox bf16 + channels-last", rate(make_step(ours, xc, True), batch, steps, device))
    )
    best = make_step(ours, xc, True)
    if compile_ok:
        net = torch.compile(ours)
        best = make_step(net, xc, True)
        rows.append(
            (
                "training",
                batch,
                "multibox bf16 + channels-last + torch.compile",
                rate(best, batch, steps, device, warmup=5),
            )
        )
    return best


def forever(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def data_pipeline(device, batch, steps, n_images, rows, step_fn=None):
    from PIL import Image

    from multibox.data.base import DetectionDataset, Record
    from multibox.data.loader import make_loader
    from multibox.data.transforms import SSDTransform

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        records = []
        for i in range(n_images):
            w, h = int(rng.integers(400, 640)), int(rng.integers(300, 480))
            path = os.path.join(d, f"{i}.jpg")
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, quality=85)
            xy = rng.uniform(0, 0.5, (4, 2)) * [w, h]
            boxes = np.concatenate((xy, xy + rng.uniform(30, 150, (4, 2))), 1).clip(0, [w, h, w, h])
            records.append(
                Record(path, i, boxes.astype(np.float32), np.array([1, 2, 3, 4]), np.zeros(4, bool), size=(h, w))
            )
        ds = DetectionDataset(records, [str(i) for i in range(1, 91)], name="generated")
        ds = ds.with_transform(SSDTransform((300, 300), train=True, seed=0))
        workers = os.cpu_count() or 1
        loader = make_loader(ds, batch, train=True, workers=workers, seed=0)
        batches = forever(loader)
        next(batches)
        t = time.perf_counter()
        n = 0
        for _, b in zip(range(steps), batches):
            n += b["images"].shape[0]
        rows.append(("data", batch, f"augment + collate, {workers} workers", n / (time.perf_counter() - t)))
        if step_fn is not None:
            t = time.perf_counter()
            n = 0
            for _, b in zip(range(steps), forever(loader)):
                b["images"].to(device, non_blocking=True)
                step_fn()
                n += b["images"].shape[0]
            sync(device)
            rows.append(("training fed by the loader", batch, "multibox best", n / (time.perf_counter() - t)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--smoke", action="store_true", help="tiny batches and steps, no torch.compile")
    ap.add_argument("--out", default="gpu_benchmarks.json")
    a = ap.parse_args()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    steps = 2 if a.smoke else a.steps
    compile_ok = not a.smoke
    tv, ours = build(device)
    rows: list[tuple] = []
    equal = inference(tv, ours, device, [1, 2] if a.smoke else [1, 64], steps, compile_ok, rows)
    step_fn = training(tv, ours, device, 2 if a.smoke else 32, steps, compile_ok, rows)
    data_pipeline(device, 2 if a.smoke else 32, steps, 8 if a.smoke else 512, rows, step_fn)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}")
    print(f"  {'what':<28} {'batch':>5}  {'variant':<58} {'images/s':>10}")
    for what, b, variant, v in rows:
        print(f"  {what:<28} {b:>5}  {variant:<58} {v:10.1f}")
    print(f"  detections: {equal}")
    with open(a.out, "w") as f:
        json.dump(
            {
                "device": name,
                "torch": torch.__version__,
                "equal_detections": equal,
                "rows": [dict(zip(("what", "batch", "variant", "images_per_s"), r)) for r in rows],
            },
            f,
            indent=2,
        )


if __name__ == "__main__":
    main()
