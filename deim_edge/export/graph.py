"""The modules that are traced into an artifact: a deployed DEIMv2 with a RAW or TOPK output layout.

Both take `images` [B, 3, H, W] float32, already resized and normalized as the metadata says.
They are written for lean graphs: constants stay Python ints fixed at build time, never values
computed from tensor shapes, so the exported graph carries no Shape/Gather/Cast chains.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ExportError
from ..metadata import OUTPUT_NAMES, RAW, TOPK, ArtifactMetadata


class RawOutputs(nn.Module):
    """images -> logits [B, Q, C], boxes [B, Q, 4] normalized cx, cy, w, h: the host decodes."""

    output_names = OUTPUT_NAMES[RAW]

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(images)
        return out["pred_logits"], out["pred_boxes"]


class TopKOutputs(nn.Module):
    """images -> scores [B, K], labels [B, K] int64, boxes [B, K, 4] normalized x1, y1, x2, y2.

    The one decode, in the graph: the K best of sigmoid(logits) over all queries and classes,
    sorted descending; label = index mod C, query = index div C, that query's box as xyxy.
    Top-k runs on the logits (sigmoid is monotone, so the same detections) and sigmoid on the K kept.
    The query is looked up in a constant table by the index, not computed: converters turn an integer
    division by C into a float multiply by 1/C, and with the constant stored in float16 (1/3 is 0.33325)
    6 * (1/3) = 1.9995 -> query 1, label 3 of 3 classes (seen in TFLite fp16 exports). The label is then
    index - query * C in integers. The table (int64, as the index: no Cast) costs 8 bytes per query and class,
    64 KB for 100 queries x 80 classes.
    """

    output_names = OUTPUT_NAMES[TOPK]

    def __init__(self, model: nn.Module, num_classes: int, k: int) -> None:
        super().__init__()
        self.model = model
        self.num_classes = num_classes
        self.k = k
        index = torch.arange(model.decoder.num_queries * num_classes)
        self.register_buffer("query_of", index // num_classes, persistent=False)  # [Q*C] int64

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(images)
        logits, boxes = out["pred_logits"], out["pred_boxes"]  # [B, Q, C], [B, Q, 4]
        top, index = torch.topk(logits.flatten(1), self.k, dim=1)  # [B, K], sorted descending
        query = self.query_of[index]  # [B, K]
        labels = index - query * self.num_classes
        boxes = torch.gather(boxes, 1, query.unsqueeze(-1).repeat(1, 1, 4))  # [B, K, 4] cx, cy, w, h
        center, half = boxes[..., :2], 0.5 * boxes[..., 2:]
        return torch.sigmoid(top), labels, torch.cat([center - half, center + half], dim=-1)


def wrap(model: nn.Module, metadata: ArtifactMetadata) -> nn.Module:
    """The module to trace for `metadata.output` (RAW or TOPK), in eval mode."""
    if metadata.output == RAW:
        return RawOutputs(model).eval()
    if metadata.output == TOPK:
        return TopKOutputs(model, metadata.num_classes, metadata.max_det).eval()
    raise ExportError(f"cannot build a graph with output layout {metadata.output!r}; use {RAW!r} or {TOPK!r}")
