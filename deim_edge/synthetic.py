"""Synthetic detection scenes: shapes of several classes on textured backgrounds, with boxes that are the
exact pixel extent of what is visible of each shape. numpy and OpenCV only (the demo, calibration and the
training set `deim_edge.training.data.synthetic` draw them)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .errors import ConfigError

SHAPES = ("circle", "square", "triangle", "ring", "cross", "star")  # class names, in label order
MAX_COVERED = 0.4  # a new shape may hide at most this fraction of an earlier one


def class_names(num_classes: int) -> tuple[str, ...]:
    """The names of the first `num_classes` shapes (label i is SHAPES[i]); ConfigError outside 1..len(SHAPES)."""
    if not 1 <= num_classes <= len(SHAPES):
        raise ConfigError(f"num_classes must be 1..{len(SHAPES)} (one per shape: {', '.join(SHAPES)}), "
                          f"got {num_classes}")
    return SHAPES[:num_classes]


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured HxWx3 uint8 background: a gradient, blotchy noise and random lines."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * np.cos(angle) + yy * np.sin(angle)) / max(h, w)  # [H,W] in about -1.4..1.4
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = c0 + (c1 - c0) * t[..., None]  # [H,W,3]
    blotch = rng.normal(0, rng.uniform(5, 30), (max(h // 16, 2), max(w // 16, 2), 3)).astype(np.float32)
    image += cv2.resize(blotch, (w, h), interpolation=cv2.INTER_CUBIC)
    image = image.clip(0, 255).astype(np.uint8)
    for _ in range(rng.integers(0, 8)):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(image, p0, p1, tuple(int(v) for v in rng.integers(0, 256, 3)), int(rng.integers(1, 4)))
    return image


def _polygon(center: np.ndarray, radius: float, angles: np.ndarray, rot: float) -> np.ndarray:
    """Integer [K,1,2] polygon points at `radius` (scalar or [K]) around center, rotated by rot."""
    pts = center + np.stack([np.cos(angles + rot), np.sin(angles + rot)], 1) * np.reshape(radius, (-1, 1))
    return np.round(pts).astype(np.int32).reshape(-1, 1, 2)


def shape_mask(shape: str, height: int, width: int, center: Sequence[float], radius: float,
               rot: float = 0.0) -> np.ndarray:
    """A bool [H,W] mask of one shape of SHAPES, centred at (x, y) with circumradius `radius` in pixels and
    turned by `rot` radians (circles and rings do not turn); what falls outside the image is cut off."""
    if shape not in SHAPES:
        raise ConfigError(f"unknown shape {shape!r}; the shapes are {', '.join(SHAPES)}")
    center, r = np.asarray(center, np.float64), float(radius)
    mask = np.zeros((height, width), np.uint8)
    cx, cy = int(round(center[0])), int(round(center[1]))
    if shape == "circle":
        cv2.circle(mask, (cx, cy), int(round(r)), 1, -1)
    elif shape == "ring":
        cv2.circle(mask, (cx, cy), int(round(r)), 1, max(int(round(r * 0.3)), 2))
    elif shape == "square":
        cv2.fillPoly(mask, [_polygon(center, r, np.pi / 4 + np.arange(4) * np.pi / 2, rot)], 1)
    elif shape == "triangle":
        cv2.fillPoly(mask, [_polygon(center, r, -np.pi / 2 + np.arange(3) * 2 * np.pi / 3, rot)], 1)
    elif shape == "cross":
        half = max(r * 0.25, 1.5)  # half of the bar width
        for bar in (np.array([[-r, -half], [r, -half], [r, half], [-r, half]]),
                    np.array([[-half, -r], [half, -r], [half, r], [-half, r]])):
            c, s = np.cos(rot), np.sin(rot)
            pts = bar @ np.array([[c, s], [-s, c]]) + center
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32).reshape(-1, 1, 2)], 1)
    else:  # star: five points, inner radius 0.45 r
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        cv2.fillPoly(mask, [_polygon(center, radii, -np.pi / 2 + np.arange(10) * np.pi / 5, rot)], 1)
    return mask.astype(bool)


def random_shape_mask(rng: np.random.Generator, shape: str, h: int, w: int) -> np.ndarray:
    """A bool [H,W] mask of one randomly placed and sized shape (kept fully inside the image)."""
    r = rng.uniform(0.05, 0.2) * min(h, w)  # circumradius in pixels
    center = np.array([rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1)])
    rot = rng.uniform(-0.35, 0.35)
    return shape_mask(shape, h, w, center, r, rot)


def draw_scene(rng: np.random.Generator, height: int, width: int, num_classes: int,
               max_objects: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic image and its objects.

    Returns image [H,W,3] uint8 RGB, boxes float32 [N,4] x1,y1,x2,y2 (the tight extent of each
    object's visible pixels: x2 = last column + 1), labels int64 [N] in 0..num_classes-1, and the
    instance map int32 [H,W] (0 background, k+1 for object k).
    """
    names = class_names(num_classes)
    image = background(rng, height, width)
    instances = np.zeros((height, width), np.int32)  # [H,W]
    labels = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        label = int(rng.integers(num_classes))
        mask = random_shape_mask(rng, names[label], height, width)
        covered = np.bincount(instances[mask], minlength=len(labels) + 1)[1:]
        areas = np.bincount(instances.ravel(), minlength=len(labels) + 1)[1:]
        if not mask.any() or np.any(covered > MAX_COVERED * np.maximum(areas, 1)):
            continue  # it would hide too much of an earlier object; leave it out
        mean = image[mask].mean(0)
        color = rng.integers(0, 256, 3)
        for _ in range(10):  # prefer a colour that stands out from what it covers
            if np.abs(color - mean).sum() > 150:
                break
            color = rng.integers(0, 256, 3)
        image[mask] = color
        labels.append(label)
        instances[mask] = len(labels)
    boxes = np.zeros((len(labels), 4), np.float32)
    for k in range(len(labels)):
        ys, xs = np.nonzero(instances == k + 1)
        boxes[k] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return image, boxes, np.asarray(labels, np.int64), instances
