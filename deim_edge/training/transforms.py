"""Per-sample training transforms on the shared sample format (numpy + OpenCV).

A sample is `(image, target)`: image HxWx3 uint8 RGB, target a dict with "boxes" float32 [N,4] x1,y1,x2,y2
in pixels, "labels" int64 [N], "image_id", "orig_size". Any other per-box array in the target (first
dimension N, e.g. "mixup") is kept in sync whenever boxes are dropped. Every random transform draws from a
`np.random.Generator`: the one passed at call time, else the one it holds (Compose passes its own to all).
The semantics follow torchvision.transforms.v2 as the DEIMv2 recipe uses them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from ..errors import ConfigError

Target = dict
Sample = tuple[np.ndarray, Target]

_GRAY_WEIGHTS = np.array([0.2989, 0.587, 0.114], np.float32)  # ITU-R 601-2, as torchvision's rgb_to_grayscale


def keep_boxes(target: Target, keep: np.ndarray) -> Target:
    """A copy of `target` with only the boxes where `keep` [N] bool is True, per-box arrays kept in sync."""
    n = len(target["boxes"])
    out = dict(target)
    for key, value in target.items():
        if isinstance(value, np.ndarray) and value.ndim >= 1 and len(value) == n:
            out[key] = value[keep]
    return out


def with_boxes(target: Target, boxes: np.ndarray) -> Target:
    """A copy of `target` with new boxes [N,4] (same N)."""
    out = dict(target)
    out["boxes"] = np.asarray(boxes, np.float32).reshape(-1, 4)
    return out


class Transform:
    """Base of the random transforms: holds a generator and picks the one to use for a call."""

    def __init__(self, rng: np.random.Generator | None = None) -> None:
        self.rng = rng if rng is not None else np.random.default_rng()

    def _rng(self, rng: np.random.Generator | None) -> np.random.Generator:
        return rng if rng is not None else self.rng

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator | None = None) -> Sample:
        raise NotImplementedError


class Compose(Transform):
    """Applies transforms in order, passing them one generator so a seed reproduces the whole chain."""

    def __init__(self, ops: Sequence[Callable], rng: np.random.Generator | None = None) -> None:
        super().__init__(rng)
        self.ops = list(ops)

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        for op in self.ops:
            image, target = op(image, target, rng)
        return image, target


def _blend(image: np.ndarray, other: np.ndarray | float, ratio: float) -> np.ndarray:
    """ratio * image + (1 - ratio) * other, clipped to [0, 255] (float32 HxWx3)."""
    return np.clip(ratio * image + (1.0 - ratio) * other, 0.0, 255.0)


def _gray(image: np.ndarray) -> np.ndarray:
    """Luma of a float32 HxWx3 RGB image, HxWx1."""
    return (image @ _GRAY_WEIGHTS)[..., None]


def _shift_hue(image: np.ndarray, hue: float) -> np.ndarray:
    """Rotates the hue of a float32 RGB image in [0, 255] by `hue` turns (in [-0.5, 0.5])."""
    hsv = cv2.cvtColor(image / 255.0, cv2.COLOR_RGB2HSV)  # float: H in [0, 360)
    hsv[..., 0] = np.mod(hsv[..., 0] + hue * 360.0, 360.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0


class RandomPhotometricDistort(Transform):
    """Brightness, contrast (before or after the colour ops), saturation, hue and a channel permutation,
    each applied with probability p, as torchvision's v2 RandomPhotometricDistort; `channel_swap=False` never
    permutes the channels."""

    def __init__(self, brightness: tuple[float, float] = (0.875, 1.125), contrast: tuple[float, float] = (0.5, 1.5),
                 saturation: tuple[float, float] = (0.5, 1.5), hue: tuple[float, float] = (-0.05, 0.05),
                 p: float = 0.5, channel_swap: bool = True, rng: np.random.Generator | None = None) -> None:
        super().__init__(rng)
        self.brightness, self.contrast, self.saturation, self.hue, self.p = brightness, contrast, saturation, hue, p
        self.channel_swap = channel_swap

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        brightness = rng.uniform(*self.brightness) if rng.random() < self.p else None
        contrast = rng.uniform(*self.contrast) if rng.random() < self.p else None
        saturation = rng.uniform(*self.saturation) if rng.random() < self.p else None
        hue = rng.uniform(*self.hue) if rng.random() < self.p else None
        contrast_before = rng.random() < 0.5
        permutation = rng.permutation(3) if rng.random() < self.p and self.channel_swap else None

        out = image.astype(np.float32)  # HxWx3
        if brightness is not None:
            out = _blend(out, 0.0, brightness)
        if contrast is not None and contrast_before:
            out = _blend(out, float(_gray(out).mean()), contrast)
        if saturation is not None:
            out = _blend(out, _gray(out), saturation)
        if hue is not None:
            out = _shift_hue(out, hue)
        if contrast is not None and not contrast_before:
            out = _blend(out, float(_gray(out).mean()), contrast)
        if permutation is not None:
            out = out[..., permutation]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8), target


class RandomZoomOut(Transform):
    """With probability p, places the image at a random spot of a canvas `side_range` times larger, filled
    with `fill`; boxes move with it."""

    def __init__(self, fill: int = 0, side_range: tuple[float, float] = (1.0, 4.0), p: float = 0.5,
                 rng: np.random.Generator | None = None) -> None:
        super().__init__(rng)
        if not 1.0 <= side_range[0] <= side_range[1]:
            raise ConfigError(f"RandomZoomOut side_range {side_range} must satisfy 1 <= low <= high")
        self.fill, self.side_range, self.p = fill, side_range, p

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        if rng.random() >= self.p:
            return image, target
        h, w = image.shape[:2]
        ratio = rng.uniform(*self.side_range)
        canvas_w, canvas_h = int(w * ratio), int(h * ratio)
        fx, fy = rng.random(2)
        left, top = int((canvas_w - w) * fx), int((canvas_h - h) * fy)
        canvas = np.full((canvas_h, canvas_w, 3), self.fill, np.uint8)
        canvas[top:top + h, left:left + w] = image
        return canvas, with_boxes(target, target["boxes"] + np.array([left, top, left, top], np.float32))


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of `boxes` [N,4] with one `box` [4] (xyxy), [N]."""
    lt = np.maximum(boxes[:, :2], box[:2])
    rb = np.minimum(boxes[:, 2:], box[2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + np.prod(box[2:] - box[:2]) - inter)


class RandomIoUCrop(Transform):
    """With probability p, the SSD crop of torchvision's v2 RandomIoUCrop: draw a minimum IoU from
    `sampler_options` (1.0 = keep the image), then up to `trials` crops of scale and aspect in range whose
    kept boxes (centres inside) reach that IoU with the crop. Boxes are clipped; those whose centre falls
    outside the crop are dropped. An image without boxes is left as it is."""

    def __init__(self, min_scale: float = 0.3, max_scale: float = 1.0, min_aspect_ratio: float = 0.5,
                 max_aspect_ratio: float = 2.0, sampler_options: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0),
                 trials: int = 40, p: float = 1.0, rng: np.random.Generator | None = None) -> None:
        super().__init__(rng)
        if 1.0 not in sampler_options:
            raise ConfigError("RandomIoUCrop sampler_options must include 1.0 (no crop) so the search ends")
        self.min_scale, self.max_scale = min_scale, max_scale
        self.min_aspect_ratio, self.max_aspect_ratio = min_aspect_ratio, max_aspect_ratio
        self.options, self.trials, self.p = list(sampler_options), trials, p

    def _find_crop(self, boxes: np.ndarray, h: int, w: int, rng: np.random.Generator):
        """(left, top, right, bottom, keep [N] bool) of an accepted crop, or None for no crop."""
        centres = 0.5 * (boxes[:, :2] + boxes[:, 2:])  # N,2
        while True:
            min_iou = self.options[rng.integers(len(self.options))]
            if min_iou >= 1.0:
                return None
            for _ in range(self.trials):
                sx, sy = self.min_scale + (self.max_scale - self.min_scale) * rng.random(2)
                new_w, new_h = int(w * sx), int(h * sy)
                if new_h == 0 or not self.min_aspect_ratio <= new_w / new_h <= self.max_aspect_ratio:
                    continue
                fx, fy = rng.random(2)
                left, top = int((w - new_w) * fx), int((h - new_h) * fy)
                right, bottom = left + new_w, top + new_h
                if left == right or top == bottom:
                    continue
                keep = ((left < centres[:, 0]) & (centres[:, 0] < right)
                        & (top < centres[:, 1]) & (centres[:, 1] < bottom))
                if not keep.any():
                    continue
                crop = np.array([left, top, right, bottom], np.float32)
                if box_iou(boxes[keep], crop).max() < min_iou:
                    continue
                return left, top, right, bottom, keep

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator | None = None) -> Sample:
        rng = self._rng(rng)
        if rng.random() >= self.p or len(target["boxes"]) == 0:
            return image, target
        h, w = image.shape[:2]
        found = self._find_crop(target["boxes"], h, w, rng)
        if found is None:
            return image, target
        left, top, right, bottom, keep = found
        target = keep_boxes(target, keep)
        boxes = target["boxes"] - np.array([left, top, left, top], np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, right - left)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, bottom - top)
        return np.ascontiguousarray(image[top:bottom, left:right]), with_boxes(target, boxes)


