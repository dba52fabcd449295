"""The dataset check before training: what the boxes look like at the training size, against the variant.

`DataStats.of(dataset, size)` measures box sizes as the model will see them (each image resized to
size x size), objects per image, classes without boxes, duplicate and degenerate boxes. `report(stats,
variant)` turns them into a short text with suggestions (objects under one cell of the finest feature map,
more objects than queries, ...); `write_histogram` draws the box-size and objects-per-image histograms
with the strides and the query count marked. The trainer prints the report and saves both beside the run.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..fileio import atomic_path
from ..variants import Variant
from .data.coco import CocoDetection, read_image

DUPLICATE_IOU = 0.95  # two boxes of one class in one image this similar are counted as one object twice


def _iou_matrix(boxes: np.ndarray) -> np.ndarray:
    """Pairwise IoU [N,N] of x1y1x2y2 boxes."""
    lt = np.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clip(0).prod(-1)
    area = (boxes[:, 2:] - boxes[:, :2]).prod(-1)
    return inter / np.maximum(area[:, None] + area[None, :] - inter, 1e-9)


@dataclasses.dataclass
class DataStats:
    """Box statistics of a training set at one square training size."""

    size: int
    images: int
    class_names: tuple[str, ...]
    per_class: np.ndarray  # [C] boxes per class
    side: np.ndarray  # [N] sqrt(w * h) of every box, in pixels at the training size
    short_side: np.ndarray  # [N] min(w, h) at the training size
    per_image: np.ndarray  # [I] boxes per image
    duplicates: int  # same-class pairs with IoU >= DUPLICATE_IOU
    degenerate: int  # boxes under 2 px on a side at the training size

    @classmethod
    def of(cls, dataset: CocoDetection, size: int) -> "DataStats":
        sides, shorts, per_image, dup, per_class = [], [], [], 0, np.zeros(dataset.num_classes, np.int64)
        for record in dataset.records():
            hw = record["size"]
            if hw is None:  # missing from the JSON: decode the image
                image = read_image(record["path"])[0]
                if image is None:
                    continue  # unreadable: CocoDetection skips it when training too
                hw = image.shape[:2]
            h, w = hw
            boxes = np.asarray(record["boxes"], np.float64).reshape(-1, 4)
            labels = np.asarray(record["labels"], np.int64)
            scaled = boxes * np.array([size / w, size / h, size / w, size / h])
            bw, bh = scaled[:, 2] - scaled[:, 0], scaled[:, 3] - scaled[:, 1]
            sides.append(np.sqrt(bw * bh))
            shorts.append(np.minimum(bw, bh))
            per_image.append(len(boxes))
            np.add.at(per_class, labels, 1)
            if len(boxes) > 1:
                same = labels[:, None] == labels[None, :]
                dup += int(np.triu((_iou_matrix(boxes) >= DUPLICATE_IOU) & same, 1).sum())
        short = np.concatenate(shorts) if shorts else np.zeros(0)
        return cls(size, len(per_image), tuple(dataset.class_names), per_class,
                   np.concatenate(sides) if sides else np.zeros(0), short, np.asarray(per_image), dup,
                   int((short < 2).sum()))

    @property
    def boxes(self) -> int:
        return len(self.side)

    def median_side(self) -> float:
        return float(np.median(self.side)) if self.boxes else 0.0


def finest_stride(variant: Variant) -> int:
    """The stride of the variant's finest feature map (what its queries sample from)."""
    return int(min(variant.decoder.feat_strides))


