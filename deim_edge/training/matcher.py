"""Hungarian matching of queries to ground-truth boxes, the union of matches across layers, and the
one-to-many assignment of encoder anchors (dense supervision)."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from ..models.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou

Indices = list[tuple[Tensor, Tensor]]  # per image: (query indices [K], target indices [K]), int64


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets by a focal class + L1 + GIoU cost.

    From `change_epoch` on (DEIM), the cost becomes -p * IoU ** iou_order, where p is the
    predicted probability of the target's class.
    """

    def __init__(self, cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                 alpha: float = 0.25, gamma: float = 2.0, iou_order: float = 4.0,
                 change_epoch: int | None = None) -> None:
        super().__init__()
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.alpha = alpha
        self.gamma = gamma
        self.iou_order = iou_order
        self.change_epoch = change_epoch

    def cost_matrix(self, logits: Tensor, boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
                    epoch: int = 0) -> Tensor:
        """Matching cost of flattened queries [N, C] logits, [N, 4] cxcywh vs targets [M] labels,
        [M, 4] cxcywh -> [N, M]."""
        prob = logits.sigmoid()[:, tgt_labels]  # [N, M]
        pred_xyxy, tgt_xyxy = box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes)
        if self.change_epoch is not None and epoch >= self.change_epoch:
            iou = box_iou(pred_xyxy, tgt_xyxy)[0]
            return -(prob * iou.pow(self.iou_order))
        pos = self.alpha * (1 - prob) ** self.gamma * -(prob + 1e-8).log()
        neg = (1 - self.alpha) * prob ** self.gamma * -(1 - prob + 1e-8).log()
        cost_l1 = torch.cdist(boxes, tgt_boxes, p=1)
        cost_giou = -generalized_box_iou(pred_xyxy, tgt_xyxy)
        return self.cost_bbox * cost_l1 + self.cost_class * (pos - neg) + self.cost_giou * cost_giou

    @torch.no_grad()
    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]], epoch: int = 0) -> Indices:
        """Match outputs {'pred_logits': [B, Q, C], 'pred_boxes': [B, Q, 4]} to targets
        (per image 'labels' [M_i], 'boxes' [M_i, 4] cxcywh); returns one (query, target) pair per
        target (or per query if fewer queries)."""
        bs, num_queries = outputs["pred_logits"].shape[:2]
        tgt_labels = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets])
        cost = self.cost_matrix(outputs["pred_logits"].flatten(0, 1), outputs["pred_boxes"].flatten(0, 1),
                                tgt_labels, tgt_boxes, epoch)
        cost = torch.nan_to_num(cost.view(bs, num_queries, -1).cpu(), nan=1.0)  # [B, Q, sum M_i]
        sizes = [len(t["boxes"]) for t in targets]
        indices = []
        for i, c in enumerate(cost.split(sizes, -1)):
            rows, cols = linear_sum_assignment(c[i])
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices


def union_indices(indices: Indices, others: list[Indices]) -> Indices:
    """Union of the matches of several layers: per query, the target it was matched to most often
    (ties: the order torch.argsort gives over the sorted unique pairs)."""
    pooled = [(torch.cat([src, *(o[b][0] for o in others)]), torch.cat([tgt, *(o[b][1] for o in others)]))
              for b, (src, tgt) in enumerate(indices)]
    result = []
    for src, tgt in pooled:
        pairs, counts = torch.unique(torch.stack([src, tgt], 1), return_counts=True, dim=0)  # [P, 2], [P]
        chosen: dict[int, int] = {}
        for query, target in pairs[torch.argsort(counts, descending=True)].tolist():
            chosen.setdefault(query, target)
        result.append((torch.tensor(list(chosen.keys()), dtype=torch.int64, device=src.device),
                       torch.tensor(list(chosen.values()), dtype=torch.int64, device=src.device)))
    return result


@torch.no_grad()
def dense_assignment(logits: Tensor, boxes: Tensor, centres: Tensor, valid: Tensor,
                     targets: list[dict[str, Tensor]], k: int) -> Indices:
    """One-to-many assignment of encoder anchors to objects (task-aligned, as dense detectors do): each object
    takes up to `k` anchors whose centre lies in its box (always at least the nearest valid anchor, so objects
    smaller than a cell get one), the ones with the highest score * IoU ** 6 of their predicted box; an anchor
    taken by several objects keeps the one its box overlaps most.

    logits [B, L, C], boxes [B, L, 4] cxcywh (the encoder's predictions over all anchors), centres [L, 2]
    the anchors' centres, valid [L] bool; returns per image (anchor indices [P], object indices [P])."""
    indices = []
    for b, t in enumerate(targets):
        labels, gt = t["labels"], t["boxes"]
        if len(labels) == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=logits.device)
            indices.append((empty, empty))
            continue
        gt_xyxy = box_cxcywh_to_xyxy(gt)  # [M, 4]
        x, y = centres[:, :1], centres[:, 1:]  # [L, 1]
        inside = (x > gt_xyxy[:, 0]) & (x < gt_xyxy[:, 2]) & (y > gt_xyxy[:, 1]) & (y < gt_xyxy[:, 3])  # [L, M]
        distance = torch.cdist(centres, gt[:, :2]).masked_fill(~valid[:, None], float("inf"))
        inside[distance.argmin(0), torch.arange(len(labels), device=gt.device)] = True
        inside &= valid[:, None]
        iou = box_iou(box_cxcywh_to_xyxy(boxes[b].float()), gt_xyxy)[0]  # [L, M]
        metric = logits[b].float().sigmoid()[:, labels] * iou.pow(6)
        metric = torch.where(inside, metric, torch.full_like(metric, -1.0))
        top = metric.topk(min(k, len(metric)), dim=0).indices  # [k, M]
        chosen = torch.zeros_like(inside)
        chosen.scatter_(0, top, True)
        chosen &= inside
        overlap = torch.where(chosen, iou, torch.full_like(iou, -1.0))
        best = overlap.argmax(1)  # [L]: the object each anchor keeps
        anchors = torch.nonzero(chosen.any(1)).squeeze(1)
        indices.append((anchors, best[anchors]))
    return indices
