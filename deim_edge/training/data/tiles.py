"""Cut large annotated images (aerial, satellite, microscopy, inspection) into training tiles.

Every image becomes a grid of `size` x `size` tiles overlapping by `overlap` (a fraction of `size`); the last
row and column are moved back to end at the image's edge, so no pixel is lost and no tile is padded (an image
smaller than a tile stays whole). A box cut by a tile border is kept, clipped, when at least `min_visible` of
its area is inside the tile; a box mostly outside is dropped *and its visible part is filled with the tile's
mean colour*, so the tile never shows an object it does not label (a model would learn it as background).
Tiles without any box are kept only with `keep_empty` (they teach the background, and cost epochs).

`python -m deim_edge tile DATASET --size 320 --overlap 0.2 --out TILES` writes TILES in COCO layout, one
split per split of DATASET (any layout `read_dataset` reads); each tile's image entry records its source
image and offset ("source", "x", "y").
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import cv2
import numpy as np

from ...errors import ConfigError
from ...fileio import atomic_path
from ...progress import Progress
from .coco import read_image
from .layouts import Split


def tile_starts(length: int, size: int, overlap: float) -> list[int]:
    """Offsets of the tiles along one side: step size * (1 - overlap), the last one ending at `length`."""
    if length <= size:
        return [0]
    step = max(1, int(round(size * (1.0 - overlap))))
    starts = list(range(0, length - size, step))
    return starts + [length - size]


def cut_boxes(boxes: np.ndarray, x: int, y: int, w: int, h: int, min_visible: float) -> tuple[np.ndarray, np.ndarray]:
    """(kept, masked) boolean [N] for boxes [N,4] x1y1x2y2 in image pixels against the tile (x, y, w, h):
    kept when at least min_visible of the box's area lies in the tile, masked when some but less does."""
    inner = np.stack([boxes[:, 0].clip(x, x + w), boxes[:, 1].clip(y, y + h),
                      boxes[:, 2].clip(x, x + w), boxes[:, 3].clip(y, y + h)], axis=1)
    visible = (inner[:, 2] - inner[:, 0]).clip(0) * (inner[:, 3] - inner[:, 1]).clip(0)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clip(1e-9)
    fraction = visible / area
    kept = fraction >= min_visible
    return kept, (visible > 0) & ~kept


def _masked_tile(image: np.ndarray, boxes: np.ndarray, x: int, y: int, w: int, h: int, kept: np.ndarray,
                 masked: np.ndarray) -> np.ndarray:
    """The tile (x, y, w, h) of `image` with the masked boxes (in tile pixels) filled with its mean colour,
    except where a kept box lies (overlapping objects keep their pixels)."""
    tile = image[y:y + h, x:x + w].copy()
    if not masked.any():
        return tile
    region = np.zeros((h, w), bool)
    for flag, boxes_ in ((True, boxes[masked]), (False, boxes[kept])):
        for x1, y1, x2, y2 in boxes_:
            region[max(0, int(y1)):max(0, int(np.ceil(y2))), max(0, int(x1)):max(0, int(np.ceil(x2)))] = flag
    tile[region] = tile.reshape(-1, 3).mean(0).astype(np.uint8)
    return tile


def tile_split(split: Split, out: Path, size: int, overlap: float = 0.2, min_visible: float = 0.5,
               keep_empty: bool = False, progress: bool = True) -> tuple[dict, collections.Counter]:
    """Write the tiles of one split's images under out/<split>/ and return (their COCO dict, counts)."""
    if size < 32:
        raise ConfigError(f"tile size must be at least 32 pixels, got {size}")
    if not 0 <= overlap < 1:
        raise ConfigError(f"overlap is a fraction of the tile in [0, 1), got {overlap}")
    if not 0 < min_visible <= 1:
        raise ConfigError(f"min_visible is a fraction of a box's area in (0, 1], got {min_visible}")
    folder = out / split.name
    folder.mkdir(parents=True, exist_ok=True)
    by_image = collections.defaultdict(list)
    for ann in split.coco["annotations"]:
        if not ann.get("iscrowd", 0):
            by_image[ann["image_id"]].append(ann)
    images, annotations, counts = [], [], collections.Counter()
    with Progress(len(split.coco["images"]), f"tiling {split.name}",
                  every=2.0 if progress else float("inf")) as bar:
        for entry in split.coco["images"]:
            bar.update()
            image, _ = read_image(split.images / entry["file_name"])
            if image is None:
                counts["images_unreadable"] += 1
                continue
            anns = by_image[entry["id"]]
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], np.float32).reshape(-1, 4)
            height, width = image.shape[:2]
            stem = Path(entry["file_name"]).with_suffix("").as_posix().replace("/", "_")
            for y in tile_starts(height, size, overlap):
                for x in tile_starts(width, size, overlap):
                    th, tw = min(size, height), min(size, width)
                    kept, masked = cut_boxes(boxes, x, y, tw, th, min_visible)
                    counts["boxes_cut_dropped"] += int(masked.sum())
                    if not kept.any() and not keep_empty:
                        counts["tiles_empty_skipped"] += 1
                        continue
                    tile = _masked_tile(image, boxes - [x, y, x, y], x, y, tw, th, kept, masked)
                    name = f"{stem}_{x}_{y}.png"
                    with atomic_path(folder / name) as tmp:
                        if not cv2.imwrite(str(tmp), cv2.cvtColor(tile, cv2.COLOR_RGB2BGR)):
                            raise ConfigError(f"could not write {folder / name}")
                    tile_id = len(images) + 1
                    images.append({"id": tile_id, "file_name": name, "width": tw, "height": th,
                                   "source": entry["file_name"], "x": x, "y": y})
                    for i in np.flatnonzero(kept):
                        x1, y1, x2, y2 = (float(v) for v in boxes[i])
                        x1, y1 = max(x1, x) - x, max(y1, y) - y
                        x2, y2 = min(x2, x + tw) - x, min(y2, y + th) - y
                        annotations.append({"id": len(annotations) + 1, "image_id": tile_id,
                                            "category_id": anns[i]["category_id"], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                            "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
                    counts["tiles"] += 1
                    counts["boxes_cut_kept"] += int(sum(
                        1 for b in boxes[kept] if b[0] < x or b[1] < y or b[2] > x + tw or b[3] > y + th))
    coco = {"images": images, "annotations": annotations, "categories": split.coco["categories"]}
    return coco, counts


def tile_dataset(splits: dict[str, Split], out: str | os.PathLike, size: int, overlap: float = 0.2,
                 min_visible: float = 0.5, keep_empty: bool = False, progress: bool = True) -> dict[str, collections.Counter]:
    """Tile every split into out/ in COCO layout (out/<split>/ and out/annotations/instances_<split>.json)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; give a new folder for the tiles")
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    report = {}
    for name, split in splits.items():
        coco, counts = tile_split(split, out, size, overlap, min_visible, keep_empty, progress)
        with atomic_path(out / "annotations" / f"instances_{name}.json") as tmp:
            Path(tmp).write_text(json.dumps(coco))
        counts["boxes"] = len(coco["annotations"])
        report[name] = counts
    return report
