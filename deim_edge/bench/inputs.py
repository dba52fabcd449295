"""The images a benchmark feeds: the user's files and folders, else the sample images deim-edge ships."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError
from ..predict import IMAGE_SUFFIXES

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"  # bundled with the package
FALLBACK_SIZE = (480, 640)  # (h, w) of the generated image used when no samples are installed


def image_files(sources: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found (not recursively) in the folders named, sorted per folder."""
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            files.extend(sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif source.is_file():
            files.append(source)
        else:
            raise ImageError(f"no such image or folder: {source}")
    if not files:
        raise ImageError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {', '.join(map(str, sources))}")
    return files


def bench_images(sources: Sequence[str | os.PathLike] | None = None) -> tuple[list[np.ndarray], list[str]]:
    """BGR images to time with, and where each came from: `sources`, else the bundled samples, else one
    generated noise image."""
    if sources:
        files = image_files(sources)
    elif SAMPLES.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in SAMPLES.iterdir()):
        files = image_files([SAMPLES])
    else:
        noise = np.random.default_rng(0).integers(0, 256, (*FALLBACK_SIZE, 3), dtype=np.uint8)
        return [noise], [f"random noise {FALLBACK_SIZE[1]}x{FALLBACK_SIZE[0]}"]
    images = []
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ImageError(f"OpenCV cannot read {path} as an image")
        images.append(image)
    return images, [str(p) for p in files]