def hflip(image: np.ndarray, target: Target) -> Sample:
    """Mirrors the image left-right and its boxes with it."""
    w = image.shape[1]
    boxes = target["boxes"]
    flipped = np.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], axis=1)
    return np.ascontiguousarray(image[:, ::-1]), with_boxes(target, flipped)


class RandomHorizontalFlip(Transform):
    """Mirrors the sample left-right with probability p."""

    def __init__(self, p: float = 0.5, rng: np.random.Generator | None = None) -> None:
        super().__init__(rng)
        self.p = p

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator | None = None) -> Sample:
        return hflip(image, target) if self._rng(rng).random() < self.p else (image, target)


def resize(image: np.ndarray, target: Target, height: int, width: int) -> Sample:
    """Bilinear resize to height x width (area averaging when shrinking, as PIL's antialiased bilinear);
    boxes scaled with it."""
    h, w = image.shape[:2]
    shrink = height * width < h * w
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    scale = np.array([width / w, height / h, width / w, height / h], np.float32)
    return out, with_boxes(target, target["boxes"] * scale)


class Resize(Transform):
    """Resizes to `size`: (h, w) exactly, or an int for the shorter side (aspect kept, as torchvision)."""

    def __init__(self, size: int | tuple[int, int], rng: np.random.Generator | None = None) -> None:
        super().__init__(rng)
        self.size = size

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """The (height, width) an h x w image is resized to."""
        if isinstance(self.size, int):
            if h <= w:
                return self.size, int(self.size * w / h)
            return int(self.size * h / w), self.size
        return int(self.size[0]), int(self.size[1])

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator | None = None) -> Sample:
        return resize(image, target, *self.output_size(*image.shape[:2]))


class SanitizeBoundingBoxes(Transform):
    """Drops boxes narrower or lower than `min_size`, with a negative coordinate, or past the image's right or
    bottom edge (torchvision v2's rule); labels and other per-box arrays follow."""

    def __init__(self, min_size: float = 1.0, rng: np.random.Generator | None = None) -> None:
        super().__init__(rng)
        self.min_size = min_size

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator | None = None) -> Sample:
        h, w = image.shape[:2]
        b = target["boxes"]  # N,4
        keep = ((b[:, 2] - b[:, 0] >= self.min_size) & (b[:, 3] - b[:, 1] >= self.min_size) & (b >= 0).all(axis=1)
                & (b[:, 0] <= w) & (b[:, 2] <= w) & (b[:, 1] <= h) & (b[:, 3] <= h))
        return image, keep_boxes(target, keep)
