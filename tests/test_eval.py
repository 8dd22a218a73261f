import json
import math

import numpy as np
import pytest

from multibox.eval import Evaluator, voc_ap
from multibox.eval.files import evaluate_coco_files

A = [10, 10, 50, 50]
B = [100, 100, 150, 160]
C = [200, 20, 260, 90]
FAR = [300, 300, 320, 330]


def one_class(gt, dets, difficult=None, names=("thing",)):
    ev = Evaluator(list(names))
    ev.add(
        "img",
        np.array(gt, float).reshape(-1, 4),
        [1] * len(gt),
        np.array([d[0] for d in dets], float).reshape(-1, 4),
        [d[1] for d in dets],
        [1] * len(dets),
        difficult=difficult,
    )
    return ev.compute(coco=False)


def test_perfect_detections_score_one():
    r = one_class([A, B], [(A, 0.9), (B, 0.8)])
    assert r.voc[1].ap == 1.0 and r.voc07[1].ap == pytest.approx(1.0)


def test_false_positive_ranked_first_halves_precision():
    r = one_class([A], [(FAR, 0.9), (A, 0.8)])
    assert r.voc[1].ap == pytest.approx(0.5)
    assert r.voc07[1].ap == pytest.approx(0.5)


def test_duplicate_detection_is_a_false_positive_after_the_true_one():
    r = one_class([A], [(A, 0.9), (A, 0.8)])
    np.testing.assert_allclose(r.voc[1].precision, [1.0, 0.5])
    assert r.voc[1].ap == 1.0


def test_difficult_objects_are_neither_positive_nor_false_positive():
    dets = [(B, 0.9), (FAR, 0.8), (A, 0.7)]
    r = one_class([A, B], dets, difficult=[False, True])
    # B ignored; FP then TP over 1 positive
    assert r.voc[1].num_gt == 1
    assert r.voc[1].ap == pytest.approx(0.5)
    r = one_class([A, B], dets)  # same boxes, B not difficult: TP, FP, TP over 2
    assert r.voc[1].ap == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_both_interpolations_by_hand():
    r = one_class([A, B], [(A, 0.9), (FAR, 0.8), (B, 0.7)])
    assert r.voc[1].ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    # 11-point: recall >= 0 ... 0.5 -> 1.0 (6 points), 0.6 ... 1.0 -> 2/3 (5 points)
    assert r.voc07[1].ap == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_class_without_ground_truth_is_reported_not_averaged():
    ev = Evaluator(["a", "b", "c"])
    ev.add(1, [A], [1], [A, C], [0.9, 0.8], [1, 2])
    r = ev.compute(coco=False)
    assert r.voc[1].ap == 1.0
    assert r.voc[2].ap is None and r.voc[2].num_det == 1  # detections but nothing to find
    assert r.voc[3].ap is None and r.voc[3].num_det == 0
    assert r.map == 1.0
    assert "n/a" in r.table()
    assert r.to_dict()["per_class"]["b"]["AP50"] is None


def test_iou_threshold_is_strict_and_configurable():
    # det overlapping A by exactly 0.5: [10,10,50,50] vs [10,10,50,90] -> 1600/3200
    half = [10, 10, 50, 90]
    ev = Evaluator(["x"], iou_thresholds=(0.3, 0.75))
    ev.add(0, [A], [1], [half], [0.9], [1])
    r = ev.compute(coco=False)
    assert r.voc[1].ap == 0.0  # devkit: ovmax > 0.5 strictly
    assert r.ap_at[0.3] == 1.0 and r.ap_at[0.75] == 0.0
    assert ev.voc(0.49)[1].ap == 1.0


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_voc(images, num_classes, thr, use_07):
    """Straightforward transcription of the devkit's loop."""
    aps = {}
    for c in range(1, num_classes + 1):
        npos = 0
        taken = {}
        for img_id, (gb, gl, gd, *_rest) in images.items():
            taken[img_id] = [False] * len(gb)
            npos += sum(1 for l, d in zip(gl, gd) if l == c and not d)
        dets = [
            (s, img_id, b) for img_id, (_, _, _, db, ds, dl) in images.items() for b, s, l in zip(db, ds, dl) if l == c
        ]
        dets.sort(key=lambda t: -t[0])
        tp, fp = [], []
        for _s, img_id, b in dets:
            gb, gl, gd = images[img_id][:3]
            best, jbest = -1.0, -1
            for j, (g, l) in enumerate(zip(gb, gl)):
                if l == c:
                    o = _iou(b, g)
                    if o > best:
                        best, jbest = o, j
            if best > thr:
                if gd[jbest]:
                    continue
                if not taken[img_id][jbest]:
                    taken[img_id][jbest] = True
                    tp.append(1), fp.append(0)
                else:
                    tp.append(0), fp.append(1)
            else:
                tp.append(0), fp.append(1)
        if npos == 0:
            aps[c] = None
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        rec = tp / npos
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        if use_07:
            ap = sum((prec[rec >= t].max() if (rec >= t).any() else 0.0) for t in np.arange(0, 1.1, 0.1)) / 11
        else:
            mrec = np.concatenate(([0.0], rec, [1.0]))
            mpre = np.concatenate(([0.0], prec, [0.0]))
            for i in range(len(mpre) - 2, -1, -1):
                mpre[i] = max(mpre[i], mpre[i + 1])
            idx = np.where(mrec[1:] != mrec[:-1])[0]
            ap = np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])
        aps[c] = ap
    return aps


