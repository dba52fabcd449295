"""DEIM loss terms: matchability-aware classification (MAL), L1 + GIoU boxes, fine-grained
localization (FGL) and decoupled distillation focal (DDF). Each takes matched indices and returns
an unweighted scalar."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.box_ops import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from .matcher import Indices


def flat_index(indices: Indices) -> tuple[Tensor, Tensor]:
    """(batch index [K], query index [K]) of all matched queries."""
    batch = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
    return batch, torch.cat([src for src, _ in indices])


def matched_targets(targets: list[dict[str, Tensor]], indices: Indices, key: str) -> Tensor:
    """Target `key` ('labels' or 'boxes') of every match, in flat_index order: [K] or [K, 4]."""
    return torch.cat([t[key][tgt] for t, (_, tgt) in zip(targets, indices)])


def matched_iou(pred_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """IoU of paired cxcywh boxes [K, 4] x [K, 4] -> [K]."""
    return torch.diag(box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(target_boxes))[0])


def mal_loss(logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]], indices: Indices,
             num_boxes: float, num_classes: int, gamma: float = 1.5, alpha: float | None = None) -> Tensor:
    """Matchability-aware loss: BCE towards IoU ** gamma on matched classes, negatives weighted by
    p ** gamma (times alpha if given). logits [B, Q, num_classes], boxes [B, Q, 4] cxcywh."""
    idx = flat_index(indices)
    ious = matched_iou(boxes[idx], matched_targets(targets, indices, "boxes")).detach()  # [K]
    classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
    classes[idx] = matched_targets(targets, indices, "labels")
    onehot = F.one_hot(classes, num_classes + 1)[..., :-1]  # [B, Q, C], background row dropped
    score = torch.zeros(logits.shape[:2], dtype=logits.dtype, device=logits.device)
    score[idx] = ious.to(score.dtype)
    target = (score.unsqueeze(-1) * onehot).pow(gamma)  # [B, Q, C]
    neg_weight = logits.sigmoid().detach().pow(gamma) * (1 - onehot)
    weight = (neg_weight if alpha is None else alpha * neg_weight) + onehot
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
    return loss.mean(1).sum() * logits.shape[1] / num_boxes


def box_losses(boxes: Tensor, targets: list[dict[str, Tensor]], indices: Indices,
               num_boxes: float) -> tuple[Tensor, Tensor]:
    """(L1, 1 - GIoU) of matched boxes, each summed and divided by num_boxes. boxes [B, Q, 4] cxcywh."""
    src = boxes[flat_index(indices)]  # [K, 4]
    tgt = matched_targets(targets, indices, "boxes")
    l1 = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
    giou = 1 - torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(src), box_cxcywh_to_xyxy(tgt)))
    return l1, giou.sum() / num_boxes


def fgl_loss(corners: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]], indices: Indices,
             num_boxes: float, bin_targets: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Fine-grained localization: IoU-weighted two-bin cross entropy of the edge distributions
    corners [B, Q, 4 * (R + 1)] against soft bin targets (left bin [4K], right weight [4K],
    left weight [4K]) from fdr.bbox2distance."""
    idx = flat_index(indices)
    num_bins = corners.shape[-1] // 4
    logits = corners[idx].reshape(-1, num_bins)  # [4K, R + 1]
    ious = matched_iou(boxes[idx], matched_targets(targets, indices, "boxes"))
    weight = ious.unsqueeze(-1).repeat(1, 4).reshape(-1).detach()  # [4K], one per edge
    left_bin, weight_right, weight_left = bin_targets
    left = left_bin.long()
    loss = (F.cross_entropy(logits, left, reduction="none") * weight_left
            + F.cross_entropy(logits, left + 1, reduction="none") * weight_right)
    return (loss * weight.float()).sum() / num_boxes


def ddf_terms(corners: Tensor, boxes: Tensor, teacher_corners: Tensor, teacher_logits: Tensor,
              targets: list[dict[str, Tensor]], indices: Indices, temperature: float = 5.0) -> tuple[Tensor, Tensor]:
    """Per-edge distillation KL(teacher || student) at `temperature`, weighted by the teacher's top
    score (matched queries: their IoU), and the matched mask; both [B * Q * 4]."""
    idx = flat_index(indices)
    num_bins = corners.shape[-1] // 4
    weight = teacher_logits.sigmoid().max(dim=-1)[0]  # [B, Q]
    weight[idx] = matched_iou(boxes[idx], matched_targets(targets, indices, "boxes")).to(weight.dtype)
    weight = weight.unsqueeze(-1).repeat(1, 1, 4).reshape(-1).detach()
    mask = torch.zeros(boxes.shape[:2], dtype=torch.bool, device=boxes.device)
    mask[idx] = True
    mask = mask.unsqueeze(-1).repeat(1, 1, 4).reshape(-1)
    student = F.log_softmax(corners.reshape(-1, num_bins) / temperature, dim=1)
    teacher = F.softmax(teacher_corners.reshape(-1, num_bins).detach() / temperature, dim=1)
    kl = F.kl_div(student, teacher, reduction="none").sum(-1)  # [B * Q * 4]
    return weight * temperature ** 2 * kl, mask


def ddf_loss(per_edge: Tensor, mask: Tensor, num_pos: Tensor, num_neg: Tensor) -> Tensor:
    """Decoupled distillation: matched and unmatched edge means, mixed num_pos : num_neg."""
    pos = per_edge[mask].mean() if mask.any() else 0
    neg = per_edge[~mask].mean() if (~mask).any() else 0
    return (pos * num_pos + neg * num_neg) / (num_pos + num_neg)
