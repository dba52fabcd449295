"""Sliced inference for small objects in large images: the image is cut into overlapping tiles of the size
the detector is asked for, the tiles run through the runtime as batches, and the boxes, moved back to the
image, are merged across tiles with supervision's InferenceSlicer. Needs the analytics extra.

A 20-pixel object in a 4000-pixel frame is 2 pixels at a 320 input and is lost; in a 640-pixel tile it is
10 pixels, and in a 320-pixel tile its own 20. Objects cut by a tile border are found in pieces in one tile
and whole in the tile that overlaps it: the merge suppresses a box that lies mostly inside a better-scoring
one of the same class (intersection over the smaller box, IOS), so the piece and the whole are counted once.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from .errors import ConfigError
from .results import Detections, import_supervision

DEFAULT_BATCH = 8  # tiles per runtime call for artifacts with a dynamic batch


def check_slicing(slice_wh: int | Sequence[int], overlap: float) -> tuple[tuple[int, int], float]:
    """((w, h), overlap) of a slicing request, or ConfigError: sides of at least 32 pixels, overlap in [0, 1), and
    the analytics extra installed."""
    if isinstance(slice_wh, numbers.Integral):
        sides = (slice_wh, slice_wh)
    elif isinstance(slice_wh, (Sequence, np.ndarray)) and not isinstance(slice_wh, str):
        sides = tuple(slice_wh)
    else:
        sides = ()  # a float, a string, ...: refused below
    if len(sides) != 2 or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 32 for s in sides):
        raise ConfigError(f"slice takes the tile size in pixels, one side or (width, height), each at least 32; "
                          f"got {slice_wh!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap is a fraction of the tile in [0, 1), e.g. 0.2; got {overlap!r}")
    import_supervision()  # a missing extra is said now, not at the first image
    return (int(sides[0]), int(sides[1])), float(overlap)


def detect_sliced(detect: Callable[[list[np.ndarray]], list[Detections]], image: np.ndarray,
                  slice_wh: tuple[int, int], overlap: float, batch: int | None = None, iou: float = 0.5,
                  names: Sequence[str] = ()) -> Detections:
    """The detections of `image` (HxWx3) found tile by tile: `detect` takes a list of tiles (in the image's
    channel order) and returns their Detections; `batch` tiles go to it at a time. Boxes overlapping a better
    one of their class by more than `iou` of the smaller box are dropped.

    Every tile is `slice_wh` pixels, so objects keep one scale across the image: a tile reaching past the
    right or bottom edge (with no overlap, or a side shorter than a tile) is padded with black there. An image
    that fits in one tile is detected whole, as without slicing."""
    sv = import_supervision()
    height, width = image.shape[:2]
    if width <= slice_wh[0] and height <= slice_wh[1]:
        return detect([image])[0]
    overlap_wh = tuple(int(round(side * overlap)) for side in slice_wh)

    def callback(tiles: list[np.ndarray]) -> list:
        found = detect([_pad_to(tile, slice_wh) for tile in tiles])
        return [_inside(d, tile.shape[:2]).to_supervision() for d, tile in zip(found, tiles)]

    slicer = sv.InferenceSlicer(callback=callback, slice_wh=slice_wh, overlap_wh=overlap_wh,
                                overlap_filter="non_max_suppression", iou_threshold=iou, overlap_metric="IOS",
                                batch_size=max(2, batch or DEFAULT_BATCH))
    return Detections.from_supervision(slicer(image), names=names, image_size=(height, width))


def _pad_to(tile: np.ndarray, slice_wh: tuple[int, int]) -> np.ndarray:
    """`tile` on a black canvas of slice_wh (w, h), at its top left; the tile itself when it is that size."""
    (w, h), (tile_h, tile_w) = slice_wh, tile.shape[:2]
    if (tile_w, tile_h) == (w, h):
        return tile
    canvas = np.zeros((h, w, *tile.shape[2:]), tile.dtype)
    canvas[:tile_h, :tile_w] = tile
    return canvas


def _inside(detections: Detections, size: tuple[int, int]) -> Detections:
    """The detections clipped to the (h, w) at the top left of a padded tile; those wholly in the padding go."""
    h, w = size
    xyxy = np.clip(detections.xyxy, 0, [w, h, w, h]).astype(np.float32)
    keep = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
    return replace(detections, xyxy=xyxy, image_size=size)[keep]