def _random_dataset(seed, n_images=40, num_classes=4):
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(n_images):
        k = rng.integers(0, 6)
        xy = rng.uniform(0, 400, (k, 2))
        gb = np.concatenate((xy, xy + rng.uniform(10, 120, (k, 2))), 1)
        gl = rng.integers(1, num_classes + 1, k)
        gd = rng.random(k) < 0.15
        m = rng.integers(0, 15)
        # half jittered copies of gt, half random boxes
        src = gb[rng.integers(0, k, m)] if k else np.zeros((m, 4))
        jit = src + rng.normal(0, 12, (m, 4))
        rnd_xy = rng.uniform(0, 400, (m, 2))
        rnd = np.concatenate((rnd_xy, rnd_xy + rng.uniform(10, 120, (m, 2))), 1)
        use = (rng.random(m) < 0.6) & (k > 0)
        db = np.where(use[:, None], jit, rnd)
        db = np.concatenate((np.minimum(db[:, :2], db[:, 2:]), np.maximum(db[:, :2], db[:, 2:])), 1)
        dl = np.where(
            use & (rng.random(m) < 0.8), gl[rng.integers(0, k, m)] if k else 1, rng.integers(1, num_classes + 1, m)
        )
        images[f"im{i}"] = (gb, gl, gd, db, rng.random(m), dl)
    return images


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_voc_ap_agrees_with_straightforward_implementation(seed):
    images = _random_dataset(seed)
    assert sum(len(v[3]) for v in images.values()) > 200
    ev = Evaluator(["a", "b", "c", "d"])
    for img_id, (gb, gl, gd, db, ds, dl) in images.items():
        ev.add(img_id, gb, gl, db, ds, dl, difficult=gd)
    for thr in (0.5, 0.7):
        for use_07 in (True, False):
            ref = _reference_voc(images, 4, thr, use_07)
            got = ev.voc(thr, use_07)
            for c in range(1, 5):
                if ref[c] is None:
                    assert got[c].ap is None
                else:
                    assert abs(got[c].ap - ref[c]) < 1e-9


