"""The benchmark's accuracy column: COCO box AP of a Detector on a validation set, scored by
deim_edge.accuracy (faster-coco-eval, or pycocotools when that is what is installed)."""

from __future__ import annotations

from ..accuracy import ValSet, category_mapping, score
from ..progress import Progress


def coco_ap(detector, val: ValSet, desc: str = "AP") -> dict[str, float]:
    """{"AP", "AP50", ..., "images"} of `detector` (every detection, whatever its score) on `val`."""
    gt, image_ids = val.ground_truth()
    category_ids = category_mapping(detector.names, gt.loadCats(gt.getCatIds()))
    detections = {}
    conf, detector.conf = detector.conf, 0.0
    try:
        with Progress(len(image_ids), desc) as bar:
            for info in gt.loadImgs(image_ids):
                detections[info["id"]] = detector(str(val.images / info["file_name"]))
                bar.update()
    finally:
        detector.conf = conf
    return {**score(gt, detections, category_ids, image_ids), "images": len(image_ids)}
