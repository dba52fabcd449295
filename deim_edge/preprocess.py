"""Images in, network input out: load any image as RGB uint8, resize (stretch or letterbox),
scale to [0, 1], normalize, lay out; and the Transform that maps boxes back. numpy + OpenCV only."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .errors import ConfigError, ImageError
from .media import read_image
from .metadata import RESIZE_MODES

LAYOUTS = ("NCHW", "NHWC")
COLOR_ORDERS = ("BGR", "RGB")


def load_image(source: str | os.PathLike | np.ndarray, color: str = "BGR") -> np.ndarray:
    """An image as an HxWx3 uint8 RGB array.

    `source` is a file path (any format OpenCV reads; EXIF orientation applied) or an array whose
    channel order `color` gives ("BGR", as OpenCV reads, or "RGB"). Arrays may be grayscale (HxW
    or HxWx1), 3 or 4 channels (alpha dropped), uint8, uint16 (divided by 257) or float in [0, 1];
    views (crops, flips) are fine. An RGB uint8 HxWx3 array is returned as is, without a copy.
    """
    if color not in COLOR_ORDERS:
        raise ConfigError(f"color must be one of {COLOR_ORDERS}, got {color!r}")
    if isinstance(source, str) and not source:
        raise ImageError("the image path is empty; pass an image file's path or a numpy array")
    if isinstance(source, (str, os.PathLike)):
        return _read_file(Path(source))
    if not isinstance(source, np.ndarray):
        raise ImageError(f"expected an image path or a numpy array, got {type(source).__name__}")
    return _to_rgb(_to_uint8(source), color)


def _read_file(path: Path) -> np.ndarray:
    if not path.exists():
        raise ImageError(f"no such image file: {path}")
    if path.is_dir():
        raise ImageError(f"{path} is a directory; pass an image file (or list its images yourself)")
    bgr = read_image(path)
    if bgr is None:
        raise ImageError(f"{path} is not an image OpenCV can read (empty, corrupt or another kind of file)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        batch = "; pass a batch as a list of images" if image.ndim == 4 else ""
        raise ImageError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 image, got shape {image.shape}{batch}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"the image is empty (shape {image.shape})")
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return np.round(image / 257.0).astype(np.uint8)  # 65535 -> 255
    if np.issubdtype(image.dtype, np.floating):
        low, high = float(image.min()), float(image.max())  # NaN when any pixel is NaN
        if not -1.0 / 255 <= low <= high <= 1.0 + 1.0 / 255:
            raise ImageError(f"a float image must hold finite values in [0, 1] (this one holds {low:g} to {high:g}); "
                             f"divide 0-255 values by 255, pass pixels before normalizing them, or pass uint8")
        return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageError(f"unsupported image dtype {image.dtype}; pass uint8, uint16 or float in [0, 1]")


def _to_rgb(image: np.ndarray, color: str) -> np.ndarray:
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if color == "BGR" else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if color == "BGR" else image


@dataclass(frozen=True)
class Transform:
    """What resizing did to one image: original pixel (x, y) lands at network-input pixel
    (x * sx + left, y * sy + top)."""

    original_size: tuple[int, int]  # (h, w) of the original image
    input_size: tuple[int, int]  # (h, w) of the network input
    scale: tuple[float, float]  # (sy, sx): network-input pixels per original pixel (resized / original size)
    pad: tuple[int, int] = (0, 0)  # (top, left): padding before the image, network-input pixels

    def to_original(self, boxes_xyxy_norm: np.ndarray) -> np.ndarray:
        """Boxes [K, 4] x1,y1,x2,y2 normalized to the network input -> original pixels, clipped."""
        in_h, in_w = self.input_size
        (sy, sx), (top, left) = self.scale, self.pad
        boxes = np.asarray(boxes_xyxy_norm, dtype=np.float32).reshape(-1, 4)
        out = boxes * np.array([in_w / sx, in_h / sy, in_w / sx, in_h / sy], np.float32)
        out -= np.array([left / sx, top / sy, left / sx, top / sy], np.float32)
        h, w = self.original_size
        np.clip(out[:, 0::2], 0, w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, h, out=out[:, 1::2])
        return out

    def to_input(self, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Boxes [K, 4] x1,y1,x2,y2 in original pixels -> normalized to the network input."""
        in_h, in_w = self.input_size
        (sy, sx), (top, left) = self.scale, self.pad
        boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        out = boxes * np.array([sx, sy, sx, sy], np.float32) + np.array([left, top, left, top], np.float32)
        return out / np.array([in_w, in_h, in_w, in_h], np.float32)


