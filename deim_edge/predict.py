"""`python -m deim_edge predict MODEL SOURCE...`: images, folders and videos in; annotated copies
and a JSON of detections out."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .detector import Detector
from .errors import ImageError
from .fileio import atomic_path
from .media import Video, is_video, media_files, read_image
from .progress import Progress


def predict(detector: Detector, sources: list[str], save: str | Path | None = None, json_path: str | Path | None = None
            ) -> dict[str, list]:
    """Run `detector` over sources; with `save`, write annotated images/videos there and a
    detections.json (or `json_path`). Returns {source: detections per image or per video frame}."""
    paths = media_files(sources)
    out_dir = Path(save) if save is not None else None
    records: dict[str, list] = {}
    with Progress(len(paths), "predict") as progress:
        for path in paths:
            if is_video(path):
                records[str(path)] = _video(detector, path, out_dir)
            else:
                dets = detector(str(path))
                records[str(path)] = dets.to_dict()["detections"]
                if out_dir is not None:
                    _write_image(out_dir / path.name, dets.draw(read_image(path)))
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


def _video(detector: Detector, path: Path, out_dir: Path | None) -> list:
    """Per-frame detections; with out_dir, the annotated video as <out_dir>/<name>.mp4."""
    frames: list = []
    with Video(path) as video, Progress(video.frame_count, path.name) as progress:
        if out_dir is None:
            for frame in video:
                frames.append(detector(frame, color="BGR").to_dict()["detections"])
                progress.update()
            return frames
        with atomic_path(out_dir / f"{path.stem}.mp4") as tmp:
            writer = None
            try:
                for frame in video:
                    dets = detector(frame, color="BGR")
                    frames.append(dets.to_dict()["detections"])
                    if writer is None:
                        size = (frame.shape[1], frame.shape[0])
                        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), video.fps or 30.0, size)
                    writer.write(dets.draw(frame))
                    progress.update()
            finally:
                if writer is not None:
                    writer.release()
            if writer is None:
                raise ImageError(f"video {path} has no frames")
    return frames
