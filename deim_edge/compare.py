"""Comparing detections: one numpy-only module for every export check, the accuracy gate, the demo and the tests.

Two levels:
- detections (`agreement`, `output_agreement`): each reference detection, highest score first, takes the unused
  candidate of the same label with the highest IoU, when that IoU reaches `min_iou` (greedy one-to-one). The
  figures: how many were found again, their IoU, their score and box differences.
- raw query rows (`match_queries`, `query_agreement`): the rows [Q, F] of two runs of one model (logits and box
  per query). Queries come sorted by encoder score, so two that tie to float precision may trade places between
  runtimes: rows are matched by nearest neighbour, never compared position by position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from .decode import box_iou, top_detections
from .results import Detections


@dataclass(frozen=True)
class Agreement:
    """How well a candidate reproduces a reference's detections."""

    compared: int  # reference detections compared
    matched: int  # of them found again (same label, IoU >= the threshold)
    mean_iou: float | None = None  # over the matched pairs (None: no pair)
    min_iou: float | None = None
    score_error: float | None = None  # mean |score difference| of the matched pairs
    max_score_diff: float = 0.0
    max_box_diff: float = 0.0  # largest |coordinate difference| of the matched pairs, in the boxes' units

    @property
    def share(self) -> float:
        """The fraction of the reference's detections found again (1.0 when there were none to find)."""
        return self.matched / self.compared if self.compared else 1.0

    @property
    def max_diff(self) -> float:
        """The largest score or box coordinate difference of the matched pairs."""
        return max(self.max_score_diff, self.max_box_diff)


def match(reference: Detections, candidate: Detections, min_iou: float) -> list[tuple[int, int, float]]:
    """(reference row, candidate row, IoU) pairs: greedy one to one in the reference's order, same label,
    IoU >= min_iou."""
    if not len(reference) or not len(candidate):
        return []
    iou = box_iou(reference.xyxy, candidate.xyxy)  # [R, C]
    iou[reference.labels[:, None] != candidate.labels[None, :]] = 0.0
    used = np.zeros(len(candidate), bool)
    pairs = []
    for r in range(len(reference)):
        row = np.where(used, -1.0, iou[r])
        c = int(row.argmax())
        if row[c] >= min_iou:
            used[c] = True
            pairs.append((r, c, float(row[c])))
    return pairs


def agreement(reference: Iterable[Detections], candidate: Iterable[Detections], min_iou: float,
              conf: float = 0.0, top: int | None = None, at_least: int = 0) -> Agreement:
    """How many of the reference's detections, image by image, the candidate finds again.

    Compared per image: the reference's detections scoring >= conf (at least `at_least` of its best, at most
    `top`), in score order.
    """
    compared = matched = 0
    ious, errors, score_diff, box_diff = [], [], 0.0, 0.0
    for ref, got in zip(reference, candidate):
        order = np.argsort(-ref.scores, kind="stable")
        keep = max(int((ref.scores >= conf).sum()), min(at_least, len(order)))
        ref = ref[order[:keep if top is None else min(keep, top)]]
        pairs = match(ref, got, min_iou)
        compared, matched = compared + len(ref), matched + len(pairs)
        for r, c, iou in pairs:
            ious.append(iou)
            errors.append(abs(float(ref.scores[r]) - float(got.scores[c])))
            box_diff = max(box_diff, float(np.abs(ref.xyxy[r] - got.xyxy[c]).max()))
        score_diff = max([score_diff, *errors[len(errors) - len(pairs):]])
    return Agreement(compared, matched,
                     mean_iou=round(float(np.mean(ious)), 4) if ious else None,
                     min_iou=round(float(np.min(ious)), 4) if ious else None,
                     score_error=round(float(np.mean(errors)), 5) if errors else None,
                     max_score_diff=score_diff, max_box_diff=box_diff)


def output_detections(outputs: Mapping[str, np.ndarray], layout: str, top: int) -> list[Detections]:
    """The top detections of each image of a runtime's outputs (RAW outputs are decoded first); boxes normalized."""
    scores, labels, boxes = top_detections(dict(outputs), layout, top)
    return [Detections(b, s, lab) for s, lab, b in zip(scores, labels, boxes)]


def output_agreement(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], layout: str,
                     top: int = 100, min_iou: float = 0.9) -> Agreement:
    """`agreement` of the top detections of two runtimes' outputs in one layout (RAW or TOPK)."""
    return agreement(output_detections(reference, layout, top), output_detections(candidate, layout, top), min_iou)


def query_rows(outputs: Iterable[np.ndarray]) -> np.ndarray:
    """[B, Q, F]: per image one row per query (RAW: logits then box) or detection (TOPK: score, label, box)."""
    outputs = [np.asarray(o) for o in outputs]
    return np.concatenate([o.reshape(*o.shape[:2], -1).astype(np.float32) for o in outputs], axis=-1)


def match_queries(got: np.ndarray, reference: np.ndarray, rtol: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """For one image's rows [Q, F]: the reference row nearest to each row of `got`, and their largest difference
    beyond rtol * |reference|."""
    excess = np.abs(got[:, None, :] - reference[None, :, :]) - rtol * np.abs(reference[None, :, :])
    cost = excess.max(-1)  # [Q, Q]
    nearest = cost.argmin(1)
    return nearest, cost[np.arange(len(got)), nearest]


def query_agreement(got: np.ndarray, reference: np.ndarray, atol: float) -> float:
    """The fraction of rows [B, Q, F] whose nearest reference row (of the same image) is within atol."""
    return float(np.mean([np.mean(match_queries(g, r)[1] <= atol) for g, r in zip(got, reference)]))
