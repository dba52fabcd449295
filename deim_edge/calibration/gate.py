"""The accuracy gate: an artifact measured against the FP32 PyTorch model on the same images.

With COCO labels (--val-data), the COCO AP of both and the drop in AP points (AP50:95 x 100). Without labels,
agreement with the FP32 model: the share of its detections (score >= REF_CONF, at most TOP per image) that the
artifact finds again (same label, IoU >= MATCH_IOU), the mean IoU of those matches and their mean score error;
the drop is then the share missed, in points (100 x (1 - matched)). Both are always reported when labels exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..accuracy import ValSet, category_mapping, score
from ..compare import agreement
from ..detector import Detector
from ..errors import AccuracyGateError, ConfigError
from ..media import image_files
from ..preprocess import load_image
from ..progress import Progress, step
from ..results import Detections

REF_CONF = 0.25  # the FP32 detections that must be found again (the Detector's default threshold)
TOP = 100
MATCH_IOU = 0.5


@dataclass(frozen=True)
class GateData:
    """The images the gate runs on: a labelled COCO set, or unlabelled images (arrays, RGB)."""

    val: ValSet | None = None
    images: tuple[np.ndarray, ...] = ()
    description: str = ""

    @classmethod
    def find(cls, val_data: str | os.PathLike | None, fallback: Sequence[np.ndarray] = (),
             fallback_description: str = "") -> GateData:
        """A COCO folder (annotations/instances_val.json + val/) gives AP; a folder of plain images gives
        agreement; None: `fallback` (e.g. the calibration images) for agreement."""
        if val_data is None:
            if not len(fallback):
                raise ConfigError("the accuracy gate needs images: give --val-data (a COCO folder, or a folder of "
                                  "images)")
            return cls(images=tuple(fallback), description=fallback_description)
        found = find_val_data(val_data)
        if isinstance(found, ValSet):
            return cls(val=found, description=f"COCO {found.annotations}")
        return cls(images=tuple(load_image(f, color="RGB") for f in found),
                   description=f"{len(found)} unlabelled images in {val_data}")


def find_val_data(val_data: str | os.PathLike) -> ValSet | list[Path]:
    """--val-data: a COCO folder as its ValSet (the annotation file checked), or the image files of a folder of
    plain images. ConfigError (ImageError) for anything else, before any image is read: an export calls it
    before its long work."""
    root = Path(val_data)
    if root.is_dir() and not (root / "annotations").is_dir():
        return image_files([root])
    return ValSet.find(root)


def detection_agreement(reference: Sequence[Detections], candidate: Sequence[Detections]) -> dict[str, float]:
    """How well `candidate` reproduces `reference` image by image (see the module docstring)."""
    a = agreement(reference, candidate, MATCH_IOU, conf=REF_CONF, top=TOP)
    return {"matched": round(a.share, 4), "reference_detections": a.compared, "mean_iou": a.mean_iou,
            "score_error": a.score_error}


def measure(candidate: Detector, reference: Detector, data: GateData,
            reference_figures: dict | None = None, progress: bool = True) -> dict:
    """The gate's figures of `candidate` against `reference` (the FP32 model) on `data`, each run once over the
    images; `reference_figures` (a previous call's "_reference" entry) saves running the reference again."""
    cached = reference_figures or {}
    images, val = (data.images, None) if data.val is None else val_images(data.val)
    ref_dets = cached.get("_detections") or _detect(reference, images, "FP32 reference", progress)
    got = _detect(candidate, images, "artifact", progress)
    figures = {"images": len(images), "data": data.description, **detection_agreement(ref_dets, got)}
    float_precision = getattr(candidate.runtime, "float_precision", None)  # e.g. OpenVINO's bf16 on this CPU
    if float_precision is not None:
        figures["float_precision"] = float_precision
    if val is not None:
        gt, image_ids = val
        ref_ap = cached.get("AP") or _ap(gt, image_ids, ref_dets, reference.names)
        ap = _ap(gt, image_ids, got, candidate.names)
        figures.update({"metric": "AP", "AP": ap["AP"], "AP50": ap["AP50"], "reference_AP": ref_ap["AP"],
                        "reference_AP50": ref_ap["AP50"], "drop": round(100 * (ref_ap["AP"] - ap["AP"]), 2)})
        figures["_reference"] = {"AP": ref_ap, "_detections": ref_dets}
    else:
        figures.update({"metric": "agreement", "drop": round(100 * (1 - figures["matched"]), 2)})
        figures["_reference"] = {"_detections": ref_dets}
    step(f"accuracy: {summary(figures)}")
    return figures


def _ap(gt, image_ids: list[int], detections: Sequence[Detections], names: tuple[str, ...]) -> dict[str, float]:
    categories = category_mapping(names, gt.loadCats(gt.getCatIds()))
    return score(gt, dict(zip(image_ids, detections)), categories, image_ids)


def check(figures: dict, max_drop: float | None, what: str) -> None:
    """AccuracyGateError when the drop exceeds max_drop (None: no limit)."""
    if max_drop is not None and figures["drop"] > max_drop:
        raise AccuracyGateError(f"{what} fails the accuracy gate: {summary(figures)}, more than --max-drop "
                                f"{max_drop:g}; nothing was written")


def summary(figures: dict) -> str:
    """One line: the drop and what it is measured in."""
    agreement = (f"{figures['matched']:.1%} of {figures['reference_detections']} FP32 detections matched, "
                 f"mean IoU {figures['mean_iou']}, score error {figures['score_error']}")
    if figures["metric"] == "AP":
        return (f"AP {figures['AP']:.4f} vs FP32 {figures['reference_AP']:.4f} (drop {figures['drop']:.2f} AP "
                f"points) on {figures['images']} images; {agreement}{_float_ops(figures)}")
    return (f"drop {figures['drop']:.2f} points of agreement on {figures['images']} images: {agreement}"
            f"{_float_ops(figures)}")


def _float_ops(figures: dict) -> str:
    precision = figures.get("float_precision")
    return f"; float ops in {precision}" if precision not in (None, "f32") else ""


def public(figures: dict) -> dict:
    """The figures without the cached reference results (what goes into metadata and reports)."""
    return {k: v for k, v in figures.items() if not k.startswith("_")}


def val_images(val: ValSet) -> tuple[list[np.ndarray], tuple]:
    """The images of `val` (RGB) in image-id order, and (its COCO ground truth, those ids); ConfigError when the
    annotation file names images its folder does not have."""
    gt, image_ids = val.ground_truth()
    infos = gt.loadImgs(image_ids)
    missing = [i["file_name"] for i in infos if not (val.images / i["file_name"]).is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} of the {len(infos)} images {val.annotations.name} lists are not in "
                          f"{val.images} (first: {missing[0]}): the annotation file does not match the image folder")
    return [load_image(val.images / i["file_name"], color="RGB") for i in infos], (gt, image_ids)


def _detect(detector: Detector, images: Sequence[np.ndarray], desc: str, progress: bool) -> list[Detections]:
    conf, detector.conf = detector.conf, 0.0
    out = []
    try:
        with Progress(len(images), desc, enabled=progress) as bar:
            for image in images:
                out.append(detector(image, color="RGB"))
                bar.update()
    finally:
        detector.conf = conf
    return out