def test_coco_metrics_agree_with_faster_coco_eval_run_directly():
    from faster_coco_eval import COCO, COCOeval_faster

    images = _random_dataset(5, n_images=30, num_classes=3)
    cat_ids = [7, 3, 11]  # non-contiguous dataset ids
    ev = Evaluator(["x", "y", "z"], category_ids=cat_ids)
    gt = {"images": [], "annotations": [], "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, "xyz")]}
    res = []
    for i, (img_id, (gb, gl, _gd, db, ds, dl)) in enumerate(images.items()):
        ev.add(img_id, gb, gl, db, ds, dl, image_size=(600, 600))
        gt["images"].append({"id": i + 1, "width": 600, "height": 600})
        for b, l in zip(gb, gl):
            w, h = b[2] - b[0], b[3] - b[1]
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": cat_ids[l - 1],
                    "bbox": [b[0], b[1], w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for b, s, l in zip(db, ds, dl):
            res.append(
                {
                    "image_id": i + 1,
                    "category_id": cat_ids[l - 1],
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "score": s,
                }
            )
    ours = ev.coco()
    coco_gt = COCO(gt)
    e = COCOeval_faster(coco_gt, coco_gt.loadRes(res), iouType="bbox")
    e.evaluate(), e.accumulate(), e.summarize()
    assert ours["AP"] == pytest.approx(e.stats[0], abs=1e-4)
    assert ours["AP50"] == pytest.approx(e.stats[1], abs=1e-4)
    assert ours["AR100"] == pytest.approx(e.stats[8], abs=1e-4)
    assert 0 < ours["AP"] < 1


def test_malformed_inputs_raise_clear_errors():
    ev = Evaluator(["a", "b"])
    with pytest.raises(ValueError, match=r"negative width or height"):
        ev.add(1, [[10, 10, 5, 20]], [1], [], [], [])
    with pytest.raises(ValueError, match=r"unknown class label 3 in detections"):
        ev.add(2, [A], [1], [A], [0.5], [3])
    with pytest.raises(ValueError, match=r"unknown class label 0 in ground truth"):
        ev.add(3, [A], [0], [], [], [])
    with pytest.raises(ValueError, match="image size must be positive"):
        ev.add(4, [A], [1], [], [], [], image_size=(-5, 10))
    ev.add(5, [A], [1], [A], [0.5], [1])
    with pytest.raises(ValueError, match="added twice"):
        ev.add(5, [A], [1], [A], [0.5], [1])
    with pytest.raises(ValueError, match="2 detection boxes, 1 scores"):
        ev.add(6, [A], [1], [A, B], [0.5], [1, 1])
    with pytest.raises(ValueError, match="category ids"):
        Evaluator(["a"], category_ids=[1, 2])


def test_coco_files_round_trip_and_mismatched_ids(tmp_path):
    gt = {
        "images": [{"id": 10, "width": 400, "height": 300}, {"id": 11, "width": 400, "height": 300}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 5, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 9, "bbox": [100, 100, 50, 60], "area": 3000, "iscrowd": 0},
        ],
        "categories": [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}, {"id": 0, "name": "empty"}],
    }
    dets = [
        {"image_id": 10, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.9},
        {"image_id": 11, "category_id": 9, "bbox": [100, 100, 50, 60], "score": 0.8},
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "det.json").write_text(json.dumps(dets))
    r = evaluate_coco_files(tmp_path / "gt.json", tmp_path / "det.json")
    assert r.map == 1.0 and r.voc[1].ap is None  # "empty" (id 0) sorts first and has no objects
    assert r.coco["AP"] == pytest.approx(1.0)
    assert math.isnan(r.coco["AP_large"])  # no object above 96x96 pixels: no value, not -1
    assert "AP_large n/a" in r.table() and r.to_dict()["coco"]["AP_large"] is None
    dets.append({"image_id": 99, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.1})
    (tmp_path / "det.json").write_text(json.dumps(dets))
    with pytest.raises(ValueError, match="image id 99 that is not in the ground truth"):
        evaluate_coco_files(tmp_path / "gt.json", tmp_path / "det.json")
    dets[-1] = {"image_id": 10, "category_id": 4, "bbox": [0, 0, 1, 1], "score": 0.1}
    (tmp_path / "det.json").write_text(json.dumps(dets))
    with pytest.raises(ValueError, match="unknown category id 4"):
        evaluate_coco_files(tmp_path / "gt.json", tmp_path / "det.json")


def test_error_breakdown_of_the_best_scored_detections_by_hand():
    # class "a": five objects and a difficult one; class "b": one object at D
    E, F, G, D = [10, 200, 50, 240], [60, 10, 90, 40], [150, 10, 190, 50], [200, 200, 240, 240]
    ev = Evaluator(["a", "b"])
    ev.add(
        1,
        [A, B, C, E, F, G, D],
        [1, 1, 1, 1, 1, 1, 2],
        [
            G,  # 0.99 on the difficult object: ignored, takes no rank
            A,  # 0.95 true positive
            [14, 10, 54, 50],  # 0.90 A again (IoU 1440/1760): duplicate
            D,  # 0.85 on the other class's object: confusion
            [100, 100, 120, 160],  # 0.80 a third of B (IoU 1200/3000 = 0.4): localization
            FAR,  # 0.75 nothing there: background
            B,
        ],  # 0.70 a true positive, but ranked sixth of five counted
        [0.99, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7],
        [1] * 7,
        difficult=[False] * 5 + [True, False],
    )
    r = ev.compute(coco=False)
    assert r.errors[1] == {
        "tp": 1,
        "duplicate": 1,
        "localization": 1,
        "confusion": 1,
        "background": 1,
        "missed": 3,
    }  # C, E and F are never found; B is found below the cut
    assert r.errors[2] == {"tp": 0, "duplicate": 0, "localization": 0, "confusion": 0, "background": 0, "missed": 1}
    assert "localization" in r.table() and r.to_dict()["per_class"]["a"]["errors"]["missed"] == 3


