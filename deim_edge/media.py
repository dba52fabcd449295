"""Media sources: which files are images and videos, the image and video files of paths and folders, reading
an image file, and the frames of a video file, stream or camera. numpy and OpenCV only.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES
MAX_FPS = 1000  # a frame rate OpenCV reports above this (or 0) is a stream that does not know its own


def is_image(path: str | os.PathLike) -> bool:
    """Whether `path` names an image file, by its suffix."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def is_video(path: str | os.PathLike) -> bool:
    """Whether `path` names a video file, by its suffix."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def media_files(sources: Sequence[str | os.PathLike], suffixes: Collection[str] = MEDIA_SUFFIXES,
                recursive: bool = False) -> list[Path]:
    """Files named directly, and the files inside the folders named (in subfolders too when `recursive`) that have
    one of `suffixes`, sorted per folder. A file named directly is taken whatever its suffix (OpenCV reads more
    formats than these lists name), unless it is of the other known kind (a video where images are asked).
    ImageError for a path that does not exist, such a file, or a folder without any file of `suffixes`."""
    kinds, listed = _kinds(suffixes), ", ".join(sorted(suffixes))
    files: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            inside = source.rglob("*") if recursive else source.iterdir()
            found = sorted(p for p in inside if p.suffix.lower() in suffixes and p.is_file())
            if not found:
                where = f"{source} or its subfolders" if recursive else str(source)
                raise ImageError(f"no {kinds} ({listed}) in {where}")
            files.extend(found)
        elif source.is_file():
            if source.suffix.lower() in MEDIA_SUFFIXES - frozenset(suffixes):
                raise ImageError(f"{source} is not one of the {kinds} deim-edge reads: its suffix is not one of "
                                 f"{listed}")
            files.append(source)
        else:
            raise ImageError(f"not found: {source} (give {kinds} or folders of them)")
    return files


def image_files(sources: Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """The image files of `sources` (see media_files)."""
    return media_files(sources, IMAGE_SUFFIXES, recursive)


def _kinds(suffixes: Collection[str]) -> str:
    """What files of `suffixes` are: "images", "videos" or "images or videos"."""
    kinds = [name for name, known in (("images", IMAGE_SUFFIXES), ("videos", VIDEO_SUFFIXES)) if known & set(suffixes)]
    return " or ".join(kinds) or "files"


def read_image(path: str | os.PathLike) -> np.ndarray | None:
    """An image file as HxWx3 uint8 BGR (as cv2.imread reads it, non-ASCII paths too), or None when OpenCV
    cannot read it. ImageError for an image larger than OpenCV decodes."""
    try:
        data = np.fromfile(os.fspath(path), dtype=np.uint8)
    except OSError:
        return None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    except cv2.error as e:
        if "validateInputImageSize" not in str(e):  # OpenCV's check of the size its header gives
            return None
        size = _header_size(data[:65536].tobytes())  # headers come first
        limit = os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS") or f"{1 << 30:,}"  # OpenCV's default
        raise ImageError(f"{path} is {f'{size[0]}x{size[1]} pixels, ' if size else ''}larger than OpenCV decodes "
                         f"({limit} pixels at most); downscale it, or raise the limit by setting the environment "
                         f"variable OPENCV_IO_MAX_IMAGE_PIXELS before Python starts") from None
    return image if image is not None and image.size else None


def _header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) as a PNG or JPEG header gives them, None for other files."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    i = 2 if head.startswith(b"\xff\xd8") else len(head)
    while i + 9 <= len(head) and head[i] == 0xFF:  # JPEG segments up to the frame header (SOF0..SOF15)
        if head[i + 1] in range(0xC0, 0xD0) and head[i + 1] not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", head[i + 5:i + 9])
            return width, height
        i += 2 + int.from_bytes(head[i + 2:i + 4], "big")
    return None


class Video:
    """A video file, stream URL, GStreamer pipeline or camera (its index) opened with OpenCV.

    Iterating gives every frame (HxWx3 uint8 BGR) in order; `fps` and `frame_count` are None where OpenCV does
    not know them (streams, cameras). `backend` and `params` go to cv2.VideoCapture (e.g. cv2.CAP_V4L2, or
    [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000]); the open capture is `capture`. ImageError when OpenCV cannot open
    the source. Use it in a `with` block, or close() it.
    """

    def __init__(self, source: str | int | os.PathLike, backend: int = cv2.CAP_ANY,
                 params: Sequence[int] = ()) -> None:
        self.source = source
        target = source if isinstance(source, int) else os.fspath(source)
        self.capture = cv2.VideoCapture(target, backend, list(params)) if params else cv2.VideoCapture(target, backend)
        if not self.capture.isOpened():
            self.capture.release()
            raise ImageError(f"OpenCV cannot open the video {source}")

    @property
    def fps(self) -> float | None:
        """Frames per second, None when OpenCV does not know them."""
        fps = self.capture.get(cv2.CAP_PROP_FPS)
        return fps if 0 < fps < MAX_FPS else None

    @property
    def frame_count(self) -> int | None:
        """The number of frames, None when OpenCV does not know it (streams, cameras)."""
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        return count if count > 0 else None

    def read(self) -> np.ndarray | None:
        """The next frame, or None at the end of the video (or when a stream dropped)."""
        ok, frame = self.capture.read()
        return frame if ok and frame is not None and frame.size else None

    def __iter__(self) -> Iterator[np.ndarray]:
        while (frame := self.read()) is not None:
            yield frame

    def spread(self, count: int) -> Iterator[tuple[int, np.ndarray]]:
        """(index, frame) of `count` frames spread evenly over the video, first and last included; every frame
        of a shorter video; the first `count` frames when its length is unknown. Only those frames are decoded."""
        total = self.frame_count
        wanted = set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist()) if total else None
        index = given = 0
        while given < count and self.capture.grab():
            if wanted is None or index in wanted:
                ok, frame = self.capture.retrieve()
                if ok and frame is not None and frame.size:
                    given += 1
                    yield index, frame
            index += 1

    def close(self) -> None:
        self.capture.release()

    def __enter__(self) -> Video:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


SAMPLES = Path(__file__).resolve().parent / "assets" / "samples"  # bundled with the package
FALLBACK_SIZE = (480, 640)  # (h, w) of the generated image used when no samples are installed


def sample_images(sources: Sequence[str | os.PathLike] | None = None) -> tuple[list[np.ndarray], list[str]]:
    """BGR images, and where each came from: `sources` (image files and folders), else the sample images
    deim-edge ships, else one generated noise image (benchmarks, and the gate's fallback)."""
    if sources:
        files = image_files(sources)
    elif SAMPLES.is_dir() and any(map(is_image, SAMPLES.iterdir())):
        files = image_files([SAMPLES])
    else:
        noise = np.random.default_rng(0).integers(0, 256, (*FALLBACK_SIZE, 3), dtype=np.uint8)
        return [noise], [f"random noise {FALLBACK_SIZE[1]}x{FALLBACK_SIZE[0]}"]
    images = []
    for path in files:
        image = read_image(path)
        if image is None:
            raise ImageError(f"OpenCV cannot read {path} as an image")
        images.append(image)
    return images, [str(p) for p in files]