def preprocess(images: Sequence[np.ndarray] | np.ndarray, input_size: tuple[int, int],
               resize: str = "stretch", mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
               pad_value: int | tuple[int, int, int] = 0, layout: str = "NCHW",
               out: np.ndarray | None = None) -> tuple[np.ndarray, list[Transform]]:
    """RGB uint8 images (a list, or one HxWx3 array) -> a float32 batch [B,3,H,W] (or [B,H,W,3] for
    layout "NHWC") and one Transform per image.

    "stretch" resizes to (h, w) with OpenCV's bilinear interpolation (DEIMv2's own pipeline uses
    PIL's, which also low-pass filters when shrinking: about 1-2 levels apart on average at 2x);
    "letterbox" keeps the aspect ratio (scale min(H/h, W/w), sizes rounded down as the public
    DEIMv2 ONNX script does) and centers the image on a canvas of `pad_value` (one level, or an
    RGB triple). Pixels are then divided by 255 and, when mean and std are given, normalized as
    (x - mean) / std.

    `out`, a C-contiguous float32 array of the batch's shape, receives the batch instead of a new
    array: a caller that runs every frame can keep one (fresh large arrays cost page faults).
    """
    in_h, in_w = _check_size(input_size)
    if resize not in RESIZE_MODES:
        raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    mean, std = normalization(mean, std)
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    if len(images) == 0:
        raise ImageError("no images to preprocess")
    planar, interleaved = _luts(mean, std)
    shape = (len(images), 3, in_h, in_w) if layout == "NCHW" else (len(images), in_h, in_w, 3)
    if out is None:
        batch = np.empty(shape, np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ConfigError(f"out must be a writeable C-contiguous float32 array of shape {shape}, "
                          f"got {out.dtype} {out.shape}")
    else:
        batch = out
    transforms = []
    for i, image in enumerate(images):
        _check_rgb(image, i)
        if resize == "stretch":
            resized, transform = _stretch(image, in_h, in_w)
        else:
            resized, transform = _letterbox(image, in_h, in_w, pad_value)
        if layout == "NCHW":
            for c, plane in enumerate(cv2.split(resized)):  # uint8 -> normalized float32 by table lookup
                cv2.LUT(plane, planar[c], dst=batch[i, c])
        else:
            cv2.LUT(resized, interleaved, dst=batch[i])
        transforms.append(transform)
    return batch, transforms


def normalization(mean: Sequence[float] | None, std: Sequence[float] | None
                  ) -> tuple[tuple[float, float, float] | None, tuple[float, float, float] | None]:
    """mean and std as (R, G, B) float triples, or (None, None) for no normalization. ConfigError unless both or
    neither are given, each as three finite numbers: a mean within [0, 1] (it applies to pixels scaled to [0, 1])
    and a std above 0."""
    mean = None if mean is None else _rgb(mean, "mean")
    std = None if std is None else _rgb(std, "std")
    if (mean is None) != (std is None):
        raise ConfigError("give both mean and std, or neither")
    if mean is not None and not all(0.0 <= m <= 1.0 for m in mean):
        raise ConfigError(f"mean applies to pixels scaled to [0, 1], so it lies within [0, 1], got {mean}; "
                          f"divide 0-255 values by 255")
    if std is not None and not all(s > 0.0 for s in std):
        raise ConfigError(f"std divides the pixels, so it must be above 0, got {std}")
    return mean, std


def _rgb(values: Sequence[float], name: str) -> tuple[float, float, float]:
    triple = tuple(values) if isinstance(values, Iterable) and not isinstance(values, (str, bytes)) else ()
    if len(triple) != 3 or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
                                   for v in triple):
        raise ConfigError(f"{name} takes three finite numbers (R, G, B), got {values!r}")
    return tuple(float(v) for v in triple)


def _check_size(input_size: tuple[int, int]) -> tuple[int, int]:
    try:
        in_h, in_w = (int(s) for s in input_size)
    except (TypeError, ValueError):
        raise ConfigError(f"input_size must be (height, width), got {input_size!r}") from None
    if in_h <= 0 or in_w <= 0:
        raise ConfigError(f"input_size must be positive, got {input_size!r}")
    return in_h, in_w


def _check_rgb(image: np.ndarray, i: int) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ImageError(f"image {i}: expected an HxWx3 uint8 RGB array, got {got}; convert it with load_image()")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"image {i} is empty (shape {image.shape})")


@lru_cache(maxsize=16)
def _luts(mean: tuple[float, ...] | None, std: tuple[float, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """The normalized float32 value of each uint8 level per channel, computed in float64: as
    [3, 256] (one table per plane) and as [1, 256, 3] (one 3-channel table for HxWx3 images)."""
    levels = np.arange(256, dtype=np.float64)[None, :] / 255.0
    if mean is not None:
        levels = (levels - np.array(mean)[:, None]) / np.array(std)[:, None]
    planar = np.ascontiguousarray(np.broadcast_to(levels, (3, 256)), dtype=np.float32)
    interleaved = np.ascontiguousarray(planar.T[None])
    planar.flags.writeable = interleaved.flags.writeable = False
    return planar, interleaved


def _stretch(image: np.ndarray, in_h: int, in_w: int) -> tuple[np.ndarray, Transform]:
    h, w = image.shape[:2]
    resized = image if (h, w) == (in_h, in_w) else cv2.resize(image, (in_w, in_h), interpolation=cv2.INTER_LINEAR)
    return resized, Transform((h, w), (in_h, in_w), (in_h / h, in_w / w))


def _letterbox(image: np.ndarray, in_h: int, in_w: int,
               pad_value: int | tuple[int, int, int]) -> tuple[np.ndarray, Transform]:
    h, w = image.shape[:2]
    ratio = min(in_h / h, in_w / w)
    # the floor of the exact h * ratio, as the public script's int() means it; the 1e-6 only undoes
    # float error (451 * (320 / 451) = 319.99999...), true fractions are at least 1 / max(h, w) away
    new_h, new_w = max(1, int(h * ratio + 1e-6)), max(1, int(w * ratio + 1e-6))
    top, left = (in_h - new_h) // 2, (in_w - new_w) // 2
    resized = image if (h, w) == (new_h, new_w) else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    value = (pad_value,) * 3 if np.isscalar(pad_value) else tuple(pad_value)
    padded = cv2.copyMakeBorder(resized, top, in_h - new_h - top, left, in_w - new_w - left,
                                cv2.BORDER_CONSTANT, value=value)
    return padded, Transform((h, w), (in_h, in_w), (new_h / h, new_w / w), (top, left))
