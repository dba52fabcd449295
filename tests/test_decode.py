"""The one decode: hand-computed cases, tie order, batch rows, torch's decode, official outputs."""

from __future__ import annotations

import numpy as np
import pytest

from deim_edge.decode import cxcywh_to_xyxy, decode, official_to_topk
from deim_edge.errors import ConfigError


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_hand_computed_case_with_one_query_under_two_classes():
    # Q=3 queries, C=2 classes; query 1 is the best for class 0 (0.9) and third for class 1 (0.7)
    probs = np.array([[[0.2, 0.8], [0.9, 0.7], [0.1, 0.05]]])
    boxes = np.array([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5], [0.9, 0.1, 0.2, 0.2]]], np.float32)
    scores, labels, xyxy = decode(np.vectorize(_logit)(probs).astype(np.float32), boxes, max_det=4)
    np.testing.assert_allclose(scores, [[0.9, 0.8, 0.7, 0.2]], rtol=1e-6)
    np.testing.assert_array_equal(labels, [[0, 1, 1, 0]])  # flat indices 2, 1, 3, 0: label = i % 2
    query_box = {0: [0.4, 0.3, 0.6, 0.7], 1: [0.0, 0.5, 0.5, 1.0]}
    np.testing.assert_allclose(xyxy[0], [query_box[1], query_box[0], query_box[1], query_box[0]], atol=1e-7)
    assert scores.dtype == np.float32 and labels.dtype == np.int64 and xyxy.dtype == np.float32
    assert scores.shape == (1, 4) and labels.shape == (1, 4) and xyxy.shape == (1, 4, 4)


def test_k_is_capped_at_queries_times_classes():
    logits = np.zeros((2, 3, 2), np.float32)
    scores, labels, boxes = decode(logits, np.zeros((2, 3, 4), np.float32), max_det=300)
    assert scores.shape == (2, 6) and boxes.shape == (2, 6, 4)
    np.testing.assert_allclose(scores, 0.5)
    np.testing.assert_array_equal(labels, [[0, 1, 0, 1, 0, 1]] * 2)  # all tied: flat index order


def test_ties_keep_the_lowest_indices_at_the_cut():
    logits = np.full((1, 10, 3), -5.0, np.float32)
    logits[0, [7, 2, 9, 4], 1] = 2.0  # four equal scores, only three fit after the best one
    logits[0, 5, 0] = 3.0
    boxes = np.zeros((1, 10, 4), np.float32)
    boxes[0, :, 0] = np.arange(10) / 10  # cx tells the query
    scores, labels, xyxy = decode(logits, boxes, max_det=4)
    np.testing.assert_allclose(scores[0], 1 / (1 + np.exp(-np.array([3.0, 2.0, 2.0, 2.0]))), rtol=1e-6)
    # flat index 15 first, then of the tied 7, 13, 22, 28 (queries 2, 4, 7, 9) the lowest three
    np.testing.assert_allclose(xyxy[0, :, 0], [0.5, 0.2, 0.4, 0.7], atol=1e-7)
    np.testing.assert_array_equal(labels[0], [0, 1, 1, 1])


