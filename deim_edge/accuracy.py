"""Accuracy on labelled images: validation sets (a COCO annotation file and its image folder), matching a
model's classes to a set's categories, and COCO box AP -- the one scorer of the bench, the accuracy gate and
training. numpy only, plus faster-coco-eval (or pycocotools, when that is what is installed) for the scoring.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, MissingDependencyError
from .metadata import COCO_CLASSES
from .results import COCO80_TO_91

if TYPE_CHECKING:
    from .results import Detections

COCO_EXTRA = "bench"  # the extra that installs faster-coco-eval ("train" includes it)
METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six COCOeval stats, in order


@dataclass(frozen=True)
class ValSet:
    """A COCO annotation file, the folder of its images, and how many of them to use (None: all)."""

    annotations: Path
    images: Path
    max_images: int | None = None

    @classmethod
    def find(cls, data: str | os.PathLike | None = None, annotations: str | os.PathLike | None = None,
             images: str | os.PathLike | None = None, max_images: int | None = None) -> ValSet:
        """From a COCO-format folder (annotations/instances_val.json + val/, or the *2017 names), or from
        an annotation file and an image folder given apart (they override the folder's)."""
        if data is not None:
            root = Path(data)
            if not root.is_dir():
                raise ConfigError(f"--val-data {root} is not a folder")
            annotations = annotations or _first_existing(root / "annotations", ("instances_val.json",
                                                                                 "instances_val2017.json"))
            images = images or _first_existing(root, ("val", "val2017", "images"))
        if annotations is None or images is None:
            raise ConfigError("give --val-data FOLDER (with annotations/instances_val.json and val/), or both "
                              "--val-json and --val-images")
        annotations, images = Path(annotations), Path(images)
        if not annotations.is_file():
            raise ConfigError(f"COCO annotation file not found: {annotations}")
        if not images.is_dir():
            raise ConfigError(f"image folder not found: {images}")
        if max_images is not None and max_images < 1:
            raise ConfigError(f"max_images must be at least 1, got {max_images}")
        check_annotations(annotations, max_images)
        return cls(annotations, images, max_images)

    def ground_truth(self) -> tuple[Any, list[int]]:
        """(the COCO object of the annotations, the ids of the images to score: sorted, at most max_images)."""
        gt = load_coco(self.annotations)
        return gt, sorted(gt.getImgIds())[: self.max_images]


def check_annotations(path: str | os.PathLike, max_images: int | None = None) -> None:
    """ConfigError naming `path` and its first defect unless it is a COCO annotation file that boxes can be
    scored on: a JSON object with lists "images" (each with an id and a file_name), "categories" (each with an
    id) and "annotations" (each with an id, the id of a listed image and category, and a bbox [x, y, width,
    height] of finite numbers, width and height > 0), at least one of them, not a crowd region, in the images
    scored (the first `max_images` by id; None: all)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not a COCO annotation file (JSON): {e}") from None
    for key in ("images", "categories", "annotations"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise ConfigError(f"{path} is not a COCO annotation file: it has no {key!r} list")
    image_ids = _ids(path, data["images"], "images", ("id", "file_name"))
    category_ids = _ids(path, data["categories"], "categories", ("id",))
    for i, a in enumerate(data["annotations"]):
        defect = _annotation_defect(a, image_ids, category_ids)
        if defect:
            raise ConfigError(f"{path}: annotations[{i}] {defect}; fix the annotation file")
    scored = set(sorted(image_ids)[:max_images])
    if not any(a["image_id"] in scored and not a.get("iscrowd") for a in data["annotations"]):
        which = "its images" if len(scored) == len(image_ids) else f"the first {len(scored)} of its images"
        raise ConfigError(f"{path} has no box in {which} (crowd regions are not scored): there is nothing to "
                          f"score AP on; give a labelled set")


def _ids(path: str | os.PathLike, items: list, key: str, fields: tuple[str, ...]) -> set:
    """The ids of a COCO "images" or "categories" list; ConfigError for an entry without `fields`."""
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(item.get(f), (int, str)) for f in fields):
            raise ConfigError(f"{path}: {key}[{i}] is not an object with {' and '.join(fields)}; fix the "
                              f"annotation file")
    return {item["id"] for item in items}


def _annotation_defect(a: Any, image_ids: set, category_ids: set) -> str | None:
    """What is wrong with one COCO annotation, or None."""
    if not isinstance(a, dict) or not isinstance(a.get("id"), (int, str)):
        return "is not an object with an id"
    if not isinstance(a.get("image_id"), (int, str)) or a["image_id"] not in image_ids:
        return f"has image_id {a.get('image_id')!r}, which is not in its 'images'"
    if not isinstance(a.get("category_id"), (int, str)) or a["category_id"] not in category_ids:
        return f"has category_id {a.get('category_id')!r}, which is not in its 'categories'"
    box = a.get("bbox")
    if not (isinstance(box, list) and len(box) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
        return f"has bbox {box!r}, not [x, y, width, height]"
    if not (box[2] > 0 and box[3] > 0):
        return f"has bbox {box}: its width and height must be > 0"
    return None


def coco_api() -> tuple[Any, Any]:
    """(COCO, COCOeval) of faster-coco-eval or pycocotools; MissingDependencyError naming the extra."""
    try:
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    except ImportError:
        pass
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    except ImportError:
        raise MissingDependencyError(f"COCO AP needs faster-coco-eval (or pycocotools): pip install "
                                     f"'deim-edge[{COCO_EXTRA}]' or pip install faster-coco-eval") from None


def load_coco(annotations: str | os.PathLike) -> Any:
    """A COCO annotation file as the COCO object of the installed library (its loading messages silenced)."""
    coco_cls, _ = coco_api()
    with contextlib.redirect_stdout(io.StringIO()):
        return coco_cls(os.fspath(annotations))


def category_mapping(names: Sequence[str], categories: list[dict]) -> list[int]:
    """The dataset category id of each of a model's labels (`names`, in label order): by class name, else by
    position (`categories` sorted by id, the order deim-edge training uses; COCO's 80 classes map to their
    91 ids). ConfigError when neither fits."""
    by_name = {c["name"]: c["id"] for c in categories}
    if all(n in by_name for n in names):
        return [by_name[n] for n in names]
    ids = sorted(by_name.values())
    if len(ids) == len(names):
        return ids
    if tuple(names) == COCO_CLASSES and set(ids) <= set(COCO80_TO_91):
        return list(COCO80_TO_91)
    raise ConfigError(f"cannot match the model's {len(names)} classes ({', '.join(names[:5])}, ...) to the "
                      f"annotation file's {len(ids)} categories ({', '.join(list(by_name)[:5])}, ...): "
                      f"their names differ and their counts differ")


def score(gt: Any, detections: Mapping[int, Detections], category_ids: Sequence[int],
          image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """COCO box metrics {AP, AP50, AP75, APs, APm, APl} of `detections` on the images `image_ids` of `gt`.

    detections: {image id (the annotation file's): Detections in that image's pixels}; labels become
    category ids through `category_ids` (label i -> category_ids[i]). An image of image_ids (default: every
    image of gt) without an entry has no detections. Metrics are in [0, 1], -1.0 where COCO has nothing to
    measure (no ground truth of that size); all 0.0 when there are no detections at all.
    """
    image_ids = sorted(gt.getImgIds()) if image_ids is None else [int(i) for i in image_ids]
    unknown = set(detections) - set(image_ids)
    if unknown:
        raise ConfigError(f"detections for image ids not in the dataset: {sorted(unknown)[:5]}; key the "
                          "detections by the image ids of the same annotation file")
    records = [r for image_id, dets in detections.items() for r in dets.to_coco(int(image_id), category_ids)]
    if not records:  # pycocotools cannot load an empty result list
        return {m: 0.0 for m in METRICS}
    _, eval_cls = coco_api()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = eval_cls(gt, gt.loadRes(records), "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {m: round(float(v), 4) for m, v in zip(METRICS, evaluator.stats)}


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).exists()), None)
