"""`python -m deim_edge predict MODEL SOURCE...`: images, folders and videos in; annotated copies
and a JSON of detections out."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from .detector import Detector
from .errors import ImageError
from .fileio import atomic_path
from .progress import Progress

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def expand_sources(sources: list[str]) -> list[Path]:
    """Files as given; folders replaced by the images and videos inside them, sorted."""
    paths: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            inside = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not inside:
                raise ImageError(f"folder {source} holds no images or videos ({', '.join(sorted(IMAGE_SUFFIXES))}, "
                                 f"{', '.join(sorted(VIDEO_SUFFIXES))})")
            paths.extend(inside)
        elif source.is_file():
            paths.append(source)
        else:
            raise ImageError(f"not found: {source}")
    return paths


def predict(detector: Detector, sources: list[str], save: str | Path | None = None, json_path: str | Path | None = None
            ) -> dict[str, list]:
    """Run `detector` over sources; with `save`, write annotated images/videos there and a
    detections.json (or `json_path`). Returns {source: detections per image or per video frame}."""
    paths = expand_sources(sources)
    out_dir = Path(save) if save is not None else None
    records: dict[str, list] = {}
    with Progress(len(paths), "predict") as progress:
        for path in paths:
            if path.suffix.lower() in VIDEO_SUFFIXES:
                records[str(path)] = _video(detector, path, out_dir)
            else:
                dets = detector(str(path))
                records[str(path)] = dets.to_dict()["detections"]
                if out_dir is not None:
                    _write_image(out_dir / path.name, dets.draw(cv2.imread(str(path), cv2.IMREAD_COLOR)))
            progress.update(note=path.name)
    if json_path is not None or out_dir is not None:
        target = Path(json_path) if json_path is not None else out_dir / "detections.json"
        with atomic_path(target) as tmp:
            tmp.write_text(json.dumps(records, indent=1))
    return records


def _write_image(path: Path, image: np.ndarray) -> None:
    ok, encoded = cv2.imencode(path.suffix or ".jpg", image)
    if not ok:
        raise ImageError(f"could not encode {path}")
    with atomic_path(path) as tmp:
        encoded.tofile(tmp)


def _frames(path: Path) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ImageError(f"cannot open video {path}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield frame
    finally:
        capture.release()


def _video(detector: Detector, path: Path, out_dir: Path | None) -> list:
    """Per-frame detections; with out_dir, the annotated video as <out_dir>/<name>.mp4."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    capture.release()
    frames: list = []
    with Progress(total, path.name) as progress:
        if out_dir is None:
            for frame in _frames(path):
                frames.append(detector(frame, color="BGR").to_dict()["detections"])
                progress.update()
            return frames
        with atomic_path(out_dir / f"{path.stem}.mp4") as tmp:
            writer = None
            try:
                for frame in _frames(path):
                    dets = detector(frame, color="BGR")
                    frames.append(dets.to_dict()["detections"])
                    if writer is None:
                        size = (frame.shape[1], frame.shape[0])
                        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
                    writer.write(dets.draw(frame))
                    progress.update()
            finally:
                if writer is not None:
                    writer.release()
            if writer is None:
                raise ImageError(f"video {path} has no frames")
    return frames
