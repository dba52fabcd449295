"""`python -m deim_edge predict MODEL SOURCE...`: images, folders and videos in; annotated copies
and a JSON of detections out."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from .detector import Detector
from .errors import ImageError
from .fileio import atomic_path, check_output
from .media import Video, is_video, media_files, read_image
from .progress import Progress


def json_target(save: str | Path | None, json_path: str | Path | None) -> Path | None:
    """Where predict writes its detections JSON (`json_path`, else save/detections.json; None: nowhere), once
    it and the `save` folder are checked writable (OutputPathError if not): call it before long work starts."""
    if save is not None:
        check_output(save, folder=True)
        json_path = Path(save) / "detections.json" if json_path is None else json_path
    return None if json_path is None else check_output(json_path)


def errors_path(target: Path) -> Path:
    """The file beside the detections JSON that lists the inputs it lacks: <its stem>.errors.json."""
    return target.with_name(f"{target.stem}.errors.json")


def predict(detector: Detector, sources: list[str], save: str | Path | None = None, json_path: str | Path | None = None
            ) -> tuple[dict[str, list], dict[str, str]]:
    """Run `detector` over sources (image files, folders, video files); with `save`, write annotated images/videos
    there and a detections.json (or `json_path`): {source: detections per image or per video frame}.

    An input that cannot be read (ImageError) is skipped and the others go on. The JSON holds the inputs done;
    when some failed, or the run was interrupted (KeyboardInterrupt, raised again once the JSON is written),
    detections.errors.json beside it (see errors_path) says which: {"failed": {source: why}, "unfinished":
    [source, ...]}; a complete run removes an old one. Annotated copies are written whole or not at all.
    Returns ({source: detections}, {source: why it failed})."""
    target = json_target(save, json_path)
    paths = media_files(sources)
    out_dir = Path(save) if save is not None else None
    records: dict[str, list] = {}
    failed: dict[str, str] = {}
    try:
        with Progress(len(paths), "predict") as progress:
            for path in paths:
                try:
                    records[str(path)] = _predict_one(detector, path, out_dir)
                except ImageError as e:
                    failed[str(path)] = str(e)
                progress.update(note=path.name)
    except KeyboardInterrupt:
        if target is None:
            raise
        unfinished = [str(p) for p in paths if str(p) not in records and str(p) not in failed]
        _write_json(target, records, failed, unfinished)
        raise KeyboardInterrupt(f"the detections of the {len(records)} input(s) done are in {target}, the "
                                f"{len(unfinished)} unfinished listed in {errors_path(target)}") from None
    if target is not None:
        _write_json(target, records, failed, [])
    return records, failed


def _predict_one(detector: Detector, path: Path, out_dir: Path | None) -> list:
    """The detections of one image, or of each frame of one video; with out_dir, its annotated copy there."""
    if is_video(path):
        return _video(detector, path, out_dir)
    dets = detector(str(path))
    if out_dir is not None:
        _write_image(out_dir / path.name, dets.draw(read_image(path)))
    return dets.to_dict()["detections"]


def _write_json(target: Path, records: dict[str, list], failed: dict[str, str], unfinished: list[str]) -> None:
    """The detections JSON, and beside it the list of the inputs it lacks (or none: an old list removed)."""
    errors = errors_path(target)
    if failed or unfinished:
        with atomic_path(errors) as tmp:
            tmp.write_text(json.dumps({"failed": failed, "unfinished": unfinished}, indent=1))
    else:
        errors.unlink(missing_ok=True)
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(records, indent=1))


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
