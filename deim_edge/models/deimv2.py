"""The DEIMv2 detector: backbone -> encoder -> decoder, built from a variant record."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError, DeimEdgeError, InputSizeError
from ..sizes import as_hw
from ..variants import Variant, get_variant
from .decoder import DEIMv2Decoder
from .decoder_layers import LQE, MSDeformableAttention
from .hgnetv2 import HGNETV2_CONFIGS, HGNetv2
from .hybrid_encoder import HybridEncoder
from .lite_encoder import LiteEncoder
from .sta import ViTAdapterBackbone

STRIDE = 32  # every variant's coarsest feature map


def check_input_size(variant: Variant, height: int, width: int) -> None:
    """Raise InputSizeError unless both sides are multiples of 32 and the feature maps hold at
    least as many positions as the decoder selects queries."""
    if height <= 0 or width <= 0 or height % STRIDE or width % STRIDE:
        raise InputSizeError(
            f"input size {height}x{width} is not a multiple of {STRIDE}; DEIMv2 needs both sides to be "
            f"multiples of {STRIDE} (e.g. {_nearest(height)}x{_nearest(width)})")
    queries = variant.decoder.num_queries
    if _positions(variant, height, width) < queries:
        side = next(n for n in range(STRIDE, 100 * STRIDE, STRIDE) if _positions(variant, n, n) >= queries)
        raise InputSizeError(
            f"input size {height}x{width} is too small for {variant.name}: its feature maps hold "
            f"{_positions(variant, height, width)} positions and the decoder selects {queries} queries; "
            f"use at least {side}x{side}")


def _positions(variant: Variant, height: int, width: int) -> int:
    return sum((height // s) * (width // s) for s in variant.decoder.feat_strides)


OPS = ("default", "npu")  # set_ops


def _nearest(n: int) -> int:
    return max(STRIDE, round(n / STRIDE) * STRIDE)


class DEIMv2(nn.Module):
    """A DEIMv2 detector. forward(images [B,3,H,W], targets=None) -> dict.

    Eval: {'pred_logits' [B,Q,C], 'pred_boxes' [B,Q,4] normalized cx,cy,w,h}; training adds the
    per-layer, encoder and denoising predictions a DEIM criterion needs.
    """

    def __init__(self, variant: Variant, backbone: nn.Module, encoder: nn.Module, decoder: DEIMv2Decoder) -> None:
        super().__init__()
        self.variant = variant
        self.deployed = False
        self.backbone = backbone
        self.decoder = decoder  # registered before the encoder: the official state-dict order
        self.encoder = encoder

    @property
    def input_size(self) -> tuple[int, int]:
        """The (height, width) the kept anchors are for; other multiples of 32 run too."""
        return tuple(self.decoder.eval_spatial_size)

    def forward(self, images: Tensor, targets: list[dict[str, Tensor]] | None = None) -> dict:
        if self.training and self.deployed:
            raise DeimEdgeError("this model was deployed (training heads dropped, convs fused) and cannot run in "
                                "training mode: call .eval(), or build or load a fresh model to train")
        check_input_size(self.variant, images.shape[-2], images.shape[-1])
        return self.decoder(self.encoder(self.backbone(images)), targets)

    def set_input_size(self, input_size: int | tuple[int, int]) -> None:
        """Rebuild the size-dependent buffers (decoder anchors and valid mask) for another size."""
        size = as_hw(input_size)
        check_input_size(self.variant, *size)
        self.decoder.set_input_size(size)

    def set_ops(self, ops: str) -> "DEIMv2":
        """The operators the graph is built from: "default" (GridSample for the deformable attention's sampling,
        TopK for the query selection and the LQE) or "npu" (the same numbers from gathers, comparisons and
        arithmetic, for runtimes and NPUs without GridSample or TopK: models/sampling.py, models/ranking.py)."""
        if ops not in OPS:
            raise ConfigError(f"ops must be one of {', '.join(OPS)}, got {ops!r}")
        npu = ops == "npu"
        for m in self.modules():
            if isinstance(m, MSDeformableAttention):
                m.sampling = "gather" if npu else "grid"
            if isinstance(m, (DEIMv2Decoder, LQE)):
                m.ranking = "compare" if npu else "topk"
        return self

    def deploy(self) -> "DEIMv2":
        """Switch to eval and apply the official deploy step (drop training heads, fuse convs)."""
        if not self.deployed:
            deploy(self)
            self.deployed = True
        return self


@torch.no_grad()
def deploy(module: nn.Module) -> nn.Module:
    """Eval mode, then `convert_to_deploy()` on every submodule that has it, parents first."""
    module.eval()
    for m in module.modules():  # live: a parent converts before its (possibly new) children are visited
        if hasattr(m, "convert_to_deploy"):
            m.convert_to_deploy()
    return module


def build_backbone(variant: Variant) -> nn.Module:
    spec = variant.backbone
    if spec.name in HGNETV2_CONFIGS:
        return HGNetv2(spec.name, return_idx=spec.taps, use_lab=True)
    return ViTAdapterBackbone(spec.name, interaction_indexes=spec.taps, conv_inplane=spec.sta_channels,
                              hidden_dim=spec.sta_hidden)


def build_encoder(variant: Variant) -> nn.Module:
    spec = variant.encoder
    if spec.kind == "lite":
        return LiteEncoder(spec.in_channels, spec.in_strides, spec.hidden_dim, spec.expansion, spec.depth_mult,
                           act=spec.activation)
    return HybridEncoder(
        in_channels=spec.in_channels, feat_strides=spec.in_strides, hidden_dim=spec.hidden_dim,
        dim_feedforward=spec.dim_feedforward, use_encoder_idx=[len(spec.in_channels) - 1],
        expansion=spec.expansion, depth_mult=spec.depth_mult, act=spec.activation,
        version=spec.version)


def build_decoder(variant: Variant, num_classes: int, input_size: tuple[int, int]) -> DEIMv2Decoder:
    spec = variant.decoder
    return DEIMv2Decoder(
        num_classes=num_classes, hidden_dim=spec.hidden_dim, num_queries=spec.num_queries,
        feat_strides=list(spec.feat_strides), num_points=list(spec.num_points), nhead=spec.nhead,
        num_layers=spec.num_layers, dim_feedforward=spec.dim_feedforward, reg_max=spec.reg_max,
        reg_scale=spec.reg_scale, use_gateway=spec.use_gateway, share_bbox_head=spec.share_bbox_head,
        activation=spec.activation, num_denoising=spec.num_denoising, eval_spatial_size=input_size,
        eval_idx=spec.eval_idx, label_noise_ratio=spec.label_noise_ratio, box_noise_scale=spec.box_noise_scale)


def build_model(variant: str | Variant, num_classes: int | None = None,
                input_size: int | tuple[int, int] | None = None) -> DEIMv2:
    """A DEIMv2 model of `variant` (e.g. 'deimv2-pico') in train mode with fresh weights.

    num_classes defaults to the variant's (80, COCO). input_size (int or (h, w), multiples of 32)
    defaults to the variant's eval size; it sets the anchors kept for eval, and any other valid
    size still runs.
    """
    variant = get_variant(variant)
    num_classes = variant.num_classes if num_classes is None else num_classes
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    size = as_hw(input_size if input_size is not None else variant.input_size)
    check_input_size(variant, *size)
    return DEIMv2(variant, build_backbone(variant), build_encoder(variant), build_decoder(variant, num_classes, size))
