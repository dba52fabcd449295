"""Contrastive denoising queries for DETR training: noised copies of the ground truth."""
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh, inverse_sigmoid


def make_denoising_group(
    targets: list[dict[str, Tensor]],
    num_classes: int,
    num_queries: int,
    class_embed: nn.Embedding,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, dict] | None:
    """Build groups of positive and negative noised ground-truth queries.

    targets: per image 'labels' int64 [N] and 'boxes' normalized cxcywh [N, 4].
    Each group holds every image's ground truth twice (padded to the batch maximum M): a positive
    copy with small box noise and a negative copy pushed further away; labels flip to a random
    class with probability label_noise_ratio / 2.
    Returns None when there is nothing to denoise, else (query content [B, D, hidden],
    query boxes in logit space [B, D, 4], self-attention mask [D + Q, D + Q] (True = blocked),
    dn_meta with 'dn_positive_idx', 'dn_num_group' and 'dn_num_split' = [D, Q]), D = 2 * M * groups.
    """
    num_gts = [len(t["labels"]) for t in targets]
    device = class_embed.weight.device
    bs = len(targets)
    max_gt, first, total = _global_batch(bs, max(num_gts, default=0), device)
    if num_denoising <= 0 or max_gt == 0:
        return None
    num_group = max(num_denoising // max_gt, 1)
    rows = slice(first, first + bs)  # noise is drawn for the global batch: DDP draws what one process would

    labels = torch.full([bs, max_gt], num_classes, dtype=torch.int32, device=device)
    boxes = torch.zeros([bs, max_gt, 4], device=device)
    pad_mask = torch.zeros([bs, max_gt], dtype=torch.bool, device=device)
    for i, (t, n) in enumerate(zip(targets, num_gts)):
        labels[i, :n] = t["labels"]
        boxes[i, :n] = t["boxes"]
        pad_mask[i, :n] = True

    labels = labels.tile([1, 2 * num_group])  # [B, D]
    boxes = boxes.tile([1, 2 * num_group, 1])  # [B, D, 4]
    pad_mask = pad_mask.tile([1, 2 * num_group])
    negative = torch.zeros([bs, 2 * max_gt, 1], device=device)
    negative[:, max_gt:] = 1
    negative = negative.tile([1, num_group, 1])  # [B, D, 1]
    positive = (1 - negative).squeeze(-1) * pad_mask
    positive_idx = torch.nonzero(positive)[:, 1].split([n * num_group for n in num_gts])
    num_dn = 2 * max_gt * num_group

    if label_noise_ratio > 0:
        flip = torch.rand([total, *labels.shape[1:]], device=device)[rows] < label_noise_ratio * 0.5
        new_labels = torch.randint(0, num_classes, [total, *labels.shape[1:]], dtype=labels.dtype, device=device)[rows]
        labels = torch.where(flip & pad_mask, new_labels, labels)

    if box_noise_scale > 0:
        corners = box_cxcywh_to_xyxy(boxes)
        max_shift = torch.tile(boxes[..., 2:] * 0.5, [1, 1, 2]) * box_noise_scale
        sign = torch.randint(0, 2, [total, *boxes.shape[1:]], dtype=boxes.dtype, device=device)[rows] * 2.0 - 1.0
        magnitude = torch.rand([total, *boxes.shape[1:]], dtype=boxes.dtype, device=device)[rows]
        magnitude = (magnitude + 1.0) * negative + magnitude * (1 - negative)
        corners = (corners + sign * magnitude * max_shift).clip(min=0.0, max=1.0)
        boxes = box_xyxy_to_cxcywh(corners).abs()
    boxes_unact = inverse_sigmoid(boxes)
    content = class_embed(labels)

    size = num_dn + num_queries
    attn_mask = torch.zeros([size, size], dtype=torch.bool, device=device)
    attn_mask[num_dn:, :num_dn] = True  # matching queries cannot see the denoising ones
    group = torch.arange(num_dn, device=device) // (2 * max_gt)
    attn_mask[:num_dn, :num_dn] = group[:, None] != group[None, :]  # groups cannot see each other

    dn_meta = {"dn_positive_idx": positive_idx, "dn_num_group": num_group, "dn_num_split": [num_dn, num_queries]}
    return content, boxes_unact, attn_mask, dn_meta


def _global_batch(bs: int, max_gt: int, device: torch.device) -> tuple[int, int, int]:
    """(the most targets of any image in the global batch, this process's first row in it, its size).
    Under DistributedDataParallel every process pads to the same maximum and draws the noise of the
    whole batch, so N processes build exactly the queries one process would (equal per-process batches)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return max_gt, 0, bs
    most = torch.tensor([max_gt], device=device)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most.item()), dist.get_rank() * bs, bs * dist.get_world_size()
