"""Pictures: boxes on images, precision/recall curves, training curves.

Plots use matplotlib's Agg backend (no display needed); box drawing uses OpenCV.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence

import cv2
import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def class_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` well-separated, saturated RGB colours (golden-ratio hue steps)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.85, 0.95)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    class_names: Sequence[str],
    scores: Sequence[float] | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """Return a copy of an RGB uint8 image with labelled boxes (xyxy pixels) drawn on it."""
    img = np.ascontiguousarray(image.copy())
    h, w = img.shape[:2]
    t = thickness or max(1, round(min(h, w) / 300))
    font_scale = max(0.4, min(h, w) / 900)
    colors = class_colors(len(class_names))
    for i, (box, label) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), labels)):
        color = colors[(int(label) - 1) % len(colors)]
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, t, cv2.LINE_AA)
        text = class_names[int(label) - 1] + (f" {scores[i]:.2f}" if scores is not None else "")
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        cv2.rectangle(img, (x1, ty - th - base), (x1 + tw + 2, ty + 1), color, -1)
        # dark text on light fills, white on dark ones
        lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
        cv2.putText(
            img,
            text,
            (x1 + 1, ty - base + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0) if lum > 140 else (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return img


def fit_width(img: np.ndarray, width: int) -> np.ndarray:
    """Resize an image to ``width`` pixels wide, keeping its aspect ratio."""
    h, w = img.shape[:2]
    return cv2.resize(img, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)


def side_by_side(left: np.ndarray, right: np.ndarray, width: int = 480) -> np.ndarray:
    """Two pictures of the same image (e.g. ground truth | predictions) with a thin white gap."""
    a, b = fit_width(left, width), fit_width(right, width)
    if a.shape[0] != b.shape[0]:
        b = cv2.resize(b, (b.shape[1], a.shape[0]), interpolation=cv2.INTER_AREA)
    gap = np.full((a.shape[0], 6, 3), 255, np.uint8)
    return np.concatenate([a, gap, b], axis=1)


def image_grid(tiles: Sequence[np.ndarray], cols: int = 2) -> np.ndarray:
    """Tiles (any sizes) in rows of ``cols`` on a white background."""
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    rows = []
    for i in range(0, len(tiles), cols):
        row = [
            np.pad(t, ((0, h - t.shape[0] + 6), (0, w - t.shape[1] + 6), (0, 0)), constant_values=255)
            for t in tiles[i : i + cols]
        ]
        while len(row) < cols:
            row.append(np.full((h + 6, w + 6, 3), 255, np.uint8))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def save_image(path: str | os.PathLike, rgb: np.ndarray) -> None:
    if not cv2.imwrite(os.fspath(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")


def plot_pr_curves(report, out_dir: str | os.PathLike) -> list[str]:
    """One PNG per class (``pr_<class>.png``) and an overview (``pr_curves.png``); returns the paths."""
    plt = _pyplot()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    colors = [tuple(c / 255 for c in rgb) for rgb in class_colors(len(report.class_names))]
    fig_all, ax_all = plt.subplots(figsize=(7, 6))
    for label, name in enumerate(report.class_names, start=1):
        r = report.voc[label]
        fig, ax = plt.subplots(figsize=(5, 4.5))
        for a, color in ((ax, "tab:blue"), (ax_all, colors[label - 1])):
            if r.ap is None:
                continue
            rec = np.concatenate(([0.0], r.recall))
            prec = np.concatenate(([1.0 if len(r.precision) else 0.0], r.precision))
            a.plot(rec, prec, color=color, lw=1.8, label=f"{name} (AP {r.ap:.3f})")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.02),
            xlabel="recall",
            ylabel="precision",
            title=f"{name}: AP50 {'n/a' if r.ap is None else f'{r.ap:.4f}'}  ({r.num_gt} objects)",
        )
        ax.grid(alpha=0.3)
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
        p = os.path.join(out_dir, f"pr_{safe}.png")
        fig.tight_layout()
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    ax_all.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="recall",
        ylabel="precision",
        title=f"Precision-recall at IoU 0.5: mAP {report.map:.4f} (VOC07 {report.map07:.4f})",
    )
    ax_all.grid(alpha=0.3)
    ax_all.legend(loc="lower left", fontsize=8)
    p = os.path.join(out_dir, "pr_curves.png")
    fig_all.tight_layout()
    fig_all.savefig(p, dpi=110)
    plt.close(fig_all)
    return [p] + paths


ERROR_COLORS = {
    "tp": "tab:green",
    "duplicate": "tab:olive",
    "localization": "tab:orange",
    "confusion": "tab:purple",
    "background": "tab:red",
    "missed": "tab:gray",
}


def plot_errors(report, path: str | os.PathLike) -> None:
    """One horizontal bar per class: what its best-scored detections are (as many as its objects),
    then, past the bar's end, the objects no detection finds (``report.errors``)."""
    plt = _pyplot()
    names = report.class_names
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.6))
    y = np.arange(len(names))[::-1]
    objects = np.array([max(report.voc[label].num_gt, 1) for label in range(1, len(names) + 1)], dtype=float)
    left = np.zeros(len(names))
    for kind, color in ERROR_COLORS.items():
        share = np.array([report.errors[label][kind] for label in range(1, len(names) + 1)]) / objects
        ax.barh(
            y,
            share,
            left=left,
            color=color,
            label=kind,
            hatch="//" if kind == "missed" else None,
            alpha=0.6 if kind == "missed" else 1.0,
        )
        left += share
    ax.set_yticks(y, [f"{n} ({report.voc[i].num_gt})" for i, n in enumerate(names, start=1)])
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("share of the class's objects: its best-scored detections (up to 1), then the objects missed")
    ax.set_title("What the top detections of each class are (IoU 0.5)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 if len(names) < 4 else -0.12), ncol=6, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_training_curves(history: list[dict], path: str | os.PathLike) -> None:
    """Loss (total, localisation, confidence) per epoch, and validation mAP where measured."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("loss", "-"), ("loc", "--"), ("conf", ":")):
        a1.plot(epochs, [h.get(key, float("nan")) for h in history], style, label=key)
    a1.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    a1.grid(alpha=0.3)
    a1.legend()
    pts = [(h["epoch"], h["val_mAP50"]) for h in history if "val_mAP50" in h]
    if pts:
        a2.plot(*zip(*pts), "o-", color="tab:green")
        a2.set(ylim=(0, 1), xlabel="epoch", ylabel="mAP@0.5 (area)", title="Validation mAP")
    else:  # no validation split: show the schedule instead of an empty panel
        a2.plot(epochs, [h.get("lr", float("nan")) for h in history], "-", color="tab:purple")
        a2.set(xlabel="epoch", ylabel="learning rate (end of epoch)", title="Learning rate")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_box_shapes(
    widths: np.ndarray,
    heights: np.ndarray,
    prior_shapes: Sequence[tuple[float, float]],
    path: str | os.PathLike,
    title: str = "",
) -> None:
    """Boxes against prior shapes, as the model sees them (fractions of the square input):
    every box's relative width and height (points, log axes) and each prior shape (crosses).

    Args:
        widths, heights: ``(B,)`` relative box widths and heights.
        prior_shapes: ``(width, height)`` of each prior shape, fractions of the input.
        path: the PNG to write.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 6))
    if len(widths):
        ax.scatter(widths, heights, s=4, alpha=0.35, color="tab:blue", label=f"boxes ({len(widths)})")
    if prior_shapes:
        pw, ph = zip(*prior_shapes)
        ax.scatter(pw, ph, marker="x", s=50, color="tab:red", label=f"prior shapes ({len(prior_shapes)})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    lo = min([0.01, *widths, *heights]) if len(widths) else 0.01
    ax.set_xlim(lo * 0.8, 1.3)
    ax.set_ylim(lo * 0.8, 1.3)
    ax.plot([lo, 1.3], [lo, 1.3], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("box width / image width")
    ax.set_ylabel("box height / image height")
    ax.set_title(title or "Box shapes and the priors that match them")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
