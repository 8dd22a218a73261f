"""Plain, obviously-correct implementations that the benchmarks race against.

They follow the way public SSD code bases are commonly written: one image at a
time, one class at a time, a Python loop per kept box in NMS, and a per-sample
PIL/float32 augmentation chain. Each benchmark checks that multibox computes the
same result before it compares times.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# --- post-processing: per image, per class, greedy NMS with a loop over kept boxes ---------


def _iou_one_to_many(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(box[:2], boxes[:, :2])
    rb = torch.minimum(box[2:], boxes[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda b: (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)  # noqa: E731
    union = area(box) + area(boxes) - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(union))


def loop_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> list[int]:
    """Greedy NMS: take the best remaining box, drop everything overlapping it, repeat."""
    order = torch.sort(scores, descending=True, stable=True).indices
    keep = []
    while order.numel() > 0:
        i = int(order[0])
        keep.append(i)
        if order.numel() == 1:
            break
        ious = _iou_one_to_many(boxes[i], boxes[order[1:]])
        order = order[1:][ious <= iou_threshold]
    return keep


def loop_postprocess(loc, logits, priors, score_threshold=0.01, iou_threshold=0.45, top_k=400, max_det=200):
    """SSD detection output, image by image and class by class. Returns per image (boxes, scores, labels)."""
    v0, v1 = 0.1, 0.2
    scores = torch.softmax(logits.float(), dim=-1)
    out = []
    for i in range(loc.shape[0]):
        l = loc[i].float()
        centre = priors[:, :2] + l[:, :2] * v0 * priors[:, 2:]
        size = priors[:, 2:] * torch.exp((l[:, 2:] * v1).clamp(max=math.log(1000.0 / 16)))
        boxes = torch.cat((centre - size / 2, centre + size / 2), 1).clamp(0, 1)
        all_b, all_s, all_l = [], [], []
        for c in range(1, scores.shape[-1]):
            s = scores[i, :, c]
            idx = torch.nonzero(s > score_threshold).squeeze(1)
            if idx.numel() == 0:
                continue
            order = torch.sort(s[idx], descending=True, stable=True).indices[:top_k]
            idx = idx[order]
            keep = loop_nms(boxes[idx], s[idx], iou_threshold)
            all_b.append(boxes[idx[keep]])
            all_s.append(s[idx[keep]])
            all_l.append(torch.full((len(keep),), c, dtype=torch.long))
        if not all_s:
            out.append((torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long)))
            continue
        b, s, lab = torch.cat(all_b), torch.cat(all_s), torch.cat(all_l)
        order = torch.sort(s, descending=True, stable=True).indices[:max_det]
        out.append((b[order], s[order], lab[order]))
    return out


# --- matching and MultiBox loss, one image at a time ------------------------------------


def _iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def loop_multibox_loss(loc, logits, priors, gt_boxes, gt_labels, threshold=0.5, neg_pos=3):
    """Per-image matching (best prior per object forced, then IoU >= threshold), Smooth L1 on
    positives, softmax cross-entropy on positives and the ``neg_pos`` x hardest negatives."""
    priors_xyxy = torch.cat((priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2), 1)
    loc_sum = conf_sum = 0.0
    n_pos = 0
    for i in range(loc.shape[0]):
        valid = gt_labels[i] > 0
        boxes, labels = gt_boxes[i][valid], gt_labels[i][valid]
        target_labels = torch.zeros(priors.shape[0], dtype=torch.long)
        target_boxes = torch.zeros(priors.shape[0], 4)
        if len(labels):
            iou = _iou_matrix(boxes, priors_xyxy)  # (M, P)
            best_gt_iou, best_gt = iou.max(0)
            for j in range(len(labels)):  # every object keeps its best prior
                p = int(iou[j].argmax())
                best_gt[p] = j
                best_gt_iou[p] = 2.0
            pos = best_gt_iou >= threshold
            target_labels[pos] = labels[best_gt[pos]]
            target_boxes = boxes[best_gt]
        pos = target_labels > 0
        npos = int(pos.sum())
        n_pos += npos
        if npos:
            m = target_boxes[pos]
            pr = priors[pos]
            cxcy = ((m[:, :2] + m[:, 2:]) / 2 - pr[:, :2]) / (0.1 * pr[:, 2:])
            wh = torch.log((m[:, 2:] - m[:, :2]) / pr[:, 2:]) / 0.2
            loc_sum = loc_sum + F.smooth_l1_loss(loc[i][pos], torch.cat((cxcy, wh), 1), reduction="sum")
        ce = F.cross_entropy(logits[i], target_labels, reduction="none")
        neg_ce = ce.clone()
        neg_ce[pos] = 0.0
        order = torch.sort(neg_ce, descending=True, stable=True).indices
        num_neg = min(neg_pos * npos, priors.shape[0] - npos)
        neg = torch.zeros_like(pos)
        neg[order[:num_neg]] = True
        conf_sum = conf_sum + ce[pos | neg].sum()
    n = max(n_pos, 1)
    return (loc_sum + conf_sum) / n, loc_sum / n, conf_sum / n


# --- augmentation: a per-sample PIL / float32 pipeline -----------------------------------


class PilSSDAugment:
    """The common SSD augmentation chain written step by step on float32 arrays:
    photometric distortion, zoom-out, min-IoU crop (trial loop), flip, resize."""

    def __init__(self, size: int = 300, mean=(104, 117, 123), seed: int = 0) -> None:
        self.size = size
        self.mean = np.array(mean, np.float32)
        self.rng = np.random.default_rng(seed)

    def _photometric(self, img: np.ndarray) -> np.ndarray:
        r = self.rng
        if r.random() < 0.5:
            img = img + r.uniform(-32, 32)
        if r.random() < 0.5:
            img = img * r.uniform(0.5, 1.5)
        hsv = cv2.cvtColor(np.clip(img, 0, 255).astype(np.float32), cv2.COLOR_RGB2HSV)
        if r.random() < 0.5:
            hsv[:, :, 1] *= r.uniform(0.5, 1.5)
        if r.random() < 0.5:
            hsv[:, :, 0] = (hsv[:, :, 0] + r.uniform(-18, 18)) % 360
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if r.random() < 0.5:
            img = img[:, :, r.permutation(3)]
        return img

    def _expand(self, img, boxes):
        if self.rng.random() < 0.5:
            return img, boxes
        h, w, _ = img.shape
        ratio = self.rng.uniform(1, 4)
        left, top = self.rng.uniform(0, w * ratio - w), self.rng.uniform(0, h * ratio - h)
        canvas = np.empty((int(h * ratio), int(w * ratio), 3), np.float32)
        canvas[:, :] = self.mean
        canvas[int(top) : int(top) + h, int(left) : int(left) + w] = img
        return canvas, boxes + np.array([int(left), int(top), int(left), int(top)], np.float32)

    def _crop(self, img, boxes, labels):
        h, w, _ = img.shape
        while True:
            mode = self.rng.choice([None, 0.1, 0.3, 0.5, 0.7, 0.9, -1.0])
            if mode is None:
                return img, boxes, labels
            min_iou = -math.inf if mode == -1.0 else mode
            for _ in range(50):
                cw, ch = self.rng.uniform(0.3 * w, w), self.rng.uniform(0.3 * h, h)
                if ch / cw < 0.5 or ch / cw > 2:
                    continue
                x, y = self.rng.uniform(0, w - cw), self.rng.uniform(0, h - ch)
                rect = np.array([int(x), int(y), int(x + cw), int(y + ch)], np.float32)
                iou = _iou_matrix(torch.from_numpy(boxes), torch.from_numpy(rect[None])).numpy()[:, 0]
                if iou.max() < min_iou:
                    continue
                centers = (boxes[:, :2] + boxes[:, 2:]) / 2
                m = (
                    (centers[:, 0] > rect[0])
                    & (centers[:, 1] > rect[1])
                    & (centers[:, 0] < rect[2])
                    & (centers[:, 1] < rect[3])
                )
                if not m.any():
                    continue
                b = boxes[m].copy()
                b[:, :2] = np.maximum(b[:, :2], rect[:2]) - rect[:2]
                b[:, 2:] = np.minimum(b[:, 2:], rect[2:]) - rect[:2]
                return img[int(rect[1]) : int(rect[3]), int(rect[0]) : int(rect[2])], b, labels[m]

    def __call__(self, path: str, boxes: np.ndarray, labels: np.ndarray):
        img = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
        boxes = boxes.astype(np.float32)
        img = self._photometric(img)
        img, boxes = self._expand(img, boxes)
        img, boxes, labels = self._crop(img, boxes, labels)
        h, w, _ = img.shape
        if self.rng.random() < 0.5:
            img = img[:, ::-1]
            boxes = boxes.copy()
            boxes[:, 0::2] = w - boxes[:, 2::-2]
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        img = np.asarray(pil.resize((self.size, self.size), Image.BILINEAR)).astype(np.float32)
        boxes = boxes / np.array([w, h, w, h], np.float32)
        return torch.from_numpy(img).permute(2, 0, 1), torch.from_numpy(boxes), torch.from_numpy(labels)


def loop_collate(samples):
    images = torch.stack([s[0] for s in samples])
    return images, [s[1] for s in samples], [s[2] for s in samples]
