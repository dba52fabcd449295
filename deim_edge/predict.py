"""`python -m deim_edge predict MODEL SOURCE...`: images, folders and videos in; annotated copies
and a JSON of detections out; with tracking, videos' objects keep an id across frames, and each video gets a
JSON-lines file of its frames."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import cv2
import numpy as np

from .detector import Detector
from .errors import ConfigError, ImageError
from .fileio import atomic_path, check_output
from .media import Video, is_video, media_files, read_image
from .progress import Progress
from .results import Detections
from .tracking import Tracker, byte_track


def json_target(save: str | Path | None, json_path: str | Path | None) -> Path | None:
    """Where predict writes its detections JSON (`json_path`, else save/detections.json; None: nowhere), once
    it and the `save` folder are checked writable (OutputPathError if not): call it before long work starts."""
    if save is not None:
        check_output(save, folder=True)
        json_path = Path(save) / "detections.json" if json_path is None else json_path
    return None if json_path is None else check_output(json_path)


def predict_files(sources: list[str], track: bool = False) -> list[Path]:
    """The image and video files of `sources` (see media.media_files); with `track`, ConfigError unless all are
    videos (tracking follows objects from frame to frame) and the analytics extra is installed. Call it before
    long work starts."""
    paths = media_files(sources)
    if track:
        byte_track()  # a missing analytics extra is said now, before the model loads
    images = [str(p) for p in paths if not is_video(p)]
    if track and images:
        more = f" and {len(images) - 3} more" if len(images) > 3 else ""
        raise ConfigError(f"--track follows objects across the frames of videos, and {len(images)} input(s) are not "
                          f"videos ({', '.join(images[:3])}{more}); give only videos, or leave --track out")
    return paths


def errors_path(target: Path) -> Path:
    """The file beside the detections JSON that lists the inputs it lacks: <its stem>.errors.json."""
    return target.with_name(f"{target.stem}.errors.json")


def predict(detector: Detector, sources: list[str], save: str | Path | None = None, json_path: str | Path | None = None,
            track: bool = False) -> tuple[dict[str, list], dict[str, str]]:
    """Run `detector` over sources (image files, folders, video files); with `save`, write annotated images/videos
    there and a detections.json (or `json_path`): {source: detections per image or per video frame}.

    With `track` (videos only: ConfigError otherwise, before any work) each video's detections carry "track", the
    id of the object they follow across frames (-1: not yet a confirmed track), drawn as "#id"; with `save`,
    <save>/<video stem>.jsonl has one line per frame: {"frame": i, "detections": [...]}.

    An input that cannot be read (ImageError) is skipped and the others go on. The JSON holds the inputs done;
    when some failed, or the run was interrupted (KeyboardInterrupt, raised again once the JSON is written),
    detections.errors.json beside it (see errors_path) says which: {"failed": {source: why}, "unfinished":
    [source, ...]}; a complete run removes an old one. Annotated copies are written whole or not at all.
    Returns ({source: detections}, {source: why it failed})."""
    target = json_target(save, json_path)
    paths = predict_files(sources, track)
    out_dir = Path(save) if save is not None else None
    records: dict[str, list] = {}
    failed: dict[str, str] = {}
    try:
        with Progress(len(paths), "predict") as progress:
            for path in paths:
                try:
                    records[str(path)] = _predict_one(detector, path, out_dir, track)
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


def _predict_one(detector: Detector, path: Path, out_dir: Path | None, track: bool = False) -> list:
    """The detections of one image, or of each frame of one video (tracked with `track`); with out_dir, its
    annotated copy there."""
    if is_video(path):
        return _video(detector, path, out_dir, track)
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


def _video(detector: Detector, path: Path, out_dir: Path | None, track: bool = False) -> list:
    """Per-frame detections; with out_dir, the annotated video as <out_dir>/<stem>.mp4 and, with `track`, the
    frames' detections as <out_dir>/<stem>.jsonl, each written whole or not at all."""
    frames: list = []
    with Video(path) as video, Progress(video.frame_count, path.name) as progress, ExitStack() as outputs:
        fps = video.fps or 30.0
        write_frame = outputs.enter_context(_video_writer(out_dir / f"{path.stem}.mp4", fps)) if out_dir else None
        lines = outputs.enter_context(_json_lines(out_dir / f"{path.stem}.jsonl")) if out_dir and track else None
        for frame, dets in _detect_frames(detector, video, track, fps):
            frames.append(dets.to_dict()["detections"])
            if write_frame is not None:
                write_frame(dets.draw(frame))
            if lines is not None:
                lines({"frame": len(frames) - 1, "detections": frames[-1]})
            progress.update()
        if not frames:
            raise ImageError(f"video {path} has no frames")
    return frames


def _detect_frames(detector: Detector, video: Video, track: bool, fps: float
                   ) -> Iterator[tuple[np.ndarray, Detections]]:
    """Each frame of `video` with its detections, tracked (tracker ids set) with `track`."""
    if track:
        yield from detector.track(video, color="BGR", tracker=Tracker(frame_rate=fps))
        return
    for frame in video:
        yield frame, detector(frame, color="BGR")


@contextmanager
def _video_writer(path: Path, fps: float) -> Iterator[Callable[[np.ndarray], None]]:
    """A function that appends a BGR frame to the video at `path` (sized by the first frame); the video appears
    when the block ends without error."""
    with atomic_path(path) as tmp:
        writer = None

        def write(frame: np.ndarray) -> None:
            nonlocal writer
            if writer is None:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (frame.shape[1], frame.shape[0]))
            writer.write(frame)

        try:
            yield write
        finally:
            if writer is not None:
                writer.release()


@contextmanager
def _json_lines(path: Path) -> Iterator[Callable[[dict], None]]:
    """A function that appends one JSON object as a line to the file at `path`; the file appears when the block
    ends without error."""
    with atomic_path(path) as tmp, open(tmp, "w") as file:
        yield lambda record: file.write(json.dumps(record) + "\n")
