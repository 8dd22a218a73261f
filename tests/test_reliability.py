"""Reliability: a corpus of bad inputs (made here, never committed), fuzzing of the box
pipeline, SIGKILL during training and checkpoint writing, hostile files, many images."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import logs_warning, make_checkpoint, shapes_image, voc_xml, write_coco
from multibox.core.boxes import box_iou
from multibox.core.losses import FocalLoss, MultiBoxLoss
from multibox.core.matching import match_priors
from multibox.core.postprocess import postprocess
from multibox.core.priors import make_priors, ssd_feature_maps
from multibox.data.base import DatasetError
from multibox.data.coco import coco_dataset
from multibox.data.image import ImageReadError, read_image
from multibox.data.transforms import SSDTransform, collate
from multibox.data.voc import voc_dataset
from multibox.inference.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the bad-input corpus -----------------------------------------------------------------


def jpeg_bytes(rng, w=120, h=90, **save):
    b = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(b, "JPEG", **save)
    return b.getvalue()


def write_image_corpus(folder):
    """Every awkward image file; returns {name: expected behaviour}."""
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    data = jpeg_bytes(rng)
    open(os.path.join(folder, "zero.jpg"), "wb").close()
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])
    with open(os.path.join(folder, "text.jpg"), "w") as f:
        f.write("this is not an image\n")
    rgb = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, np.full((90, 120), 100, np.uint8)])).save(os.path.join(folder, "alpha.png"))
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(os.path.join(folder, "deep16.png"))
    Image.fromarray(rgb[..., 0]).save(os.path.join(folder, "gray.jpg"))
    Image.fromarray(rgb).convert("CMYK").save(os.path.join(folder, "cmyk.jpg"))
    img = Image.fromarray(rng.integers(0, 255, (120, 90, 3), dtype=np.uint8))  # stored 90 wide, 120 tall
    exif = img.getexif()
    exif[0x0112] = 6  # shown rotated: 120 wide, 90 tall
    img.save(os.path.join(folder, "exif.jpg"), exif=exif.tobytes())
    # a decompression bomb: a PNG whose header claims 40000 x 40000 pixels
    Image.new("1", (40000, 40000)).save(os.path.join(folder, "bomb.png"))
    return {
        "zero.jpg": "error: image file is empty",
        "truncated.jpg": "error: could not decode image",
        "text.jpg": "error: not a readable image",
        "alpha.png": "RGB, alpha dropped",
        "deep16.png": "RGB, scaled to 8 bits",
        "gray.jpg": "RGB",
        "cmyk.jpg": "RGB",
        "exif.jpg": "RGB, rotated upright",
        "bomb.png": "error: decompression bomb",
    }


def test_image_corpus_each_case_has_its_defined_behaviour(tmp_path):
    expected = write_image_corpus(tmp_path)
    for name, behaviour in expected.items():
        path = str(tmp_path / name)
        if behaviour.startswith("error: "):
            with pytest.raises(ImageReadError) as e:
                read_image(path)
            assert name in str(e.value) and behaviour[len("error: ") :] in str(e.value), (name, str(e.value))
        else:
            im = read_image(path)
            assert im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3, name
            assert im.shape[:2] == ((90, 120)), (name, im.shape)


def annotated_corpus(root):
    """A VOC dataset mixing good images, awkward-but-valid images and broken files/annotations."""
    rng = np.random.default_rng(1)
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    ids = []

    def add(stem, image_file, objects, size=(120, 90)):
        with open(os.path.join(root, "Annotations", stem + ".xml"), "w") as f:
            f.write(voc_xml(image_file, size[0], size[1], objects))
        ids.append(stem)

    for i in range(4):
        im, boxes, classes = shapes_image(rng, 120, 90)
        Image.fromarray(im).save(os.path.join(root, "JPEGImages", f"good{i}.jpg"))
        add(
            f"good{i}",
            f"good{i}.jpg",
            [(["red", "green", "blue", "yellow"][c], b.astype(int).tolist(), False) for b, c in zip(boxes, classes)],
        )
    corpus = os.path.join(root, "corpus")
    write_image_corpus(corpus)
    for name in ("alpha.png", "deep16.png", "gray.jpg", "cmyk.jpg", "exif.jpg", "truncated.jpg"):
        os.replace(os.path.join(corpus, name), os.path.join(root, "JPEGImages", name))
        add(os.path.splitext(name)[0], name, [("red", [10, 10, 60, 50], False)])
    # box problems: negative / out-of-image (clipped), reversed and zero-area (dropped, counted)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(
        os.path.join(root, "JPEGImages", "boxes.jpg")
    )
    add(
        "boxes",
        "boxes.jpg",
        [
            ("red", [-20, -5, 40, 30], False),
            ("green", [100, 60, 400, 300], False),
            ("blue", [80, 10, 20, 40], False),
            ("yellow", [5, 5, 5, 40], False),
            ("octopus", [10, 10, 30, 30], False),
        ],
    )
    with open(os.path.join(root, "ImageSets", "Main", "train.txt"), "w") as f:
        f.write("\n".join(ids) + "\n")
    return root


def test_annotated_corpus_trains_with_finite_loss_and_counted_warnings(tmp_path):
    root = annotated_corpus(str(tmp_path / "voc"))
    names = ["red", "green", "blue", "yellow"]
    with logs_warning("degenerate") as caught:
        ds = voc_dataset(root, "train", names)
    text = " ".join(r.getMessage() for r in caught)
    assert "dropped 2 degenerate box" in text and "boxes.jpg" in text  # reversed + zero width
    assert "octopus" in text  # unknown class: ignored and counted
    r = next(r for r in ds.records if r.image_path.endswith("boxes.jpg"))
    assert r.boxes.tolist() == [[0, 0, 40, 30], [100, 60, 120, 90]]  # clipped to the 120x90 image
    # the truncated JPEG passes the header check and fails at decode: named error by default ...
    idx = next(i for i, r in enumerate(ds.records) if r.image_path.endswith("truncated.jpg"))
    with pytest.raises(ImageReadError, match="truncated.jpg"):
        ds[idx]
    # ... or, with skip_bad, replaced by the next readable image and warned about
    ds.skip_bad = True
    train = ds.with_transform(SSDTransform((128, 128), train=True, seed=0))
    with logs_warning(r"skipped an unreadable image.*truncated.jpg"):
        samples = [train[i] for i in range(len(train))]
    batch = collate(samples)
    assert batch["images"].shape == (len(ds), 3, 128, 128)
    from multibox.models import create_model

    model = create_model(
        "ssdlite_effl0",
        num_classes=4,
        pretrained_backbone=False,
        image_size=128,
        feature_strides=[16, 32],
        extra_channels=[128, 64],
    )
    loc, logits = model(batch["images"].float())
    out = MultiBoxLoss(model.priors)(loc, logits, batch["boxes"], batch["labels"])
    assert torch.isfinite(out.loss) and out.num_positives > 0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_voc_annotation_corpus_errors_name_file_and_problem(tmp_path):
    root = annotated_corpus(str(tmp_path / "voc"))
    ann = os.path.join(root, "Annotations", "good0.xml")
    cases = [
        ("<annotation><object><name>red</name></object></annotation>", r"good0.xml: object 0 \(red\) has no <bndbox>"),
        (voc_xml("good0.jpg", 120, 90, [("red", ["1e", 2, 3, 4], False)]), r"good0.xml: .*non-numeric <xmin>"),
        ("<annotation><object>", r"good0.xml: malformed XML"),
    ]
    for text, message in cases:
        with open(ann, "w") as f:
            f.write(text)
        with pytest.raises(DatasetError, match=message):
            voc_dataset(root, "train", ["red", "green", "blue", "yellow"])
        with logs_warning(r"skipped 1 unreadable or malformed file.*good0.xml"):
            voc_dataset(root, "train", ["red", "green", "blue", "yellow"], skip_bad=True)


def test_coco_corpus(tmp_path):
    for i in (1, 2):
        Image.new("RGB", (100, 80)).save(tmp_path / f"{i}.jpg")
    images = [
        {"id": 1, "file_name": "1.jpg", "width": 100, "height": 80},
        {"id": 2, "file_name": "2.jpg", "width": 100, "height": 80},
    ]
    cats = [{"id": 5, "name": "a"}]
    good = {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20]}
    cases = [
        (
            [good, {"id": 2, "image_id": 9, "category_id": 5, "bbox": [1, 1, 5, 5]}],
            images,
            r"image id\(s\) \[9\] missing",
        ),
        ([good, {"id": 2, "image_id": 1, "category_id": 8, "bbox": [1, 1, 5, 5]}], images, "unknown category id 8"),
        ([good, dict(good)], images, "duplicate annotation id"),
        ([good], images + [dict(images[0])], "duplicate image id"),
    ]
    for anns, imgs, message in cases:
        write_coco(tmp_path / "ann.json", imgs, anns, cats)
        with pytest.raises(DatasetError, match=message) as e:
            coco_dataset(str(tmp_path / "ann.json"))
        assert "ann.json" in str(e.value)
    write_coco(
        tmp_path / "ann.json", images, [good, {"id": 2, "image_id": 2, "category_id": 5, "bbox": [5, 5, 0, 9]}], cats
    )
    with logs_warning(r"dropped 1 degenerate box.*2.jpg"):
        ds = coco_dataset(str(tmp_path / "ann.json"))
    assert len(ds.records[1].labels) == 0


# --- fuzzing the box pipeline ---------------------------------------------------------------

PRIORS = make_priors(ssd_feature_maps([8, 4, 2, 1], [0.1, 0.3, 0.5, 0.7, 0.9], [[2], [2, 3], [2], [2]]))

box = st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(1e-4, 1), st.floats(1e-4, 1)).map(
    lambda t: [t[0] * (1 - t[2]), t[1] * (1 - t[3]), t[0] * (1 - t[2]) + t[2], t[1] * (1 - t[3]) + t[3]]
)
image_targets = st.lists(st.tuples(box, st.integers(1, 3)), min_size=0, max_size=25).flatmap(
    lambda objs: st.just(objs + objs[:2])
)  # duplicates of the first two boxes, when there are any


@settings(max_examples=60, deadline=None)
@given(st.lists(image_targets, min_size=1, max_size=3), st.integers(0, 2**31 - 1))
def test_fuzz_matching_and_losses_stay_finite(targets, seed):
    n = len(targets)
    m = max(1, max(len(t) for t in targets))
    boxes = torch.zeros(n, m, 4)
    labels = torch.zeros(n, m, dtype=torch.long)
    for i, t in enumerate(targets):
        for j, (b, c) in enumerate(t):
            boxes[i, j], labels[i, j] = torch.tensor(b), c
    matches = match_priors(boxes, labels, PRIORS)
    for i, t in enumerate(targets):  # every object keeps at least one prior, unless a later duplicate took it
        assert (matches.labels[i] > 0).sum() >= min(1, len(t))
        assert ((matches.object_index[i] >= 0) == (matches.labels[i] > 0)).all()
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(n, PRIORS.shape[0], 4, generator=g, requires_grad=True)
    logits = torch.randn(n, PRIORS.shape[0], 4, generator=g, requires_grad=True)
    for fn, lg in ((MultiBoxLoss(PRIORS), logits), (FocalLoss(PRIORS), logits[..., 1:])):
        out = fn(loc, lg, boxes, labels)
        assert torch.isfinite(out.loss) and out.loss >= 0
        grad = torch.autograd.grad(out.loss, (loc, logits), allow_unused=True)
        assert all(gr is None or torch.isfinite(gr).all() for gr in grad)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 3),
    st.floats(0.0, 8.0),
    st.floats(0.1, 0.9),
    st.integers(1, 50),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["softmax", "sigmoid"]),
)
def test_fuzz_postprocess_invariants(n, spread, iou_t, max_det, seed, score_type):
    g = torch.Generator().manual_seed(seed)
    p = PRIORS.shape[0]
    loc = torch.randn(n, p, 4, generator=g) * spread  # up to absurd offsets (clamped decode)
    logits = torch.randn(n, p, 4 if score_type == "softmax" else 3, generator=g) * spread
    sizes = torch.randint(20, 2000, (n, 2), generator=g).float()
    det = postprocess(
        loc, logits, PRIORS, score_type=score_type, iou_threshold=iou_t, max_detections=max_det, image_sizes=sizes
    )
    for i in range(n):
        k = int(det.num[i])
        assert k <= max_det
        b, s, lab = det.boxes[i, :k], det.scores[i, :k], det.labels[i, :k]
        assert torch.isfinite(b).all() and (s > 0.01).all() and (s <= 1).all()
        assert (s[:-1] >= s[1:]).all()  # sorted
        h, w = sizes[i].tolist()
        assert (
            (b[:, 0] >= 0).all()
            and (b[:, 1] >= 0).all()
            and (b[:, 2] <= w + 1e-3).all()
            and (b[:, 3] <= h + 1e-3).all()
        )
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert ((lab >= 1) & (lab <= 3)).all()
        for c in lab.unique():
            bc = b[lab == c]
            iou = box_iou(bc, bc)
            iou.fill_diagonal_(0)
            assert (iou <= iou_t + 1e-5).all()
        assert (det.scores[i, k:] == 0).all() and (det.labels[i, k:] == 0).all()


# --- crash safety: SIGKILL during training and during checkpoint writes --------------------

RUNNER = textwrap.dedent("""
    import os, sys, time, torch
    sys.path.insert(0, {tests!r})
    from multibox.config import load_config
    from multibox.inference import checkpoint
    from multibox.engine import trainer
    from multibox.engine.trainer import Trainer

    real_save = torch.save
    def slow_save(obj, f, *a, **k):  # a slow disk: the kill can land mid-write
        print("save-begin", flush=True)
        real_save(obj, f, *a, **k)
        time.sleep(0.5)
    checkpoint.torch.save = slow_save

    cfg = load_config(None, {overrides!r})
    tr = Trainer(cfg, progress=False)
    last = os.path.join(cfg.out_dir, "last.pt")
    if os.path.exists(last):
        tr.resume(last)
    real_step = tr.train_step
    def step(batch):
        r = real_step(batch)
        print("step", tr.step, flush=True)
        return r
    tr.train_step = step
    tr.fit()
    print("done", flush=True)
