"""Dense O2O augmentations (Mosaic, MixUp, Copy-Blend), multi-scale sizes, and the epoch schedule of a recipe.

Mosaic works on one sample (with a cache of recent ones); MixUp and Copy-Blend work on a batch of equally
sized samples, as the DEIMv2 collate function applies them. Images stay uint8 (blends are rounded).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import ConfigError
from ..variants import TrainRecipe
from .fitted_recipe import scale_epoch
from .transforms import (Compose, RandomHorizontalFlip, RandomIoUCrop, RandomPhotometricDistort, RandomZoomOut,
                         Resize, SanitizeBoundingBoxes, Target, Transform, keep_boxes, with_boxes)


def _per_box_keys(target: Target) -> list[str]:
    n = len(target["boxes"])
    return [k for k, v in target.items() if isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == n]


def _concat_targets(base: Target, others: Sequence[Target], offsets: Sequence[np.ndarray]) -> Target:
    """`base` with the per-box arrays of `others` appended; each target's boxes shifted by its offset [4]."""
    merged = dict(base)
    everyone = [base, *others]
    for key in _per_box_keys(base):
        parts = [t[key] + o if key == "boxes" else t[key] for t, o in zip(everyone, offsets)]
        merged[key] = np.concatenate(parts).astype(base[key].dtype)
    return merged