def test_rows_of_a_batch_are_independent():
    rng = np.random.default_rng(0)
    logits = rng.normal(-3, 2, (3, 50, 7)).astype(np.float32)
    boxes = rng.uniform(0.1, 0.9, (3, 50, 4)).astype(np.float32)
    scores, labels, xyxy = decode(logits, boxes, max_det=20)
    for b in range(3):
        one = decode(logits[b:b + 1], boxes[b:b + 1], max_det=20)
        np.testing.assert_array_equal(one[0][0], scores[b])
        np.testing.assert_array_equal(one[1][0], labels[b])
        np.testing.assert_array_equal(one[2][0], xyxy[b])
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_matches_a_full_sort():
    rng = np.random.default_rng(1)
    logits = np.round(rng.normal(-3, 2, (1, 300, 80)), 1).astype(np.float32)  # many exact ties
    boxes = rng.uniform(0, 1, (1, 300, 4)).astype(np.float32)
    scores, labels, xyxy = decode(logits, boxes, max_det=300)
    flat = 1 / (1 + np.exp(-logits[0].reshape(-1).astype(np.float32)))
    order = np.lexsort((np.arange(flat.size), -flat))[:300]
    np.testing.assert_array_equal(labels[0], order % 80)
    np.testing.assert_allclose(scores[0], flat[order], rtol=1e-6)
    np.testing.assert_array_equal(xyxy[0], cxcywh_to_xyxy(boxes[0, order // 80]))


def test_half_precision_outputs_are_accepted():
    rng = np.random.default_rng(2)
    logits = rng.normal(-3, 2, (1, 20, 5)).astype(np.float16)
    boxes = rng.uniform(0, 1, (1, 20, 4)).astype(np.float16)
    scores, labels, xyxy = decode(logits, boxes, max_det=10)
    ref = decode(logits.astype(np.float32), boxes.astype(np.float32), max_det=10)
    np.testing.assert_array_equal(scores, ref[0])
    assert xyxy.dtype == np.float32


def test_matches_torch_decode():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    logits = rng.normal(-4, 2, (2, 300, 80)).astype(np.float32)
    boxes = rng.uniform(0, 1, (2, 300, 4)).astype(np.float32)
    scores, labels, xyxy = decode(logits, boxes, max_det=300)
    # the public DEIMv2 PostProcessor, focal-loss branch, without the scale to pixels
    t_scores, index = torch.topk(torch.sigmoid(torch.from_numpy(logits)).flatten(1), 300, dim=-1)
    t_boxes = torch.gather(torch.from_numpy(boxes), 1, (index // 80).unsqueeze(-1).expand(-1, -1, 4))
    cx, cy, w, h = t_boxes.unbind(-1)
    t_xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
    # torch orders equal scores its own way (and its sigmoid may differ by an ulp): match by query
    ours = {(b, q, c): s for b in range(2) for q, c, s in zip(_queries(xyxy[b], boxes[b]), labels[b], scores[b])}
    theirs = {(b, q, c): s for b in range(2)
              for q, c, s in zip((index[b] // 80).tolist(), (index[b] % 80).tolist(), t_scores[b].tolist())}
    assert ours.keys() == theirs.keys()
    np.testing.assert_allclose([ours[k] for k in ours], [theirs[k] for k in ours], rtol=0, atol=2e-7)
    np.testing.assert_allclose(np.sort(xyxy.reshape(-1)), np.sort(t_xyxy.numpy().reshape(-1)), atol=1e-7)


def _queries(xyxy: np.ndarray, boxes: np.ndarray) -> list[int]:
    """The query each decoded box came from (random boxes are distinct)."""
    return [int(np.argmin(np.abs(cxcywh_to_xyxy(boxes) - box).sum(1))) for box in xyxy]


def test_tie_order_equals_onnx_runtime_topk():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("TopK", ["x", "k"], ["values", "index"], axis=-1, largest=1, sorted=1)
    graph = helper.make_graph([node], "topk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, None])],
                              [helper.make_tensor_value_info("values", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("index", TensorProto.INT64, None)],
                              initializer=[helper.make_tensor("k", TensorProto.INT64, [1], [300])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(4)
    for _ in range(20):
        logits = np.round(rng.normal(-2, 1, (1, 300, 80)), 1).astype(np.float32)  # heavy ties
        boxes = np.zeros((1, 300, 4), np.float32)
        boxes[0, :, 0] = np.arange(300)  # cx tells the query
        scores, labels, xyxy = decode(logits, boxes, max_det=300)
        flat = 1 / (1 + np.exp(-logits.reshape(1, -1)))
        _, index = session.run(None, {"x": flat.astype(np.float32)})
        np.testing.assert_array_equal(labels[0], index[0] % 80)
        np.testing.assert_array_equal(xyxy[0, :, 0], index[0] // 80)


def test_very_negative_logits_give_zero_scores_without_warnings():
    logits = np.full((1, 2, 2), -1000.0, np.float32)
    logits[0, 1, 1] = 0.0
    with np.errstate(all="raise"):
        scores, labels, _ = decode(logits, np.zeros((1, 2, 4), np.float32), max_det=2)
    np.testing.assert_array_equal(scores, [[0.5, 0.0]])
    np.testing.assert_array_equal(labels, [[1, 0]])


def test_bad_arguments():
    with pytest.raises(ConfigError, match=r"\[B,Q,C\]"):
        decode(np.zeros((3, 2), np.float32), np.zeros((3, 4), np.float32), 10)
    with pytest.raises(ConfigError, match=r"\[B,Q,4\]"):
        decode(np.zeros((1, 3, 2), np.float32), np.zeros((1, 4, 4), np.float32), 10)
    with pytest.raises(ConfigError, match="max_det"):
        decode(np.zeros((1, 3, 2), np.float32), np.zeros((1, 3, 4), np.float32), 0)


def test_cxcywh_to_xyxy():
    np.testing.assert_allclose(cxcywh_to_xyxy(np.array([[0.5, 0.5, 0.2, 0.4]])), [[0.4, 0.3, 0.6, 0.7]], atol=1e-7)
    assert cxcywh_to_xyxy(np.zeros((2, 0, 4))).shape == (2, 0, 4)


def test_official_outputs_become_the_topk_meaning():
    labels = np.array([[3, 0]], np.int64)
    boxes_px = np.array([[[32, 64, 320, 160], [0, 0, 16, 32]]], np.float32)
    scores = np.array([[0.9, 0.1]], np.float32)
    s, lab, b = official_to_topk(labels, boxes_px, scores, input_size=(320, 640))  # (h, w)
    np.testing.assert_allclose(b, [[[0.05, 0.2, 0.5, 0.5], [0.0, 0.0, 0.025, 0.1]]])
    np.testing.assert_array_equal(lab, labels)
    np.testing.assert_array_equal(s, scores)
    assert s.dtype == np.float32 and lab.dtype == np.int64 and b.dtype == np.float32
    with pytest.raises(ConfigError, match="official boxes"):
        official_to_topk(labels, boxes_px[0], scores, (320, 640))
