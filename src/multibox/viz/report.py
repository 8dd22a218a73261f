"""Write the report of a scored split: ``metrics.json``, ``metrics.txt`` (the per-class
table), PR curves, ``errors.png`` and pictures of predictions.

    report, preds = evaluate_model(model, dataset, keep_predictions=True)  # multibox.inference
    write_report(report, preds, dataset, "runs/val")
"""

from __future__ import annotations

import json
import os

from ..data.base import DetectionDataset
from ..data.image import read_image
from ..eval import EvalReport
from .draw import draw_boxes, image_grid, plot_errors, plot_pr_curves, save_image, side_by_side


def write_report(
    report: EvalReport,
    preds: list[dict],
    dataset: DetectionDataset,
    out_dir: str,
    draw: int | None = None,
    draw_threshold: float = 0.3,
    extra: dict | None = None,
) -> EvalReport:
    """Write everything a person wants to look at about a scored split into ``out_dir``.

    Args:
        report: the split's scores (:class:`~multibox.eval.EvalReport`).
        preds: one ``{"boxes" (K, 4) pixels, "scores" (K,), "labels" (K,)}`` dict per record of
            ``dataset``, in order (``evaluate_model(..., keep_predictions=True)``).
        dataset: the scored split (its records give the images and ground truth).
        out_dir: created if missing.
        draw: how many images to draw predictions on (None = all) into ``out_dir/predictions``.
        draw_threshold: boxes scoring below it are left out of the pictures (not of the metrics).
        extra: more entries for ``metrics.json``.

    Returns:
        ``report``, unchanged.
    """
    os.makedirs(out_dir, exist_ok=True)
    d = report.to_dict()
    d["split"] = dataset.name
    if extra:
        d.update(extra)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(d, f, indent=2)
    with open(os.path.join(out_dir, "metrics.txt"), "w") as f:
        f.write(f"{dataset.name}: {len(dataset)} images\n{report.table()}\n")
    plot_pr_curves(report, os.path.join(out_dir, "pr_curves"))
    if report.errors:
        plot_errors(report, os.path.join(out_dir, "errors.png"))
    pic_dir = os.path.join(out_dir, "predictions")
    os.makedirs(pic_dir, exist_ok=True)
    n = len(dataset) if draw is None else min(draw, len(dataset))
    tiles = []
    for i in range(n):
        r, p = dataset.records[i], preds[i]
        keep = p["scores"] >= draw_threshold
        img = read_image(r.image_path)
        pred_img = draw_boxes(img, p["boxes"][keep], p["labels"][keep], dataset.class_names, p["scores"][keep])
        save_image(os.path.join(pic_dir, f"{os.path.splitext(os.path.basename(r.image_path))[0]}.jpg"), pred_img)
        if len(tiles) < 6:
            gt_img = draw_boxes(img, r.boxes, r.labels, dataset.class_names)
            tiles.append(side_by_side(gt_img, pred_img))
    if tiles:
        save_image(os.path.join(out_dir, "predictions_overview.jpg"), image_grid(tiles))
    return report
