"""The one comparator: detections matched one to one by label and IoU, raw query rows matched by nearest
neighbour; the gate, the demo and every export check read their figures from it."""

from __future__ import annotations

import numpy as np
import pytest

from deim_edge.calibration.gate import detection_agreement
from deim_edge.compare import agreement, match, match_queries, output_agreement, query_agreement, query_rows
from deim_edge.metadata import RAW, TOPK
from deim_edge.results import Detections

BOXES = np.array([[10, 10, 50, 50], [60, 60, 100, 100], [0, 0, 20, 20]], np.float32)


def dets(boxes=BOXES, scores=(0.9, 0.8, 0.1), labels=(1, 2, 1)) -> Detections:
    return Detections(np.asarray(boxes, np.float32), np.asarray(scores, np.float32), np.asarray(labels))


def test_identical_detections_agree_completely() -> None:
    a = agreement([dets()], [dets()], min_iou=0.9)
    assert (a.compared, a.matched, a.share, a.mean_iou, a.min_iou, a.max_diff) == (3, 3, 1.0, 1.0, 1.0, 0.0)


def test_label_iou_and_one_to_one() -> None:
    assert agreement([dets()], [dets(labels=(1, 3, 1))], min_iou=0.9).matched == 2
    shifted = agreement([dets()], [dets(boxes=BOXES + 4)], min_iou=0.4)  # the small box: IoU 0.47
    assert shifted.matched == 3 and shifted.max_box_diff == pytest.approx(4.0)
    assert agreement([dets()], [dets(boxes=BOXES + 4)], min_iou=0.9).matched == 0
    # two reference detections on one candidate box: only one of them is matched
    twins = dets(boxes=[BOXES[0], BOXES[0]], scores=(0.9, 0.8), labels=(1, 1))
    assert agreement([twins], [dets()[:1]], min_iou=0.5).matched == 1
    assert match(twins, dets()[:1], 0.5) == [(0, 0, 1.0)]


def test_conf_top_and_at_least_choose_what_is_compared() -> None:
    assert agreement([dets()], [dets()], 0.5, conf=0.5).compared == 2
    assert agreement([dets()], [dets()], 0.5, conf=0.5, top=1).compared == 1
    assert agreement([dets()], [dets()], 0.5, conf=0.95, at_least=2).compared == 2
    assert agreement([Detections.empty()], [dets()], 0.5).share == 1.0  # nothing to find
    assert agreement([dets()], [Detections.empty()], 0.5).share == 0.0


def test_scores_differences_are_reported() -> None:
    a = agreement([dets()], [dets(scores=(0.85, 0.8, 0.1))], 0.9)
    assert a.max_score_diff == pytest.approx(0.05) and a.score_error == pytest.approx(0.05 / 3, abs=1e-5)


def test_gate_figures_come_from_the_comparator() -> None:
    got = detection_agreement([dets()], [dets(labels=(1, 3, 1))])
    assert got == {"matched": 0.5, "reference_detections": 2, "mean_iou": 1.0, "score_error": 0.0}


def test_output_agreement_decodes_raw_outputs() -> None:
    boxes = np.array([[[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]]], np.float32)
    ref = {"scores": np.array([[0.9, 0.8]], np.float32), "labels": np.array([[1, 2]]), "boxes": boxes}
    assert output_agreement(ref, ref, TOPK).share == 1.0
    assert output_agreement(ref, {**ref, "labels": np.array([[1, 3]])}, TOPK).share == 0.5
    assert output_agreement(ref, {**ref, "boxes": boxes + np.float32(0.1)}, TOPK).share == 0.0  # IoU 0.39
    rng = np.random.default_rng(0)
    raw = {"logits": rng.normal(size=(2, 30, 5)).astype(np.float32),
           "boxes": rng.uniform(0.2, 0.4, (2, 30, 4)).astype(np.float32)}
    assert output_agreement(raw, raw, RAW, top=20).compared == 40
    assert output_agreement(raw, {**raw, "logits": -raw["logits"]}, RAW, top=20).share < 0.5


def test_query_rows_are_matched_not_compared_by_position() -> None:
    rows = query_rows([np.arange(12, dtype=np.float32).reshape(1, 3, 4), np.zeros((1, 3, 4), np.float32)])
    assert rows.shape == (1, 3, 8)
    swapped = rows[:, [1, 0, 2]]
    nearest, cost = match_queries(swapped[0], rows[0])
    assert nearest.tolist() == [1, 0, 2] and cost.max() == 0.0
    assert query_agreement(swapped, rows, atol=1e-6) == 1.0
    assert query_agreement(swapped + 0.5, rows, atol=0.1) == 0.0
