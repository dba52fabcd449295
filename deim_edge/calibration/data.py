"""Calibration sets: the images an INT8 export measures activation ranges on, preprocessed exactly as the
runtime will feed them (the artifact's metadata: size, resize mode, normalization).

Sources: a folder of images (searched recursively), a COCO JSON (its images, found beside it), a video file
(frames spread evenly over it), or "synthetic" (deim-edge's shapes generator). No torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import CalibrationError, ImageError
from ..media import VIDEO_SUFFIXES, Video, image_files, is_video, read_image
from ..metadata import ArtifactMetadata
from ..preprocess import preprocess
from ..progress import Progress, warn
from ..synthetic import draw_scene
from .settings import DEFAULT_SIZE

MIN_RECOMMENDED = 100  # fewer rarely cover the activation ranges of real scenes: warned
SYNTHETIC = "synthetic"
SYNTHETIC_CLASSES = 4


@dataclass
class CalibrationSet:
    """Calibration images: `images` (RGB uint8, as read) and `inputs` [N, 3, H, W] float32 in the artifact's
    preprocessing, with where each came from and the files skipped because they could not be read."""

    images: list[np.ndarray]
    inputs: np.ndarray
    sources: list[str]
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.inputs)

    def batches(self) -> list[np.ndarray]:
        """One [1, 3, H, W] array per image, as the quantizers iterate them."""
        return [self.inputs[i:i + 1] for i in range(len(self.inputs))]

    def nhwc(self) -> np.ndarray:
        """[N, H, W, 3]: the layout TFLite models take."""
        return np.ascontiguousarray(self.inputs.transpose(0, 2, 3, 1))

    def summary(self) -> dict:
        """What the report says about the calibration set."""
        return {"images": len(self), "skipped": len(self.skipped), "first": self.sources[:3]}


def load_calibration(source: str | os.PathLike, metadata: ArtifactMetadata, size: int = DEFAULT_SIZE,
                     seed: int = 0, progress: bool = True) -> CalibrationSet:
    """`size` images of `source` (a folder, a COCO .json, a video, or "synthetic"), preprocessed for `metadata`.

    With more images than `size`, a seeded random choice of them; with fewer, all of them and a warning.
    Unreadable files are skipped and counted; CalibrationError when no image is left.
    """
    if int(size) < 1:
        raise CalibrationError(f"--calib-size must be at least 1, got {size}")
    size = int(size)
    if size < MIN_RECOMMENDED:
        warn(f"calibrating on {size} images; fewer than {MIN_RECOMMENDED} rarely cover the activation ranges of "
             f"real scenes (--calib-size {MIN_RECOMMENDED} or more is safer)")
    if str(source) == SYNTHETIC:
        return _synthetic(metadata, size, seed)
    files = _image_files(Path(source))
    if files is None:
        return _from_video(Path(source), metadata, size, progress)
    return _from_files(_choose(files, size, seed), metadata, size, progress)


def check_calibration_data(source: str | os.PathLike) -> None:
    """CalibrationError unless `source` is "synthetic", a video file, or a folder or COCO .json of image files
    one of which OpenCV reads: what an export checks before its long work (load_calibration reads them all)."""
    if str(source) == SYNTHETIC:
        return
    files = _image_files(Path(source))
    if files is None:
        try:
            Video(source).close()
        except ImageError as e:
            raise CalibrationError(str(e)) from None
    elif not any(read_image(f) is not None for f in files):
        raise CalibrationError(f"no readable images in {source}: OpenCV cannot read any of its {len(files)} image "
                               f"files (first: {files[0]})")


def _image_files(path: Path) -> list[Path] | None:
    """The image files of a folder (searched recursively) or a COCO .json, None for a video file;
    CalibrationError for anything else."""
    if path.is_dir():
        try:
            return image_files([path], recursive=True)
        except ImageError as e:
            raise CalibrationError(str(e)) from None
    if not path.exists():
        raise CalibrationError(f"calibration data not found: {path} (give a folder of images, a COCO .json, "
                               f"a video, or '{SYNTHETIC}')")
    if path.suffix.lower() == ".json":
        return coco_image_files(path)
    if is_video(path):
        return None
    raise CalibrationError(f"cannot calibrate on {path}: give a folder of images, a COCO .json, a video "
                           f"({', '.join(sorted(VIDEO_SUFFIXES))}), or '{SYNTHETIC}'")


def coco_image_files(annotations: Path) -> list[Path]:
    """The image files a COCO annotation file lists, looked up where COCO layouts keep them: beside the
    JSON, in ../<split> (instances_val2017.json -> val2017/), ../images or ../; CalibrationError if none is."""
    try:
        images = json.loads(annotations.read_text(encoding="utf-8"))["images"]
        names = [str(i["file_name"]) for i in images]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CalibrationError(f"{annotations} is not a readable COCO annotation file: {e}") from e
    if not names:
        raise CalibrationError(f"{annotations} lists no images")
    split = annotations.stem.split("_", 1)[-1]  # instances_train2017 -> train2017
    root = annotations.parent
    for folder in (root, root.parent / split, root / split, root.parent / "images", root.parent):
        if (folder / names[0]).is_file():
            return [folder / n for n in names]
    raise CalibrationError(f"cannot find the images of {annotations} (first: {names[0]}); looked in {root}, "
                           f"{root.parent / split}, {root.parent / 'images'} and {root.parent}")


def _choose(files: list[Path], size: int, seed: int) -> list[Path]:
    if len(files) <= size:
        return files
    keep = np.sort(np.random.default_rng(seed).choice(len(files), size, replace=False))
    return [files[i] for i in keep]


def _from_files(files: list[Path], metadata: ArtifactMetadata, size: int, progress: bool) -> CalibrationSet:
    images, sources, skipped = [], [], []
    with Progress(len(files), "calibration images", enabled=progress) as bar:
        for path in files:
            image = read_image(path)
            if image is None:
                skipped.append(str(path))
            else:
                images.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
                sources.append(str(path))
            bar.update()
    if skipped:
        warn(f"skipped {len(skipped)} of {len(files)} calibration files that OpenCV cannot read "
             f"(first: {skipped[0]})")
    return _finish(images, sources, skipped, metadata, size)


def _from_video(path: Path, metadata: ArtifactMetadata, size: int, progress: bool) -> CalibrationSet:
    """`size` frames spread evenly over the video (every frame when it is shorter)."""
    images, sources = [], []
    try:
        with Video(path) as video:
            total = min(size, video.frame_count) if video.frame_count else None
            with Progress(total, "calibration frames", enabled=progress) as bar:
                for index, frame in video.spread(size):
                    images.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                    sources.append(f"{path}#frame{index}")
                    bar.update()
    except ImageError as e:
        raise CalibrationError(str(e)) from None
    return _finish(images, sources, [], metadata, size, what=f"frames in {path}")


def _synthetic(metadata: ArtifactMetadata, size: int, seed: int) -> CalibrationSet:
    """Scenes of deim-edge's synthetic shapes at the model's input size (for the demo and tests)."""
    h, w = metadata.input_size
    rng = np.random.default_rng([seed, 0xCA11B])
    images = [draw_scene(rng, h, w, SYNTHETIC_CLASSES)[0] for _ in range(size)]
    return _finish(images, [f"{SYNTHETIC}#{i}" for i in range(size)], [], metadata, size)


def _finish(images: list[np.ndarray], sources: list[str], skipped: list[str], metadata: ArtifactMetadata,
            size: int, what: str = "readable images") -> CalibrationSet:
    if not images:
        raise CalibrationError(f"no {what} to calibrate on" + (f" ({len(skipped)} unreadable)" if skipped else ""))
    if len(images) < size:
        warn(f"only {len(images)} {what} for calibration, fewer than the {size} asked; using all of them")
    inputs, _ = preprocess(images, metadata.input_size, resize=metadata.resize, mean=metadata.mean,
                           std=metadata.std)
    return CalibrationSet(images, inputs, sources, skipped)
