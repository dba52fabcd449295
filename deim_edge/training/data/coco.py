"""CocoDetection: a COCO-format detection set (one JSON + an image folder) as training samples.

A sample is `(image, target)`: image HxWx3 uint8 RGB; target {"boxes": float32 [N,4] x1y1x2y2 pixels,
"labels": int64 [N] in 0..C-1, "image_id": int (the JSON's id), "orig_size": (h, w)}. Bad entries are
dropped or clipped at construction and counted; `report()` says what and why.
"""
from __future__ import annotations

import collections
import functools
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ...accuracy import load_coco
from ...errors import ConfigError, ImageError

Sample = tuple[np.ndarray, dict[str, Any]]
Transform = Callable[[np.ndarray, dict[str, Any]], Sample]

# the reasons counted in `CocoDetection.counts`, in the order report() lists them
REASONS = {
    "image_missing": "images whose file is missing",
    "image_unreadable": "images whose file could not be decoded",
    "image_malformed": "image entries without a usable id/file_name (or a repeated id)",
    "image_empty": "images without any usable box (kept as background)",
    "image_grayscale": "grayscale images read as 3 channels",
    "image_alpha": "images with an alpha channel (dropped)",
    "image_16bit": "16-bit images scaled to 8 bits",
    "ann_malformed": "annotations without a usable image_id/category_id/bbox",
    "ann_unknown_image": "annotations of an image id not in 'images'",
    "ann_unknown_category": "annotations with a category id not in 'categories'",
    "ann_crowd": "iscrowd annotations (skipped, as the official code does)",
    "ann_degenerate": "boxes with zero, negative or non-finite size",
    "ann_outside": "boxes entirely outside their image",
    "ann_clipped": "boxes clipped to their image (kept)",
}


class DatasetWarning(UserWarning):
    """Data a dataset skipped, clipped or converted; issued once per dataset with the counts."""


def read_image(path: str | os.PathLike) -> tuple[np.ndarray | None, str | None]:
    """Decode an image file as HxWx3 uint8 RGB (EXIF orientation ignored, as COCO boxes expect).

    Returns (image, note): image None when the file cannot be decoded; note names a conversion made
    ("image_grayscale", "image_alpha", "image_16bit") or is None.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # np.fromfile + imdecode: non-ASCII paths work
    except OSError:
        return None, None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None or image.size == 0:
        return None, None
    note = None
    if image.dtype == np.uint16:
        image, note = (image >> 8).astype(np.uint8), "image_16bit"
    elif image.dtype != np.uint8:
        return None, None
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB), "image_grayscale"
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB), "image_alpha"
    if image.shape[2] != 3:
        return None, None
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB), note


def _require(data: Any, key: str, kind: type, path: Path) -> list:
    """data[key], which must exist and be a `kind`, or a ConfigError that says what is wrong."""
    if key not in data:
        raise ConfigError(f"{path}: the COCO JSON has no '{key}' list; a detection set needs "
                          "'images', 'annotations' and 'categories' at its top level")
    if not isinstance(data[key], kind):
        raise ConfigError(f"{path}: '{key}' must be a {kind.__name__}, found {type(data[key]).__name__}")
    return data[key]


def _load_json(path: Path) -> dict:
    """The parsed COCO JSON, checked for the three top-level lists."""
    if not path.is_file():
        raise ConfigError(f"annotation file {path} does not exist; pass the path of a COCO-format JSON")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); is it a COCO annotation file?") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a COCO JSON is an object with 'images', 'annotations' and "
                          f"'categories', found a {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        _require(data, key, list, path)
    return data


def _categories(data: dict, path: Path) -> tuple[list[int], list[str]]:
    """Category ids sorted ascending, and their names; label i is the i-th id."""
    cats = {}
    for cat in data["categories"]:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or isinstance(cat.get("id"), bool):
            raise ConfigError(f"{path}: every category needs an integer 'id' and a 'name', found {cat!r}")
        if cat["id"] in cats:
            raise ConfigError(f"{path}: category id {cat['id']} appears twice in 'categories'")
        cats[cat["id"]] = str(cat.get("name", cat["id"]))
    if not cats:
        raise ConfigError(f"{path}: 'categories' is empty; list the classes as {{'id': ..., 'name': ...}}")
    ids = sorted(cats)
    return ids, [cats[i] for i in ids]


def _box(ann: dict, size: tuple[int, int] | None, counts: collections.Counter) -> list[float] | None:
    """The annotation's bbox as x1,y1,x2,y2 clipped to size (h, w) when known; None if dropped."""
    bbox = ann.get("bbox")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        counts["ann_malformed"] += 1
        return None
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        counts["ann_degenerate"] += 1
        return None
    box = [x, y, x + w, y + h]
    if size is not None:
        clipped = [min(max(box[0], 0.0), size[1]), min(max(box[1], 0.0), size[0]),
                   min(max(box[2], 0.0), size[1]), min(max(box[3], 0.0), size[0])]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            counts["ann_outside"] += 1
            return None
        if clipped != box:
            counts["ann_clipped"] += 1
        box = clipped
    return box


