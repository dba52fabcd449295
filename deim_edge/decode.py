"""The one NMS-free decode every backend shares: sigmoid scores, top-k over queries x classes,
boxes to x1,y1,x2,y2 normalized to the network input. numpy only."""

from __future__ import annotations

import numpy as np

from .errors import ConfigError


def decode(logits: np.ndarray, boxes_cxcywh: np.ndarray, max_det: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw outputs -> the top-k detections of each image.

    logits [B,Q,C] and boxes_cxcywh [B,Q,4] (normalized cx,cy,w,h) -> scores [B,K] float32 sorted
    descending, labels [B,K] int64 and boxes [B,K,4] float32 normalized x1,y1,x2,y2, where
    K = min(max_det, Q*C). Scores are sigmoid(logits) flattened over Q x C; entry i is class
    i % C of query i // C. Equal scores are ordered by flat index ascending, also at the k-th
    place: the order ONNX TopK specifies and ONNX Runtime follows, so this decode equals an in-graph
    one. torch.topk orders equal scores otherwise: compare with it up to swaps of equal scores.
    """
    logits = np.asarray(logits, dtype=np.float32)
    boxes_cxcywh = np.asarray(boxes_cxcywh, dtype=np.float32)
    if logits.ndim != 3 or boxes_cxcywh.shape != (*logits.shape[:2], 4):
        raise ConfigError(f"expected logits [B,Q,C] and boxes [B,Q,4], got {logits.shape} and {boxes_cxcywh.shape}")
    if max_det < 1:
        raise ConfigError(f"max_det must be at least 1, got {max_det}")
    batch, queries, classes = logits.shape
    k = min(int(max_det), queries * classes)
    scores = np.empty((batch, k), np.float32)
    labels = np.empty((batch, k), np.int64)
    boxes = np.empty((batch, k, 4), np.float32)
    for b in range(batch):
        flat_scores = _sigmoid(logits[b].reshape(-1))  # [Q*C]
        index = _topk(flat_scores, k)
        scores[b] = flat_scores[index]
        query, labels[b] = np.divmod(index, classes)
        cxcywh_to_xyxy(boxes_cxcywh[b, query], out=boxes[b])
    return scores, labels, boxes


def top_detections(outputs: dict[str, np.ndarray], layout: str, k: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, labels, normalized xyxy boxes) of the top-k detections of RAW (decoded here) or TOPK outputs."""
    from .metadata import RAW

    if layout == RAW:
        return decode(outputs["logits"], outputs["boxes"], k)
    return outputs["scores"][:, :k], outputs["labels"][:, :k], outputs["boxes"][:, :k]


def official_to_topk(labels: np.ndarray, boxes_px: np.ndarray, scores: np.ndarray,
                     input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outputs of a public DEIMv2 export run with orig_target_sizes = the network input (w, h) ->
    the decode's (scores [B,K] float32, labels [B,K] int64, boxes [B,K,4] normalized xyxy float32).

    input_size is the network input (h, w); boxes_px are x1,y1,x2,y2 pixels of that input.
    """
    in_h, in_w = input_size
    boxes_px = np.asarray(boxes_px, dtype=np.float32)
    if boxes_px.ndim != 3 or boxes_px.shape[-1] != 4:
        raise ConfigError(f"expected official boxes [B,K,4], got shape {boxes_px.shape}")
    boxes = boxes_px / np.array([in_w, in_h, in_w, in_h], np.float32)
    return np.asarray(scores, dtype=np.float32), np.asarray(labels, dtype=np.int64), boxes


def cxcywh_to_xyxy(boxes: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """[..., 4] cx,cy,w,h -> x1,y1,x2,y2 float32 (into `out` when given)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    out = np.empty(boxes.shape, np.float32) if out is None else out
    center, half = boxes[..., :2], boxes[..., 2:] * np.float32(0.5)
    np.subtract(center, half, out=out[..., :2])
    np.add(center, half, out=out[..., 2:])
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.negative(x)
    with np.errstate(over="ignore"):  # exp(-x) = inf for x < -88: the score is 0
        np.exp(out, out=out)
    out += np.float32(1)
    return np.reciprocal(out, out=out)


def _topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of a 1-D array: by score descending, then index ascending."""
    n = scores.size
    if k < n:
        index = np.argpartition(scores, n - k)[n - k:]  # the k largest, ties at the k-th in any order
        kth = scores[index].min()
        ties_inside = np.count_nonzero(scores[index] == kth)
        if np.count_nonzero(scores == kth) > ties_inside:  # keep the lowest indices among k-th ties
            above = np.flatnonzero(scores > kth)
            index = np.concatenate([above, np.flatnonzero(scores == kth)[:k - above.size]])
    else:
        index = np.arange(n)
    return index[np.lexsort((index, -scores[index]))]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes a [N, 4] and b [M, 4] -> [N, M]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)
