"""Score a trained detector on a split and write the report: ``metrics.json``,
``metrics.txt`` (the per-class table), PR curves, ``errors.png`` and pictures of predictions."""
from __future__ import annotations

import json
import os

from ..data.base import DetectionDataset
from ..data.image import read_image
from ..eval import EvalReport
from ..models import SSD
from ..viz import draw_boxes, image_grid, plot_errors, plot_pr_curves, save_image, side_by_side
from .evaluate import evaluate_model


def write_report(model: SSD, dataset: DetectionDataset, out_dir: str, device="cpu", batch_size: int = 16,
                 workers: int = 1, draw: int | None = None, draw_threshold: float = 0.3,
                 extra: dict | None = None, progress: bool = True) -> EvalReport:
    """Evaluate ``model`` on ``dataset`` and write everything a person wants to look at into ``out_dir``.

    ``draw``: how many images to draw predictions on (None = all) into ``out_dir/predictions``;
    boxes scoring below ``draw_threshold`` are left out of the pictures (not of the metrics).
    """
    os.makedirs(out_dir, exist_ok=True)
    report, preds = evaluate_model(model, dataset, batch_size, device, workers, coco=True,
                                   progress=progress, keep_predictions=True)
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
