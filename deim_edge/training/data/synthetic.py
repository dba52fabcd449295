"""A synthetic COCO-format detection set written to disk: the scenes of deim_edge.synthetic, as image files
and COCO JSONs. For tests, benchmarks and `python -m deim_edge train --data synthetic`."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from ...errors import ConfigError
from ...fileio import atomic_path
from ...progress import Progress
from ...sizes import as_hw
from ...synthetic import class_names, draw_scene

CATEGORY_IDS = (3, 7, 11, 20, 42, 57)  # one per shape; deliberately not contiguous, so the label mapping is exercised


class SyntheticCoco(NamedTuple):
    """Where make_synthetic_coco wrote the set; images paths are the folders the JSONs refer to."""
    train_images: Path
    train_json: Path
    val_images: Path
    val_json: Path


def _image_size(rng: np.random.Generator, image_size: int | tuple[int, int],
                size_range: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) of the next image: fixed, or each side drawn from size_range."""
    if size_range is not None:
        lo, hi = size_range
        return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
    return as_hw(image_size)


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data))


def make_synthetic_coco(out_dir: str | os.PathLike, num_images: int = 200,
                        image_size: int | tuple[int, int] = (320, 320), num_classes: int = 4, seed: int = 0,
                        split_val: float = 0.2, size_range: tuple[int, int] | None = None,
                        image_format: str = "jpg", progress: bool = False) -> SyntheticCoco:
    """Write a COCO-format set under out_dir: train/ and val/ image folders and
    annotations/instances_{train,val}.json, each file written atomically.

    image_size is (height, width) (or one int) for every image; size_range=(lo, hi) draws each side
    of each image from lo..hi instead. Classes are deim_edge.synthetic.class_names(num_classes), category ids
    CATEGORY_IDS[:num_classes]. The same arguments always give the same files.
    """
    names = class_names(num_classes)
    if image_format not in ("jpg", "png"):
        raise ConfigError(f"image_format must be 'jpg' or 'png', not {image_format!r}")
    if num_images < 1 or not 0 <= split_val < 1:
        raise ConfigError("num_images must be >= 1 and split_val in [0, 1)")
    out = Path(out_dir)
    num_val = int(round(num_images * split_val))
    val_ids = set(np.random.default_rng(seed).permutation(num_images)[:num_val].tolist())
    categories = [{"id": CATEGORY_IDS[i], "name": name, "supercategory": "shape"} for i, name in enumerate(names)]
    splits = {name: {"images": [], "annotations": [], "categories": categories} for name in ("train", "val")}
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if image_format == "jpg" else []
    ann_id = 1
    bar = Progress(num_images, "synthetic images") if progress else None
    for index in range(num_images):
        rng = np.random.default_rng([seed, index])
        h, w = _image_size(rng, image_size, size_range)
        image, boxes, labels, instances = draw_scene(rng, h, w, num_classes)
        split = "val" if index in val_ids else "train"
        name = f"{index:06d}.{image_format}"
        ok, data = cv2.imencode(f".{image_format}", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise ConfigError(f"OpenCV could not encode {image_format}; check the opencv-python install")
        with atomic_path(out / split / name) as tmp:
            data.tofile(str(tmp))
        splits[split]["images"].append({"id": index + 1, "file_name": name, "height": h, "width": w})
        areas = np.bincount(instances.ravel(), minlength=len(labels) + 1)[1:]
        for box, label, area in zip(boxes.tolist(), labels.tolist(), areas.tolist()):
            x1, y1, x2, y2 = box
            splits[split]["annotations"].append({
                "id": ann_id, "image_id": index + 1, "category_id": CATEGORY_IDS[label],
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": float(area), "iscrowd": 0})
            ann_id += 1
        if bar is not None:
            bar.update(note=name)
    for split, data in splits.items():
        _write_json(out / "annotations" / f"instances_{split}.json", data)
    return SyntheticCoco(out / "train", out / "annotations" / "instances_train.json",
                         out / "val", out / "annotations" / "instances_val.json")
