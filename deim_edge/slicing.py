"""Sliced inference for small objects in large images: the image is cut into overlapping tiles of the size
the detector is asked for, the tiles run through the runtime as batches, and the boxes, moved back to the
image, are merged across tiles with supervision's InferenceSlicer. Needs the analytics extra.

A 20-pixel object in a 4000-pixel frame is 2 pixels at a 320 input and is lost; in a 640-pixel tile it keeps
a tenth of its size. Objects cut by a tile border are found in pieces in one tile and whole in the tile
that overlaps it: the merge suppresses a box that lies mostly inside a better-scoring one of the same class
(intersection over the smaller box, IOS), so the piece and the whole are counted once.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence

import numpy as np

from .errors import ConfigError
from .results import Detections, import_supervision

DEFAULT_BATCH = 8  # tiles per runtime call for artifacts with a dynamic batch


def check_slicing(slice_wh: int | Sequence[int], overlap: float) -> tuple[tuple[int, int], float]:
    """((w, h), overlap) of a slicing request, or ConfigError: sides of at least 32 pixels, overlap in [0, 1)."""
    sides = (slice_wh, slice_wh) if isinstance(slice_wh, numbers.Integral) else tuple(slice_wh)
    if len(sides) != 2 or any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 32 for s in sides):
        raise ConfigError(f"slice takes the tile size in pixels, one side or (width, height), each at least 32; "
                          f"got {slice_wh!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Real) or not 0.0 <= overlap < 1.0:
        raise ConfigError(f"overlap is a fraction of the tile in [0, 1), e.g. 0.2; got {overlap!r}")
    return (int(sides[0]), int(sides[1])), float(overlap)


def detect_sliced(detect: Callable[[list[np.ndarray]], list[Detections]], image: np.ndarray,
                  slice_wh: tuple[int, int], overlap: float, batch: int | None = None, iou: float = 0.5,
                  names: Sequence[str] = ()) -> Detections:
    """The detections of `image` (HxWx3) found tile by tile: `detect` takes a list of tiles (in the image's
    channel order) and returns their Detections; `batch` tiles go to it at a time. Boxes overlapping a better
    one of their class by more than `iou` of the smaller box are dropped."""
    sv = import_supervision()
    overlap_wh = tuple(int(round(side * overlap)) for side in slice_wh)

    def callback(tiles: list[np.ndarray]) -> list:
        return [d.to_supervision() for d in detect(list(tiles))]

    slicer = sv.InferenceSlicer(callback=callback, slice_wh=slice_wh, overlap_wh=overlap_wh,
                                overlap_filter="non_max_suppression", iou_threshold=iou, overlap_metric="IOS",
                                batch_size=max(2, batch or DEFAULT_BATCH))
    merged = slicer(image)
    return Detections.from_supervision(merged, names=names, image_size=image.shape[:2])
