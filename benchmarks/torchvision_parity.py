"""Imported torchvision ssd300_vgg16 == torchvision's own model (needs torchvision).

Builds torchvision's ``ssd300_vgg16`` with random weights (its own initialisation,
classification biases shifted so that scores look like a trained model's: a few
hundred candidates per image, not every prior), imports the state dict into
multibox, and compares on the same 300x300 images, in fp32:

- the raw head outputs (box offsets, class logits) of every prior;
- the final detections (boxes, scores, labels) after post-processing.

    python -m benchmarks.torchvision_parity [--device cuda] [--images 16]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch


def textured_images(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth random colour fields with rectangles, 0-255 float, (n, 3, 300, 300)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 10, 10, generator=g)
    x = torch.nn.functional.interpolate(low, size=(300, 300), mode="bicubic", align_corners=False)
    for i in range(n):
        for _ in range(4):
            x1, y1 = torch.randint(0, 220, (2,), generator=g).tolist()
            w, h = torch.randint(30, 80, (2,), generator=g).tolist()
            x[i, :, y1 : y1 + h, x1 : x1 + w] = torch.rand(3, 1, 1, generator=g)
    x = x + 0.03 * torch.randn(x.shape, generator=g)
    return (x.clamp(0, 1) * 255).round()


def match(a: dict, b: dict, box_tol: float, score_tol: float) -> tuple[int, int]:
    """Detections of ``a`` with a partner in ``b`` (same label, box and score within tolerance)."""
    used = np.zeros(len(b["scores"]), bool)
    hits = 0
    for box, s, lbl in zip(a["boxes"], a["scores"], a["labels"]):
        ok = (
            ~used
            & (b["labels"] == lbl)
            & (np.abs(b["boxes"] - box).max(1) <= box_tol)
            & (np.abs(b["scores"] - s) <= score_tol)
        )
        if ok.any():
            used[np.argmax(ok)] = True
            hits += 1
    return hits, len(a["scores"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--background-bias", type=float, default=6.0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    import torchvision
    from torchvision.models.detection import ssd300_vgg16

    from multibox.inference.interop import ssd300_from_torchvision

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    tv = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=91)
    with torch.no_grad():  # background logit up: a trained model's score distribution
        for conv in tv.head.classification_head.module_list:
            conv.bias.view(-1, 91)[:, 0] += a.background_bias
    ours, names = ssd300_from_torchvision(tv.state_dict())
    dev = torch.device(a.device)
    tv = tv.to(dev).eval()
    ours = ours.to(dev).eval()
    images = textured_images(a.images).to(dev)

    with torch.no_grad():
        # raw outputs: torchvision's transform (normalise; 300x300 stays 300x300), backbone, head
        tv_list, _ = tv.transform([im / 255.0 for im in images])
        feats = list(tv.backbone(tv_list.tensors).values())
        tv_head = tv.head(feats)
        loc, logits = ours(images)
        d_loc = (loc - tv_head["bbox_regression"]).abs().max().item()
        d_logit = (logits - tv_head["cls_logits"]).abs().max().item()
        # detections
        tv_dets = tv([im / 255.0 for im in images])
        our_dets = ours.predict(images).per_image()
    hits = total = 0
    counts = []
    for t, o in zip(tv_dets, our_dets):
        t = {k: v.cpu().numpy() for k, v in t.items()}
        o = {k: v.cpu().numpy() for k, v in o.items()}
        counts.append((len(t["scores"]), len(o["scores"])))
        h, n = match(t, o, box_tol=1e-2, score_tol=1e-4)
        hits += h
        total += n
    same_counts = all(x == y for x, y in counts)
    result = {
        "torchvision": torchvision.__version__,
        "torch": torch.__version__,
        "device": str(dev),
        "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else None,
        "images": a.images,
        "priors": int(loc.shape[1]),
        "max_abs_diff_box_offsets": d_loc,
        "max_abs_diff_logits": d_logit,
        "detections_torchvision": int(sum(c[0] for c in counts)),
        "detections_multibox": int(sum(c[1] for c in counts)),
        "same_count_per_image": same_counts,
        "torchvision_detections_matched": f"{hits}/{total}",
    }
    print(json.dumps(result, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