def test_voc_ap_function_edge_cases():
    assert voc_ap(np.array([]), np.array([])) == 0.0
    assert voc_ap(np.array([1.0]), np.array([1.0]), use_07_metric=True) == pytest.approx(1.0)


def test_report_outputs(tmp_path):
    from multibox.viz.draw import plot_pr_curves

    ev = Evaluator(["a", "b"])
    ev.add(1, [A, B], [1, 2], [A, B, C], [0.9, 0.8, 0.7], [1, 2, 2], image_size=(300, 400))
    r = ev.compute()
    r.save_json(tmp_path / "metrics.json")
    d = json.loads((tmp_path / "metrics.json").read_text())
    assert d["mAP50"] == 1.0 and d["per_class"]["b"]["num_det"] == 2
    paths = plot_pr_curves(r, tmp_path / "plots")
    assert [p.split("/")[-1] for p in paths] == ["pr_curves.png", "pr_a.png", "pr_b.png"]
    assert all((tmp_path / "plots" / p.split("/")[-1]).stat().st_size > 5000 for p in paths)
    from multibox.viz.draw import plot_errors

    plot_errors(r, tmp_path / "errors.png")
    assert (tmp_path / "errors.png").stat().st_size > 5000


# --- the two VOC conventions against transcriptions ------------------------------------------------


