"""Run a detector over a dataset and score it (VOC AP, COCO metrics)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from tqdm import tqdm

from ..data.base import DetectionDataset
from ..data.loader import make_loader
from ..data.transforms import SSDTransform
from ..eval import EvalReport, Evaluator
from ..models import SSD
from ..models.fuse import inference_copy


def eval_view(dataset: DetectionDataset, model) -> DetectionDataset:
    """The same records with the model's test-time transform (resize only)."""
    return dataset.with_transform(SSDTransform(model.image_size, train=False))


@torch.no_grad()
def predict_dataset(
    model: SSD,
    dataset: DetectionDataset,
    batch_size: int = 16,
    device="cpu",
    workers: int = 1,
    progress: bool = True,
    channels_last: bool = False,
) -> Iterator[tuple[int, dict]]:
    """Yields ``(record index, {"boxes", "scores", "labels"})`` in dataset order, boxes in original pixels.
    ``model`` is an :class:`SSD` or an exported detector (:class:`~multibox.inference.runtime.OnnxDetector`,
    :class:`~multibox.inference.runtime.OpenVinoDetector`), which scores the same data the same way."""
    if not isinstance(model, SSD):
        yield from _predict_dataset_exported(model, dataset, batch_size, workers, progress)
        return
    model.eval()
    loader = make_loader(eval_view(dataset, model), batch_size, train=False, workers=workers)
    # BatchNorm folded and channels-last: same outputs, faster (docs/benchmarks.md)
    net = inference_copy(model, channels_last=True)
    index = 0
    for batch in tqdm(loader, desc=f"eval {dataset.name}", disable=not progress, leave=False, mininterval=1.0):
        images = batch["images"].to(device, non_blocking=True).float()
        images = images.contiguous(memory_format=torch.channels_last)
        det = net.predict(images, batch["sizes"].to(device))
        for d in det.per_image():
            yield index, {k: v.cpu().numpy() for k, v in d.items()}
            index += 1


def _predict_dataset_exported(det, dataset: DetectionDataset, batch_size: int, workers: int, progress: bool):
    loader = make_loader(eval_view(dataset, det), batch_size, train=False, workers=workers)
    index = 0
    for batch in tqdm(loader, desc=f"eval {dataset.name}", disable=not progress, leave=False, mininterval=1.0):
        boxes, scores, labels, num = det.run(batch["images"].float().numpy())
        for i, (h, w) in enumerate(batch["sizes"].tolist()):
            n = int(num[i])
            scale = np.array([w, h, w, h], np.float32)
            yield (
                index,
                {"boxes": boxes[i, :n] * scale, "scores": scores[i, :n], "labels": labels[i, :n].astype(np.int64)},
            )
            index += 1


def evaluate_model(
    model: SSD,
    dataset: DetectionDataset,
    batch_size: int = 16,
    device="cpu",
    workers: int = 1,
    coco: bool = True,
    progress: bool = True,
    keep_predictions: bool = False,
    channels_last: bool = False,
    voc_convention: str | None = None,
):
    """Score ``model`` on ``dataset``; returns the :class:`EvalReport` (and predictions if asked).

    ``voc_convention``: ``"devkit"`` or ``"continuous"`` (see :class:`~multibox.eval.Evaluator`);
    default: the dataset's (devkit for VOC-style XML and CSV boxes, continuous for COCO and YOLO)."""
    ev = Evaluator(
        dataset.class_names,
        dataset.category_ids,
        iou_thresholds=(0.75,),
        voc_convention=voc_convention or getattr(dataset, "voc_convention", "continuous"),
    )
    kept = []
    for i, d in predict_dataset(model, dataset, batch_size, device, workers, progress, channels_last):
        r = dataset.records[i]
        ev.add(
            r.image_id,
            r.boxes,
            r.labels,
            d["boxes"],
            d["scores"],
            d["labels"],
            difficult=r.difficult,
            image_size=r.size,
        )
        if keep_predictions:
            kept.append(d)
    report: EvalReport = ev.compute(coco=coco)
    return (report, kept) if keep_predictions else report
