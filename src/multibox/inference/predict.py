"""Prediction over files: images, folders, globs and videos, written out for people and programs.

    summary = predict_files(detector, ["photos/", "clip.mp4"], "runs/predict", conf=0.25)

For every input image ``out_dir`` gets exactly one result: ``images/<name>.jpg`` with
the boxes drawn, ``labels/<name>.txt`` (one ``class score x1 y1 x2 y2`` line per
detection, empty when there is none) and its entries in ``detections.json`` (the
COCO results format; ``images.json`` maps its ``image_id`` to the file). A video
becomes ``<name>.mp4`` with boxes drawn on every frame (its frames are images
``<name>#<frame>`` in the JSON). Unreadable files are listed in ``failed.txt`` and
skipped; ``summary.json`` counts detections per class. Images are streamed in
batches (read ahead on a thread), so memory does not grow with the number of files.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..data.image import IMAGE_EXTENSIONS, ImageReadError, image_size, read_image
from ..viz.draw import draw_boxes, save_image
from .annotate import AnnotationWriter
from .images import reading_limit

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")


@dataclass
class PredictSummary:
    images: int = 0
    detections: int = 0
    per_class: Counter = field(default_factory=Counter)
    failed: list[tuple[str, str]] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = [
            f"{self.images} images, {self.detections} detections"
            + (f", {len(self.failed)} unreadable (see failed.txt)" if self.failed else "")
        ]
        for name, n in sorted(self.per_class.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {name:<24} {n:>7}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "detections": self.detections,
            "per_class": dict(self.per_class),
            "failed": [{"file": f, "error": e} for f, e in self.failed],
            "videos": self.videos,
        }


def expand_sources(sources: Sequence[str]) -> tuple[list[str], list[str]]:
    """Files, folders (searched recursively) and glob patterns -> ``(images, videos)``, sorted.
    A source that matches nothing is an error naming it."""
    images: list[str] = []
    videos: list[str] = []

    def add(path: str) -> None:
        ext = os.path.splitext(path)[1].lower()
        (videos if ext in VIDEO_EXTENSIONS else images).append(path)

    for src in sources:
        src = os.fspath(src)
        kind = source_kind(src)
        if kind == "image-url":
            images.append(src)
            continue
        if kind in ("camera", "stream"):
            videos.append(src)
            continue
        if os.path.isdir(src):
            found = sorted(
                os.path.join(root, f)
                for root, _, files in os.walk(src)
                for f in files
                if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
            )
            if not found:
                raise FileNotFoundError(f"{src}: folder has no images or videos")
            for f in found:
                add(f)
        elif os.path.isfile(src):
            add(src)  # a named file is always attempted, whatever its extension
        elif glob.has_magic(src):
            found = sorted(f for f in glob.glob(src, recursive=True) if os.path.isfile(f))
            if not found:
                raise FileNotFoundError(f"{src}: pattern matches no files")
            for f in found:
                add(f)
        else:
            raise FileNotFoundError(f"{src}: no such file, folder or pattern")
    return images, videos


STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
TIMEOUT_S = 10.0  # opening a stream or URL, and waiting for one frame of a stream


def source_kind(src: str) -> str:
    """``"camera"`` (a device index such as ``0``, when no file of that name exists),
    ``"image-url"`` (http(s) URL of an image file), ``"stream"`` (any other URL: RTSP, RTMP,
    HTTP video or MJPEG), else ``"path"``."""
    if src.isdigit() and not os.path.exists(src):
        return "camera"
    low = src.lower()
    if low.startswith(STREAM_SCHEMES):
        path = low.split("?", 1)[0].split("#", 1)[0]
        is_image = path.startswith(("http://", "https://")) and path.endswith(IMAGE_EXTENSIONS)
        return "image-url" if is_image else "stream"
    return "path"


def read_url_image(
    url: str, max_side: int | None = None, timeout: float = TIMEOUT_S
) -> tuple[np.ndarray, tuple[int, int]]:
    """An image fetched from an http(s) URL (bounded by ``timeout``): ``(RGB array, reduced to
    max_side if larger; (height, width) as fetched)``."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read(512 * 2**20 + 1)
    except Exception as e:
        raise ImageReadError(f"{url}: could not fetch ({type(e).__name__}: {e})") from None
    if len(data) > 512 * 2**20:
        raise ImageReadError(f"{url}: larger than 512 MB")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageReadError(f"{url}: not a decodable image")
    full = tuple(bgr.shape[:2])
    if max_side is not None and max(bgr.shape[:2]) > max_side:
        scale = max_side / max(bgr.shape[:2])
        size = (max(1, round(bgr.shape[1] * scale)), max(1, round(bgr.shape[0] * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), full


def _unique_name(path: str, used: set[str]) -> str:
    kind = source_kind(path)
    if kind == "camera":
        path = f"camera{path}"
    elif kind != "path":
        path = path.split("?", 1)[0].rstrip("/")
    stem = os.path.splitext(os.path.basename(path))[0] or "image"
    name, i = stem, 1
    while name in used:
        name = f"{stem}_{i}"
        i += 1
    used.add(name)
    return name


def _read(path: str, max_side: int | None) -> tuple[str, np.ndarray | None, str | None, tuple[int, int] | None]:
    """``(path, RGB array (reduced to max_side if larger), error, (h, w) of the file)``."""
    try:
        if source_kind(path) == "image-url":
            image, full = read_url_image(path, max_side)
            return path, image, None, full
        return path, read_image(path, max_side=max_side), None, image_size(path)
    except (ImageReadError, OSError, ValueError) as e:
        return path, None, str(e), None


def _batches(paths: Sequence[str], batch_size: int, max_side: int | None = None) -> Iterator[list[tuple]]:
    """Read images a batch ahead on a worker thread (decoding releases the GIL)."""
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]

    def read(chunk: Sequence[str]) -> list[tuple]:
        return [_read(p, max_side) for p in chunk]

    with ThreadPoolExecutor(max_workers=2) as pool:
        pending = pool.map(read, chunks[:1])
        for i in range(len(chunks)):
            current = list(pending)[0]
            if i + 1 < len(chunks):
                pending = pool.map(read, chunks[i + 1 : i + 2])
            yield current


class _JsonArrayWriter:
    """Writes a JSON list one item at a time, so results never pile up in memory."""

    def __init__(self, path: str) -> None:
        self.f = open(path, "w")
        self.f.write("[")
        self.first = True

    def write(self, item: dict) -> None:
        self.f.write(("\n" if self.first else ",\n") + json.dumps(item))
        self.first = False

    def close(self) -> None:
        self.f.write("\n]\n")
        self.f.close()


def _labels_text(pred) -> str:
    return "".join(
        f"{n.replace(' ', '_')} {s:.4f} {b[0]:.1f} {b[1]:.1f} {b[2]:.1f} {b[3]:.1f}\n"
        for n, s, b in zip(pred.names, pred.scores, pred.boxes)
    )


def predict_files(
    detector,
    sources: Sequence[str],
    out_dir: str,
    conf: float = 0.25,
    iou: float | None = None,
    max_det: int | None = None,
    batch_size: int = 8,
    draw: bool = True,
    save_txt: bool = True,
    progress: bool = True,
    save_format: Sequence[str] = (),
) -> PredictSummary:
    """Run ``detector`` (a :class:`~multibox.Detector` or :class:`~multibox.export.OnnxDetector`)
    over ``sources`` and write the results described in the module docstring to ``out_dir``;
    ``save_format`` adds annotation files for labelling tools (``yolo``, ``voc``, ``coco``:
    :mod:`multibox.inference.annotate`)."""
    from tqdm import tqdm

    image_paths, video_paths = expand_sources(sources)
    os.makedirs(out_dir, exist_ok=True)
    img_dir, txt_dir = os.path.join(out_dir, "images"), os.path.join(out_dir, "labels")
    if draw:
        os.makedirs(img_dir, exist_ok=True)
    if save_txt:
        os.makedirs(txt_dir, exist_ok=True)
    names = detector.class_names
    summary = PredictSummary()
    used: set[str] = set()
    dets = _JsonArrayWriter(os.path.join(out_dir, "detections.json"))
    image_entries: list[dict] = []
    writers = [AnnotationWriter(fmt, out_dir, names) for fmt in dict.fromkeys(save_format)]

    def record(pred, name: str, source: str, image: np.ndarray | None, full_size=None, ext: str = ".jpg") -> None:
        """Write one image's results; ``pred`` is in pixels of ``image`` (drawn as it is), and the
        files get them in pixels of the full-size file (``full_size``) when it was read reduced."""
        drawn = pred
        if full_size is not None and tuple(full_size) != tuple(pred.image_size):
            pred = pred.rescaled(full_size)
        image_id = len(image_entries) + 1
        h, w = pred.image_size
        image_entries.append({"id": image_id, "file_name": source, "width": w, "height": h})
        for entry in pred.to_coco(image_id):
            dets.write(entry)
        summary.images += 1
        summary.detections += len(pred)
        summary.per_class.update(pred.names)
        if save_txt:
            with open(os.path.join(txt_dir, f"{name}.txt"), "w") as f:
                f.write(_labels_text(pred))
        for writer in writers:
            writer.add(pred, name + ext)
        if draw and image is not None:
            save_image(
                os.path.join(img_dir, f"{name}.jpg"), draw_boxes(image, drawn.boxes, drawn.labels, names, drawn.scores)
            )

    try:
        bar = tqdm(total=len(image_paths), desc="predict", unit="img", disable=not progress or not image_paths)
        limit = reading_limit(detector.input_size) if hasattr(detector, "input_size") else None
        for batch in _batches(image_paths, batch_size, limit):  # huge files read reduced: memory stays bounded
            ok = [(p, im, full) for p, im, err, full in batch if im is not None]
            for p, _, err, _ in batch:
                if err is not None:
                    summary.failed.append((p, err))
            preds = (
                detector.predict([im for _, im, _ in ok], conf=conf, iou=iou, max_det=max_det, batch_size=batch_size)
                if ok
                else []
            )
            for (p, im, full), pred in zip(ok, preds):
                pred.source = p
                ext = os.path.splitext(p.split("?", 1)[0])[1] or ".jpg"
                record(pred, _unique_name(p, used), p, im, full, ext)
            bar.update(len(batch))
            bar.set_postfix(detections=summary.detections, failed=len(summary.failed))
        bar.close()
        for v in video_paths:
            try:
                _predict_video(
                    detector, v, out_dir, _unique_name(v, used), conf, iou, max_det, batch_size, record, progress
                )
                summary.videos.append(v)
            except ImageReadError as e:
                summary.failed.append((v, str(e)))
    finally:
        dets.close()
        for writer in writers:
            writer.close()
        with open(os.path.join(out_dir, "images.json"), "w") as f:
            json.dump(
                {"images": image_entries, "categories": [{"id": i, "name": n} for i, n in enumerate(names, start=1)]}, f
            )
        with open(os.path.join(out_dir, "summary.json"), "w") as f:
            json.dump(summary.to_dict(), f, indent=2)
        with open(os.path.join(out_dir, "failed.txt"), "w") as f:
            f.write("".join(f"{p}\t{e}\n" for p, e in summary.failed))
    return summary


def open_capture(src: str, timeout: float = TIMEOUT_S) -> cv2.VideoCapture:
    """An opened ``cv2.VideoCapture`` for a video file, camera index or stream URL; opening and
    each read of a stream are bounded by ``timeout`` seconds. A source that cannot be opened is
    an :class:`ImageReadError` naming it."""
    kind = source_kind(src)
    ms = int(timeout * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    if kind == "camera":
        cap = cv2.VideoCapture(int(src), cv2.CAP_ANY, params)
        what = f"camera {src}: cannot open (no such device, or it is in use)"
    elif kind == "stream":
        cap = cv2.VideoCapture(src, cv2.CAP_FFMPEG, params)
        what = f"{src}: cannot open the stream (unreachable, or not a video) within {timeout:.0f} s"
    else:
        cap = cv2.VideoCapture(src)
        what = f"{src}: cannot open as a video"
    if not cap.isOpened():
        cap.release()
        raise ImageReadError(what)
    return cap


def _predict_video(detector, path, out_dir, name, conf, iou, max_det, batch_size, record, progress) -> None:
    from tqdm import tqdm

    cap = open_capture(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    bar = tqdm(total=total, desc=os.path.basename(path), unit="frame", disable=not progress)
    frame_no = 0
    live = source_kind(path) in ("camera", "stream")
    try:
        while True:
            frames = []
            try:
                while len(frames) < (1 if live else batch_size):  # live: each frame as it comes
                    ok, bgr = cap.read()
                    if not ok:
                        break
                    frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            except KeyboardInterrupt:
                if not live:
                    raise
                log.info(f"{path}: stopped by Ctrl-C after {frame_no} frames; what was written is kept")
                break
            if not frames:
                break
            preds = detector.predict(frames, conf=conf, iou=iou, max_det=max_det, batch_size=batch_size)
            for rgb, pred in zip(frames, preds):
                frame_no += 1
                source = f"{path}#{frame_no}"
                pred.source = source
                record(pred, f"{name}_{frame_no:06d}", source, None)
                drawn = draw_boxes(rgb, pred.boxes, pred.labels, detector.class_names, pred.scores)
                if writer is None:
                    h, w = rgb.shape[:2]
                    writer = cv2.VideoWriter(
                        os.path.join(out_dir, f"{name}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h)
                    )
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
            bar.update(len(frames))
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        bar.close()
    if frame_no == 0:
        raise ImageReadError(f"{path}: no frames could be read")