def _vocevaldet(gt, dets, minoverlap, use_07):
    """``VOCevaldet.m`` of the Pascal VOC devkit, transcribed line by line for one class.

    ``gt``: ``{image: (BB (K, 4), difficult (K,))}``; ``dets``: ``[(image, confidence, bb)]`` in file order.
    """
    npos = sum(int((~diff).sum()) for _, diff in gt.values())
    det = {i: np.zeros(len(bb), bool) for i, (bb, _) in gt.items()}
    si = sorted(range(len(dets)), key=lambda k: -dets[k][1])  # [sc,si]=sort(-confidence): stable
    nd = len(dets)
    tp, fp = np.zeros(nd), np.zeros(nd)
    for d in range(nd):
        i, _, bb = dets[si[d]]
        gtbb, gtdiff = gt[i]
        ovmax, jmax = -np.inf, -1
        for j in range(len(gtbb)):
            bbgt = gtbb[j]
            bi = [max(bb[0], bbgt[0]), max(bb[1], bbgt[1]), min(bb[2], bbgt[2]), min(bb[3], bbgt[3])]
            iw = bi[2] - bi[0] + 1
            ih = bi[3] - bi[1] + 1
            if iw > 0 and ih > 0:
                ua = (
                    (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                    + (bbgt[2] - bbgt[0] + 1) * (bbgt[3] - bbgt[1] + 1)
                    - iw * ih
                )
                ov = iw * ih / ua
                if ov > ovmax:
                    ovmax, jmax = ov, j
        if ovmax >= minoverlap:
            if not gtdiff[jmax]:
                if not det[i][jmax]:
                    tp[d] = 1
                    det[i][jmax] = True
                else:
                    fp[d] = 1
        else:
            fp[d] = 1
    fp, tp = np.cumsum(fp), np.cumsum(tp)
    rec = tp / npos
    with np.errstate(invalid="ignore"):
        prec = tp / (fp + tp)  # 0/0 is NaN in MATLAB too; its max() skips NaN
    if use_07:
        ap = 0.0
        for k in range(11):  # t = 0:0.1:1 (MATLAB's colon: the second half counted back from 1)
            t = k * 0.1 if k <= 5 else 1 - (10 - k) * 0.1
            p = prec[(rec >= t) & ~np.isnan(prec)]
            ap += (p.max() if len(p) else 0.0) / 11
        return ap
    mrec = np.concatenate([[0], rec, [1]])
    mpre = np.concatenate([[0], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = np.fmax(mpre[i], mpre[i + 1])
    i = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def _continuous(gt, dets, thr, use_07):
    """Today's rule, written plainly: continuous IoU, a match above the threshold."""
    npos = sum(int((~diff).sum()) for _, diff in gt.values())
    taken = {i: np.zeros(len(bb), bool) for i, (bb, _) in gt.items()}
    flags = []
    for d in sorted(range(len(dets)), key=lambda k: -dets[k][1]):
        i, _, bb = dets[d]
        gtbb, gtdiff = gt[i]
        best, jbest = -1.0, -1
        for j, g in enumerate(gtbb):
            iw = max(0.0, min(bb[2], g[2]) - max(bb[0], g[0]))
            ih = max(0.0, min(bb[3], g[3]) - max(bb[1], g[1]))
            union = (bb[2] - bb[0]) * (bb[3] - bb[1]) + (g[2] - g[0]) * (g[3] - g[1]) - iw * ih
            ov = iw * ih / union if union > 0 else 0.0
            if ov > best:
                best, jbest = ov, j
        if best > thr and gtdiff[jbest]:
            continue
        if best > thr and not taken[i][jbest]:
            taken[i][jbest] = True
            flags.append(1)
        else:
            flags.append(0)
    tp = np.cumsum(flags)
    fp = np.cumsum(1 - np.array(flags))
    rec = tp / npos
    prec = tp / np.maximum(tp + fp, np.finfo(float).eps)
    return voc_ap(rec, prec, use_07)


def _near_half_corpus(seed, n_images=30):
    """Integer boxes, many of them small and shifted by a pixel or two, so that lots of overlaps
    sit near 0.5 (where the two conventions part); difficult objects; tied scores."""
    rng = np.random.default_rng(seed)
    images = {}
    for i in range(n_images):
        k = int(rng.integers(0, 6))
        xy = rng.integers(0, 60, (k, 2))
        wh = rng.integers(2, 14, (k, 2))
        gb = np.concatenate([xy, xy + wh], 1).astype(float)
        gl = rng.integers(1, 3, k)
        gd = rng.random(k) < 0.15
        dets = []
        for b, c in zip(gb, gl):
            for _ in range(int(rng.integers(0, 4))):
                dets.append((b + rng.integers(-3, 4, 4), c if rng.random() < 0.9 else 3 - c))
        for _ in range(int(rng.integers(0, 3))):
            p = rng.integers(0, 60, 2)
            dets.append((np.concatenate([p, p + rng.integers(2, 14, 2)]).astype(float), int(rng.integers(1, 3))))
        db = np.array([b for b, _ in dets], float).reshape(-1, 4)
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2])  # no negative widths
        dl = np.array([c for _, c in dets], np.int64)
        ds = np.round(rng.random(len(dets)), 1)  # tied scores
        images[f"im{i}"] = (gb, gl, gd, db, ds, dl)
    return images


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("use_07", [True, False])
def test_devkit_and_continuous_conventions_equal_their_transcriptions(seed, use_07):
    images = _near_half_corpus(seed)
    evs = {c: Evaluator(["a", "b"], voc_convention=c) for c in ("devkit", "continuous")}
    for img, (gb, gl, gd, db, ds, dl) in images.items():
        for ev in evs.values():
            ev.add(img, gb, gl, db, ds, dl, difficult=gd)
    differ = 0
    for label in (1, 2):
        gt = {img: (v[0][v[1] == label], v[2][v[1] == label]) for img, v in images.items()}
        dets = [(img, s, b) for img, v in images.items() for b, s, c in zip(v[3], v[4], v[5]) if c == label]
        want_dev, want_cont = _vocevaldet(gt, dets, 0.5, use_07), _continuous(gt, dets, 0.5, use_07)
        got_dev = evs["devkit"].voc(0.5, use_07)[label].ap
        got_cont = evs["continuous"].voc(0.5, use_07)[label].ap
        assert abs(got_dev - want_dev) <= 1e-12 and abs(got_cont - want_cont) <= 1e-12
        differ += abs(want_dev - want_cont) > 1e-6
    assert differ  # the corpus does tell the conventions apart


def test_report_names_its_convention():
    ev = Evaluator(["a"], voc_convention="devkit")
    ev.add("x", [[0, 0, 9, 9]], [1], [[0, 0, 9, 9]], [0.9], [1])
    report = ev.compute(coco=False)
    assert "devkit (VOCevaldet.m" in report.table() and report.to_dict()["voc_convention"] == "devkit"
    with pytest.raises(ValueError, match="voc_convention must be one of"):
        Evaluator(["a"], voc_convention="matlab")