""")


def tiny_overrides(root, out, epochs):
    kw = "{image_size: 128, feature_strides: [16, 32], extra_channels: [128, 64], pretrained_backbone: false}"
    return [
        f"data.root={root}",
        "data.val=null",
        "data.test=null",
        "data.workers=0",
        "model.name=ssdlite_effl0",
        f"model.kwargs={kw}",
        "train.batch_size=4",
        f"train.epochs={epochs}",
        "train.lr=0.01",
        "train.warmup_iters=2",
        "train.eval_every=0",
        "train.threads=2",
        f"out_dir={out}",
    ]


def run_until(script, predicate):
    """Run ``script``; SIGKILL it at the first stdout line for which ``predicate`` is true."""
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    killed = False
    for line in proc.stdout:
        if predicate(line.strip()):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
    proc.wait()
    return killed, proc.returncode


def test_sigkill_at_random_points_never_loses_the_checkpoint(tmp_path):
    from helpers import make_voc
    from multibox.config import load_config
    from multibox.engine.trainer import Trainer

    root = make_voc(str(tmp_path / "voc"), n=8)
    epochs = 4  # 2 steps per epoch
    full = Trainer(load_config(None, tiny_overrides(root, tmp_path / "full", epochs)), progress=False)
    full.fit()

    out = tmp_path / "killed"
    script = RUNNER.format(tests=os.path.dirname(__file__), overrides=tiny_overrides(root, out, epochs))
    rng = np.random.default_rng(0)

    def nth(prefix, n):
        """Kill at the n-th stdout line starting with ``prefix`` (counted within one process)."""
        seen = {"k": 0}

        def hit(line):
            seen["k"] += line.startswith(prefix)
            return line.startswith(prefix) and seen["k"] == n

        return hit

    plans = [
        nth("step", int(rng.integers(1, 3))),  # mid-epoch, before any checkpoint exists
        nth("save-begin", 2),  # while epoch 2's checkpoint is being written (epoch 1's exists)
        nth("step", int(rng.integers(1, 4))),  # a random step after resuming
        nth("save-begin", 1),  # during the next checkpoint write
    ]
    epochs_seen = []
    for plan in plans:
        killed, rc = run_until(script, plan)
        assert killed and rc == -signal.SIGKILL
        last = out / "last.pt"
        if last.exists():  # the newest checkpoint always loads completely
            epochs_seen.append(load_checkpoint(last)["epoch"])
    assert epochs_seen and epochs_seen == sorted(epochs_seen) and epochs_seen[-1] < epochs
    killed, rc = run_until(script, lambda line: False)
    assert rc == 0 and not killed
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]  # stale partial writes cleaned up
    resumed = load_checkpoint(out / "last.pt")
    ref = full.model.state_dict()
    assert resumed["epoch"] == epochs
    assert all(torch.equal(ref[k], resumed["model"][k]) for k in ref)


# --- hostile files --------------------------------------------------------------------------


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {}, "model_name": "ssd300_vgg16", "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil.pt: refused to load.*arbitrary code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_annotation_paths_cannot_escape_the_dataset_root(tmp_path):
    from helpers import make_voc

    root = make_voc(str(tmp_path / "voc"), n=2)
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (10, 10)).save(secret)
    with open(os.path.join(root, "Annotations", "img000.xml"), "w") as f:
        f.write(voc_xml("../../secret.jpg", 10, 10, [("red", [1, 1, 5, 5], False)]))
    ds = voc_dataset(root, "train")  # VOC: the image is JPEGImages/<id>.jpg whatever <filename> says
    assert all(os.path.realpath(r.image_path).startswith(os.path.realpath(root)) for r in ds.records)
    write_coco(
        tmp_path / "voc" / "ann.json",
        [{"id": 1, "file_name": "../secret.jpg", "width": 10, "height": 10}],
        [],
        [{"id": 1, "name": "a"}],
    )
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        coco_dataset(str(tmp_path / "voc" / "ann.json"))


# --- load: many images of mixed sizes through multibox predict --------------------------------


def predict_peak_mb(ckpt, folder, out, *options) -> float:
    """``multibox predict CKPT FOLDER --out OUT OPTIONS`` in a fresh process; its peak resident
    memory in MB (VmHWM: the process's own peak; ru_maxrss would include the parent's at fork)."""
    argv = ["predict", str(ckpt), str(folder), "--out", str(out), *options]
    script = textwrap.dedent(f"""
        import sys
        from multibox.cli import main
        rc = main({argv!r})
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
        print("PEAK_RSS_MB", int(hwm) / 1024)
        sys.exit(rc)
    """)
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    peak = float(res.stdout.split("PEAK_RSS_MB")[1].split()[0])
    print(f"peak RSS {peak:.0f} MB")
    return peak


def test_predict_1000_images_bounded_memory_one_result_each(tmp_path):
    """Runs ``multibox predict`` in a subprocess over 1,000 generated images (mixed sizes, a few
    unreadable) and reads its peak resident memory; see docs/reliability.md for the figure."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "many"
    folder.mkdir()
    bad = {17, 444, 901}
    for i in range(1000):
        name = folder / f"im{i:04d}.jpg"
        if i in bad:
            name.write_bytes(b"\xff\xd8garbage")
            continue
        w, h = int(rng.integers(32, 900)), int(rng.integers(32, 700))
        Image.fromarray(np.full((h, w, 3), (i * 37) % 255, np.uint8)).save(name, quality=60)
    ckpt = make_checkpoint(tmp_path / "m.pt")
    peak = predict_peak_mb(ckpt, folder, tmp_path / "out", "--conf", "0.5", "--batch-size", "16")
    assert peak < 1500
    out = tmp_path / "out"
    assert len(os.listdir(out / "labels")) == 997 and len(os.listdir(out / "images")) == 997
    meta = json.loads((out / "images.json").read_text())
    assert len(meta["images"]) == 997
    failed = (out / "failed.txt").read_text().splitlines()
    assert sorted(os.path.basename(line.split("\t")[0]) for line in failed) == [f"im{i:04d}.jpg" for i in sorted(bad)]


def test_predict_huge_pngs_stays_under_its_memory_bound(tmp_path):
    """Two 12000 x 12000 PNGs (a few hundred KB each, 432 MB each once decoded) at batch 2: each
    is decoded once and reduced before the next is read, so the peak stays near one decoded
    image above the process's own size (figures in docs/reliability.md)."""
    folder = tmp_path / "huge"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (12000, 12000), (10 + 40 * i, 200, 30)).save(folder / f"big{i}.png")
    ckpt = make_checkpoint(tmp_path / "m.pt", image_size=320)
    peak = predict_peak_mb(ckpt, folder, tmp_path / "out", "--batch-size", "2")
    assert peak < 1200  # before reduced reading: 3.2 GB for four such images at batch 4
    meta = json.loads((tmp_path / "out" / "images.json").read_text())
    assert [(m["width"], m["height"]) for m in meta["images"]] == [(12000, 12000)] * 2
    drawn = Image.open(tmp_path / "out" / "images" / "big0.jpg")
    assert max(drawn.size) <= 2048  # the picture is drawn on the reduced image
