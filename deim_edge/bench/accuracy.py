"""COCO box AP of a Detector on a COCO-format validation set, for the benchmark's accuracy column.

Scored with faster-coco-eval, or pycocotools when that is what is installed. A detector's labels are
matched to the annotation file's categories by class name, else by position (categories sorted by id,
the order deim-edge training uses; COCO's 80 classes map to their 91 ids).
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingDependencyError
from ..metadata import COCO_CLASSES
from ..progress import Progress
from ..results import COCO80_TO_91

COCO_EXTRA = "bench"  # the extra that installs faster-coco-eval
METRICS = ("AP", "AP50", "AP75")  # the first three COCOeval stats


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
        return cls(annotations, images, max_images)


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
        raise MissingDependencyError(f"the accuracy column needs faster-coco-eval (or pycocotools): "
                                     f"pip install 'deim-edge[{COCO_EXTRA}]' or pip install faster-coco-eval") from None


def coco_ap(detector, val: ValSet, desc: str = "AP") -> dict[str, float]:
    """{"AP", "AP50", "AP75", "images"} of `detector` (every detection, whatever its score) on `val`."""
    gt, image_ids = ground_truth(val)
    category_ids = category_mapping(detector.names, gt.loadCats(gt.getCatIds()))
    records = []
    conf, detector.conf = detector.conf, 0.0
    try:
        with Progress(len(image_ids), desc) as bar:
            for image_id in image_ids:
                info = gt.loadImgs(image_id)[0]
                records.extend(detector(str(val.images / info["file_name"])).to_coco(image_id, category_ids))
                bar.update()
    finally:
        detector.conf = conf
    return score(gt, records, image_ids)


def ground_truth(val: ValSet) -> tuple[Any, list[int]]:
    """(the COCO object of val's annotations, the ids of the images to score, sorted)."""
    coco_cls, _ = coco_api()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_cls(str(val.annotations))
    return gt, sorted(gt.getImgIds())[: val.max_images]


def score(gt: Any, records: list[dict], image_ids: list[int]) -> dict[str, float]:
    """{"AP", "AP50", "AP75", "images"} of COCO detection `records` on `image_ids` of `gt`."""
    if not records:
        return {**{m: 0.0 for m in METRICS}, "images": len(image_ids)}
    _, eval_cls = coco_api()
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = eval_cls(gt, gt.loadRes(records), "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {**{m: round(float(v), 4) for m, v in zip(METRICS, evaluator.stats)}, "images": len(image_ids)}


def category_mapping(names: tuple[str, ...], categories: list[dict]) -> list[int]:
    """The dataset category id of each of the detector's labels."""
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


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).exists()), None)