class Mosaic(Transform):
    """Four samples in a 2x2 grid, then a random affine (rotation, translation, scale) of the whole canvas.

    Each sample is first resized so its shorter side is `output_size`; the canvas is twice the largest
    tile in each direction (2 * output_size square for square inputs). The other three tiles are drawn, with
    replacement, from a cache of the last `max_cached_images` samples (the current one included); when the
    cache is full a random entry other than the newest is evicted (`random_pop`) or the oldest. Boxes are
    moved with their tile, mapped through the affine, replaced by the envelope of their corners, clipped to
    the canvas; boxes left with no area are dropped.

    With `crop`, the affine maps the canvas onto a crop x crop window at a random place instead (a mosaic
    that keeps the objects' scale, for small objects: the tiles are not shrunk to fit one image).
    """

    def __init__(self, output_size: int = 320, rotation_range: float = 10.0,
                 translation_range: tuple[float, float] = (0.1, 0.1), scaling_range: tuple[float, float] = (0.5, 1.5),
                 probability: float = 1.0, fill_value: int = 0, max_cached_images: int = 50, random_pop: bool = True,
                 crop: int | None = None, rng: np.random.Generator | None = None) -> None:
        super().__init__(rng)
        self.crop = crop
        if max_cached_images < 1:
            raise ConfigError(f"Mosaic max_cached_images must be at least 1, got {max_cached_images}")
        self.resize = Resize(output_size)
        self.rotation_range, self.scaling_range = rotation_range, scaling_range
        self.translation_range = translation_range
        self.probability, self.fill_value = probability, fill_value
        self.max_cached_images, self.random_pop = max_cached_images, random_pop
        self.cache: list[tuple[np.ndarray, Target]] = []

    def _remember(self, image: np.ndarray, target: Target, rng: np.random.Generator) -> None:
        self.cache.append((image, target))
        if len(self.cache) > self.max_cached_images:
            self.cache.pop(int(rng.integers(0, len(self.cache) - 1)) if self.random_pop else 0)

    def _affine(self, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
        """A 2x3 matrix: rotation and scale about the canvas centre, then a whole-pixel translation."""
        angle = rng.uniform(-self.rotation_range, self.rotation_range)
        tx = round(rng.uniform(-1, 1) * self.translation_range[0] * width)
        ty = round(rng.uniform(-1, 1) * self.translation_range[1] * height)
        scale = rng.uniform(*self.scaling_range)
        matrix = cv2.getRotationMatrix2D((width * 0.5, height * 0.5), angle, scale)
        matrix[:, 2] += (tx, ty)
        return matrix

    def __call__(self, image: np.ndarray, target: Target, rng: np.random.Generator | None = None):
        rng = self._rng(rng)
        if self.probability < 1.0 and rng.random() > self.probability:
            return image, target
        image, target = self.resize(image, target)
        self._remember(image, target, rng)
        picks = rng.integers(0, len(self.cache), size=3)
        tiles = [(image, target)] + [self.cache[i] for i in picks]

        tile_h = max(t[0].shape[0] for t in tiles)
        tile_w = max(t[0].shape[1] for t in tiles)
        canvas = np.full((2 * tile_h, 2 * tile_w, 3), self.fill_value, np.uint8)
        corners = [(0, 0), (tile_w, 0), (0, tile_h), (tile_w, tile_h)]  # x, y of each tile
        for (img, _), (x, y) in zip(tiles, corners):
            canvas[y:y + img.shape[0], x:x + img.shape[1]] = img
        offsets = [np.array([x, y, x, y], np.float32) for x, y in corners]
        merged = _concat_targets(tiles[0][1], [t for _, t in tiles[1:]], offsets)

        h, w = canvas.shape[:2]
        matrix = self._affine(h, w, rng)
        if self.crop is not None:  # the window of the transformed canvas that is kept
            matrix[:, 2] -= (round(rng.uniform(0, max(0, w - self.crop))), round(rng.uniform(0, max(0, h - self.crop))))
            h, w = self.crop, self.crop
        fill = (self.fill_value,) * 3
        canvas = cv2.warpAffine(canvas, matrix, (w, h), flags=cv2.INTER_NEAREST, borderValue=fill)
        b = merged["boxes"]  # N,4
        pts = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [0, 3]], b[:, [2, 3]]], axis=1)  # N,4 corners,2
        pts = pts @ matrix[:, :2].T + matrix[:, 2]
        boxes = np.concatenate([pts.min(axis=1), pts.max(axis=1)], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        merged = with_boxes(merged, boxes)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return canvas, keep_boxes(merged, keep)


def _check_batch(images: Sequence[np.ndarray]) -> None:
    if len({im.shape for im in images}) > 1:
        raise ConfigError("MixUp and Copy-Blend need a batch of equally sized images; resize the samples "
                          "to one size (Resize((h, w))) before batching")


def mixup(images: Sequence[np.ndarray], targets: Sequence[Target], beta: float):
    """MixUp of a batch with itself shifted by one: image i = beta * image i + (1 - beta) * image i-1, its boxes
    and labels those of both; target "mixup" [N] holds each box's weight (beta, then 1 - beta)."""
    _check_batch(images)
    out_images, out_targets = [], []
    for i, (image, target) in enumerate(zip(images, targets)):
        other_image, other = images[i - 1], targets[i - 1]
        mixed = beta * image.astype(np.float32) + (1.0 - beta) * other_image.astype(np.float32)
        out_images.append(np.clip(np.rint(mixed), 0, 255).astype(np.uint8))
        base = {k: v for k, v in target.items() if k != "mixup"}
        merged = _concat_targets(base, [{k: other[k] for k in _per_box_keys(base)}], [0.0, 0.0])
        merged["mixup"] = np.array([beta] * len(target["boxes"]) + [1.0 - beta] * len(other["boxes"]), np.float32)
        out_targets.append(merged)
    return out_images, out_targets


def copy_blend(images: Sequence[np.ndarray], targets: Sequence[Target], beta: float, rng: np.random.Generator,
               num_objects: int = 3, area_threshold: float = 100.0,
               expand_ratios: tuple[float, float] | None = (0.1, 0.25)):
    """Copy-Blend: into each image, blend `num_objects` objects drawn (without replacement) from all boxes of
    the batch whose area is at least `area_threshold` px, each at a random position of the same size.

    The patch (the box, grown on each side by a random fraction in `expand_ratios` of its size where the
    images allow) becomes beta * destination + (1 - beta) * source, so the background shows through and
    pixels outside patches are untouched. The new box is the unexpanded one, with "mixup" weight 1 - beta;
    existing boxes get weight 1. Patches come from the images as they were before any pasting.
    """
    _check_batch(images)
    img_h, img_w = images[0].shape[:2]
    pool = [(i, j) for i, t in enumerate(targets)
            for j, b in enumerate(t["boxes"]) if (b[2] - b[0]) * (b[3] - b[1]) >= area_threshold]
    if not pool:
        return list(images), list(targets)
    sources = [im.astype(np.float32) for im in images]
    out_images, out_targets = [], []
    for i in range(len(images)):
        canvas = sources[i].copy()
        new_boxes, picked = [], []  # picked: (source image, box index) per new box
        for p in rng.choice(len(pool), size=min(num_objects, len(pool)), replace=False):
            src_i, j = pool[p]
            x1s, y1s, x2s, y2s = targets[src_i]["boxes"][j]
            x1s, y1s, x2s, y2s = max(int(x1s), 0), max(int(y1s), 0), min(int(x2s), img_w), min(int(y2s), img_h)
            bw, bh = x2s - x1s, y2s - y1s
            if bw <= 0 or bh <= 0:
                continue
            x1 = int(rng.integers(0, img_w - bw + 1)) if bw < img_w else 0
            y1 = int(rng.integers(0, img_h - bh + 1)) if bh < img_h else 0
            x2, y2 = x1 + bw, y1 + bh
            new_boxes.append([x1, y1, x2, y2])
            picked.append((src_i, j))
            if expand_ratios is not None:
                alpha = rng.uniform(*expand_ratios)
                ew, eh = int(bw * alpha), int(bh * alpha)
                # grow each side by what both the source and the destination have room for
                left, top = min(ew, x1s, x1), min(eh, y1s, y1)
                right, bottom = min(ew, img_w - x2s, img_w - x2), min(eh, img_h - y2s, img_h - y2)
                x1s, y1s, x2s, y2s = x1s - left, y1s - top, x2s + right, y2s + bottom
                x1, y1, x2, y2 = x1 - left, y1 - top, x2 + right, y2 + bottom
            canvas[y1:y2, x1:x2] = beta * canvas[y1:y2, x1:x2] + (1.0 - beta) * sources[src_i][y1s:y2s, x1s:x2s]
        out_images.append(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
        target = {k: v for k, v in targets[i].items() if k != "mixup"}
        if new_boxes:
            n = len(target["boxes"])
            for key in _per_box_keys(target):
                added = np.stack([targets[s][key][j] for s, j in picked]).astype(target[key].dtype)
                target[key] = np.concatenate([target[key], added])
            target["boxes"][n:] = np.array(new_boxes, np.float32)
            target["mixup"] = np.array([1.0] * n + [1.0 - beta] * len(new_boxes), np.float32)
        out_targets.append(target)
    return out_images, out_targets


def multiscale_sizes(base_size: int, base_size_repeat: int) -> list[int]:
    """The sizes a multi-scale batch is drawn from: multiples of 32 from about 0.75 * base_size up, the base
    size `base_size_repeat` times, and multiples of 32 from about 1.25 * base_size down (as DEIMv2)."""
    low = int(base_size * 0.75 / 32) * 32
    high = int(base_size * 1.25 / 32) * 32
    steps = (base_size - low) // 32
    return [low + k * 32 for k in range(steps)] + [base_size] * base_size_repeat + [high - k * 32 for k in range(steps)]


@dataclass(frozen=True)
class EpochAugmentations:
    """Which augmentations run in one epoch."""

    photometric: bool  # RandomPhotometricDistort, and RandomZoomOut / RandomIoUCrop on samples without mosaic
    mosaic: bool
    mixup: bool
    copyblend: bool
    multiscale: bool


class AugmentationPolicy:
    """The augmentation schedule of a recipe, scaled to a run of `epochs` epochs (default: the recipe's).

    Windows are half-open [start, end): mosaic in [p0, p1), photometric / zoom-out / IoU crop in [p0, p2) with
    (p0, p1, p2) = recipe.aug_policy_epochs, mixup in mixup_epochs, Copy-Blend in copyblend_epochs, multi-scale
    before stop_epoch (only if recipe.base_size_repeat is set); a window whose start is not before its end,
    or whose probability is 0, never runs. Nothing runs in the last no_aug_epoch epochs.
    Scaling: every epoch number e of the recipe becomes round_half_up(e * epochs / recipe.epochs), a non-zero
    one at least 1; every window is then cut at epochs - scaled no_aug_epoch.
    """

    def __init__(self, recipe: TrainRecipe, epochs: int | None = None) -> None:
        self.recipe = recipe
        self.epochs = recipe.epochs if epochs is None else int(epochs)
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {epochs}")
        factor = self.epochs / recipe.epochs
        self.aug_end = self.epochs - scale_epoch(recipe.no_aug_epoch, factor)  # first epoch of the no-aug tail

        def window(start: int, end: int) -> tuple[int, int]:
            if start >= end:
                return 0, 0
            return scale_epoch(start, factor), min(scale_epoch(end, factor), self.aug_end)

        p0, p1, p2 = recipe.aug_policy_epochs
        self.mosaic_epochs = window(p0, p1) if recipe.mosaic_prob > 0 else (0, 0)
        self.photometric_epochs = window(p0, p2)
        self.mixup_epochs = window(*recipe.mixup_epochs) if recipe.mixup_prob > 0 else (0, 0)
        self.copyblend_epochs = window(*recipe.copyblend_epochs) if recipe.copyblend_prob > 0 else (0, 0)
        self.stop_epoch = min(scale_epoch(recipe.stop_epoch, factor), self.aug_end)

    def at(self, epoch: int) -> EpochAugmentations:
        """The augmentations active in `epoch` (0-based)."""
        inside = lambda w: w[0] <= epoch < w[1]  # noqa: E731
        return EpochAugmentations(
            photometric=inside(self.photometric_epochs), mosaic=inside(self.mosaic_epochs),
            mixup=inside(self.mixup_epochs), copyblend=inside(self.copyblend_epochs),
            multiscale=self.recipe.base_size_repeat is not None and epoch < self.stop_epoch)

    def batch_size_px(self, epoch: int, base_size: int, rng: np.random.Generator) -> int | None:
        """The square size this batch is resized to (drawn from multiscale_sizes), or None to keep it."""
        if not self.at(epoch).multiscale:
            return None
        sizes = multiscale_sizes(base_size, self.recipe.base_size_repeat)
        return int(sizes[rng.integers(len(sizes))])

    def mix_batch(self, images: Sequence[np.ndarray], targets: Sequence[Target], epoch: int,
                  rng: np.random.Generator):
        """MixUp with probability mixup_prob, else Copy-Blend with probability copyblend_prob, in their epochs."""
        active = self.at(epoch)
        r = self.recipe
        beta = rng.uniform(0.45, 0.55)
        if active.mixup and rng.random() < r.mixup_prob:
            return mixup(images, targets, beta)
        if active.copyblend and rng.random() < r.copyblend_prob:
            return copy_blend(images, targets, beta, rng, r.copyblend_num_objects, r.copyblend_area_threshold,
                              r.copyblend_expand_ratios)
        return list(images), list(targets)


class TrainPipeline:
    """The per-sample training transforms of a recipe for a given epoch: Mosaic (with probability
    mosaic_prob, in place of zoom-out and IoU crop), photometric distortion, zoom-out, IoU crop, sanitize,
    flip, resize to (h, w), sanitize -- the ops switched on and off by the policy."""

    def __init__(self, policy: AugmentationPolicy, size: tuple[int, int]) -> None:
        r = policy.recipe
        self.policy = policy
        self.mosaic = Mosaic(output_size=r.mosaic_output_size, rotation_range=10, fill_value=0,
                             crop=r.mosaic_output_size if r.mosaic_keeps_scale else None)
        self.photometric = RandomPhotometricDistort(brightness=r.brightness, p=r.photometric_p,
                                                    channel_swap=r.channel_swap)
        self.zoom_crop = Compose([RandomZoomOut(fill=0, side_range=(1.0, r.zoom_out_max)), RandomIoUCrop(p=0.8)])
        self.tail = Compose([SanitizeBoundingBoxes(r.min_box_size), RandomHorizontalFlip(),
                             Resize(size), SanitizeBoundingBoxes(r.min_box_size)])

    def reset(self) -> None:
        """Forget the mosaic partners cached so far (at an epoch start, so a resumed run repeats it exactly)."""
        self.mosaic.cache.clear()

    def __call__(self, image: np.ndarray, target: Target, epoch: int, rng: np.random.Generator):
        active = self.policy.at(epoch)
        with_mosaic = active.mosaic and rng.random() <= self.policy.recipe.mosaic_prob
        if with_mosaic:
            image, target = self.mosaic(image, target, rng)
        if active.photometric:
            image, target = self.photometric(image, target, rng)
            if not with_mosaic:
                image, target = self.zoom_crop(image, target, rng)
        return self.tail(image, target, rng)