def report(stats: DataStats, variant: Variant) -> list[str]:
    """The check as lines: the numbers, then one 'suggestion:' line per problem found."""
    stride, queries = finest_stride(variant), variant.decoder.num_queries
    side = stats.side
    lines = [f"dataset check at {stats.size}x{stats.size} for {variant.name} (finest stride {stride}, "
             f"{queries} queries): {stats.images} images, {stats.boxes} boxes, {len(stats.class_names)} classes"]
    if stats.boxes:
        p = np.percentile(side, [5, 50, 95])
        under = float((side < stride).mean())
        lines.append(f"  box size (sqrt of area, px at training size): 5% {p[0]:.0f}, median {p[1]:.0f}, "
                     f"95% {p[2]:.0f}; {under:.0%} under one stride-{stride} cell, "
                     f"{float((side < 2 * stride).mean()):.0%} under two")
    if stats.images:
        lines.append(f"  objects per image: median {np.median(stats.per_image):.0f}, max {stats.per_image.max()}, "
                     f"{int((stats.per_image == 0).sum())} images without any")
    counts = ", ".join(f"{n} {c}" for n, c in zip(stats.class_names, stats.per_class))
    lines.append(f"  boxes per class: {counts}")
    lines += _suggestions(stats, variant)
    return lines


def _suggestions(stats: DataStats, variant: Variant) -> list[str]:
    stride, queries = finest_stride(variant), variant.decoder.num_queries
    out = []
    if stats.boxes and float((stats.side < stride).mean()) > 0.1:
        larger = int(np.ceil(stats.size * 2 * stride / max(stats.median_side(), 1) / 32) * 32)
        out.append(f"suggestion: {float((stats.side < stride).mean()):.0%} of the objects are smaller than one "
                   f"{stride}-pixel cell at {stats.size}: train at --imgsz {min(larger, 4 * stats.size)} (the median "
                   "object then spans two cells), cut large images into tiles (python -m deim_edge tile), or use "
                   f"a variant whose finest feature map has stride 8 (deimv2-s and larger)")
    if stats.images and stats.per_image.max() > queries // 2:
        out.append(f"suggestion: up to {stats.per_image.max()} objects in one image against {queries} queries; "
                   "crowded images need a variant with more queries (deimv2-n and larger: 300) or tiles")
    empty = [n for n, c in zip(stats.class_names, stats.per_class) if c == 0]
    if empty:
        out.append(f"suggestion: classes without any training box ({', '.join(empty)}): the model can never "
                   "detect them; add boxes or drop them from 'categories'")
    if stats.duplicates:
        out.append(f"suggestion: {stats.duplicates} pairs of same-class boxes overlap with IoU >= {DUPLICATE_IOU} "
                   "(an object labelled twice?); a duplicate teaches the model a second, competing box")
    if stats.degenerate:
        out.append(f"suggestion: {stats.degenerate} boxes are under 2 px on a side at {stats.size}; they are "
                   "likely labelling slips, and the recipe's minimum box size drops most of them")
    return out


def write_histogram(stats: DataStats, variant: Variant, path: str | Path) -> Path:
    """A PNG: box sizes (log scale) with the feature-map strides marked, and objects per image with the
    query count marked; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    ax_size, ax_count = fig.subplots(1, 2)
    if stats.boxes:
        bins = np.geomspace(max(1.0, stats.side.min()), max(2.0, stats.side.max()), 30)
        ax_size.hist(stats.side, bins=bins, color="tab:blue")
        ax_size.set_xscale("log")
    for s in variant.decoder.feat_strides:
        ax_size.axvline(s, color="tab:red", linestyle="--")
        ax_size.annotate(f"stride {s}", (s, 0.95), xycoords=("data", "axes fraction"), rotation=90,
                         ha="right", va="top", fontsize=8, color="tab:red")
    ax_size.set(title=f"box size at {stats.size} px (sqrt of area)", xlabel="pixels", ylabel="boxes")
    ax_count.hist(stats.per_image, bins=min(30, max(1, int(stats.per_image.max()) + 1)), color="tab:green")
    ax_count.axvline(variant.decoder.num_queries, color="tab:red", linestyle="--")
    ax_count.annotate(f"{variant.decoder.num_queries} queries", (variant.decoder.num_queries, 0.95),
                      xycoords=("data", "axes fraction"), rotation=90, ha="right", va="top", fontsize=8,
                      color="tab:red")
    ax_count.set(title="objects per image", xlabel="boxes in one image", ylabel="images")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return Path(path)