class CocoDetection:
    """COCO-format detection samples with contiguous labels 0..C-1 (categories sorted by id).

    `class_names[label]`, `category_ids[label]` (the JSON's id), `num_classes`, `image_ids` (the kept
    images' original ids, in sample order), `coco` (a COCO object of the JSON, for
    evaluation), `counts` (what was dropped, clipped or converted) and `report()`.
    """

    def __init__(self, images_dir: str | os.PathLike, annotations_json: str | os.PathLike,
                 transforms: Transform | None = None) -> None:
        self.images_dir, self.annotations_json = Path(images_dir), Path(annotations_json)
        self.transforms = transforms
        self.counts: collections.Counter = collections.Counter()
        data = _load_json(self.annotations_json)
        ids, names = _categories(data, self.annotations_json)
        self.category_ids, self.class_names = tuple(ids), tuple(names)
        self._label_of = {cid: label for label, cid in enumerate(ids)}
        self._records = self._image_records(data)
        self._add_annotations(data)
        self._drop_unreadable_head()
        self._warned_at_load = False
        self.counts["image_empty"] = sum(1 for r in self._records if not r["labels"])
        if sum(len(r["labels"]) for r in self._records) == 0:
            raise ConfigError(f"{self.annotations_json}: none of the {len(self._records)} readable images has a "
                              f"usable box.\n{self.report()}\nCheck that the boxes are [x, y, width, height] "
                              "in pixels and that their category ids are listed in 'categories'.")
        if any(v for k, v in self.counts.items() if k != "image_empty"):
            warnings.warn(f"{self.annotations_json.name}: {self.report()}", DatasetWarning, stacklevel=2)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_ids(self) -> list[int]:
        return [r["id"] for r in self._records]

    @functools.cached_property
    def coco(self):
        """The annotation JSON as a COCO object of faster-coco-eval or pycocotools (original image and category
        ids), for deim_edge.accuracy.score."""
        return load_coco(self.annotations_json)

    def _image_records(self, data: dict) -> list[dict]:
        """One record per image entry whose id and file are usable, in JSON order."""
        records, seen = [], set()
        for entry in data["images"]:
            image_id = entry.get("id") if isinstance(entry, dict) else None
            name = entry.get("file_name") if isinstance(entry, dict) else None
            if not isinstance(image_id, int) or isinstance(image_id, bool) or not isinstance(name, str) \
                    or image_id in seen:
                self.counts["image_malformed"] += 1
                continue
            seen.add(image_id)
            path = self.images_dir / name
            if not path.is_file():
                self.counts["image_missing"] += 1
                continue
            h, w = entry.get("height"), entry.get("width")
            size = (h, w) if all(isinstance(v, int) and v > 0 for v in (h, w)) else None
            records.append({"id": image_id, "path": path, "size": size, "boxes": [], "labels": []})
        return records

    def _add_annotations(self, data: dict) -> None:
        """Attach each usable annotation to its image record, counting every one left out."""
        by_id = {r["id"]: r for r in self._records}
        all_ids = {e.get("id") for e in data["images"] if isinstance(e, dict) and isinstance(e.get("id"), int)}
        for ann in data["annotations"]:
            if not isinstance(ann, dict) or not isinstance(ann.get("image_id"), int) \
                    or not isinstance(ann.get("category_id"), int):
                self.counts["ann_malformed"] += 1
                continue
            if ann["image_id"] not in all_ids:
                self.counts["ann_unknown_image"] += 1
                continue
            record = by_id.get(ann["image_id"])
            if record is None:  # its image was dropped, and counted, already
                continue
            if ann.get("iscrowd", 0):
                self.counts["ann_crowd"] += 1
                continue
            label = self._label_of.get(ann["category_id"])
            if label is None:
                self.counts["ann_unknown_category"] += 1
                continue
            box = _box(ann, record["size"], self.counts)
            if box is not None:
                record["boxes"].append(box)
                record["labels"].append(label)

    def _drop_unreadable_head(self) -> None:
        """Decode images from the front until one reads, dropping those that do not; at least one
        image must read, so a set of broken files fails here rather than in the first epoch."""
        while self._records:
            image, _ = read_image(self._records[0]["path"])
            if image is not None:
                return
            self.counts["image_unreadable"] += 1
            self._records.pop(0)
        raise ConfigError(f"{self.annotations_json}: no usable image in {self.images_dir}.\n{self.report()}\n"
                          "Check that images_dir is the folder the JSON's 'file_name' entries are relative to.")

    def records(self) -> list[dict]:
        """The kept images' records ({'id', 'path', 'size' (h, w) or None, 'boxes' x1y1x2y2, 'labels'}), read only."""
        return self._records

    def report(self) -> str:
        """What was dropped, clipped or converted so far, with counts (one line per reason)."""
        lines = [f"{len(self._records)} images, {sum(len(r['labels']) for r in self._records)} boxes, "
                 f"{self.num_classes} classes"]
        lines += [f"  {self.counts[k]} {text}" for k, text in REASONS.items() if self.counts[k]]
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Sample:
        """The sample at `index`, or the next readable one when its file cannot be decoded now."""
        for step in range(len(self._records)):
            record = self._records[(index + step) % len(self._records)]
            if record.get("unreadable"):
                continue
            image, note = read_image(record["path"])
            if image is None:
                record["unreadable"] = True
                self.counts["image_unreadable"] += 1
                self._warn_at_load(record["path"])
                continue
            if note is not None and not record.get("noted"):
                record["noted"] = True
                self.counts[note] += 1
            return self._sample(image, record)
        raise ImageError(f"none of the {len(self._records)} images of {self.images_dir} can be read any more; "
                         "were the files removed or changed during training?")

    def _warn_at_load(self, path: Path) -> None:
        """One warning for the first file that fails to decode during iteration; the rest are counted."""
        if not self._warned_at_load:
            self._warned_at_load = True
            warnings.warn(f"{path} could not be decoded; serving the next readable image instead "
                          "(further failures are counted in report())", DatasetWarning, stacklevel=3)

    def _sample(self, image: np.ndarray, record: dict) -> Sample:
        """(image, target) for a decoded image; boxes clipped again to the real size if it differs."""
        h, w = image.shape[:2]
        boxes = np.asarray(record["boxes"], dtype=np.float32).reshape(-1, 4)  # [N,4] x1y1x2y2
        labels = np.asarray(record["labels"], dtype=np.int64)  # [N]
        if record["size"] != (h, w):
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, labels = boxes[keep], labels[keep]
        target = {"boxes": boxes, "labels": labels, "image_id": record["id"], "orig_size": (h, w)}
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target
