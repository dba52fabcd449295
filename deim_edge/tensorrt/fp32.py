"""The layers kept in FP32 in FP16 and INT8 engines, chosen by name.

Where FP16 breaks DETR-style detectors (reports against TensorRT 10.4 and D-FINE/DEIM/RT-DETR forums): attention
scores and softmax, the sampling offsets and locations of the deformable attention (a pixel error grows with the
feature map), RMSNorm (x^2 overflows FP16 above 256), the box-distribution softmax and integral (FDR), and the
query selection. Rules match the scope of ONNX node names as torch.onnx.export writes them
("/model/decoder/decoder/layers.0/cross_attn/Softmax"), which the ONNX parser keeps as TensorRT layer and tensor
names. Bump FP32_RULES_VERSION when the rules change: it is part of the engine-cache key.
"""

from __future__ import annotations

import re

FP32_RULES_VERSION = 1
FP32_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((reason, re.compile(pattern)) for reason, pattern in (
    ("the hybrid encoder's transformer layer (AIFI, N to X): the first attention",
     r"^/model/encoder/encoder\.\d+/"),
    ("the ViT backbone's first block: attention and its LayerNorms (S to X)",
     r"^/model/backbone/[^/]+/blocks\.0/(attn|norm\d?)/"),
    ("the decoder's first layer", r"^/model/decoder/decoder/layers\.0/"),
    ("deformable cross-attention in every decoder layer: sampling offsets, attention-weight softmax, locations",
     r"^/model/decoder/decoder/layers\.\d+/cross_attn/"),
    ("RMSNorm in every decoder layer", r"^/model/decoder/decoder/layers\.\d+/(norm\d*|gateway/norm)/"),
    ("decoder heads, box distributions and their integral (FDR), box refinement, LQE",
     r"^/model/decoder/decoder/(?!layers\.)"),
    ("query selection: encoder heads, anchors, top-k", r"^/model/decoder/(?!decoder/)"),
    ("the decode in the graph: top-k, sigmoid, box corners", r"^/[^/]+$"),
))


def fp32_reason(name: str) -> str | None:
    """Why the layer (ONNX node or TensorRT layer/tensor) `name` stays FP32 in FP16 engines, or None."""
    for reason, pattern in FP32_RULES:
        if pattern.search(name):
            return reason
    return None
