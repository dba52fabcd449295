"""DEIMv2 S-X backbone: a ViT (patch tokens, 1/16) fused with the spatial tuning adapter (STA).

The ViT tokens of three blocks are resized bilinearly to 1/8, 1/16 and 1/32, concatenated with
the STA's detail maps at the same strides, then projected by 1x1 conv + BN to `hidden_dim`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dinov3 import DinoVisionTransformer
from .vit_tiny import VisionTransformer

# Architecture of each ViT.
VIT_CONFIGS: dict[str, dict[str, Any]] = {
    "vit_tiny": dict(embed_dim=192, num_heads=3, depth=12, mlp_ratio=4.0),  # DEIMv2 S
    "vit_tinyplus": dict(embed_dim=256, num_heads=4, depth=12, mlp_ratio=4.0),  # DEIMv2 M
    "dinov3_vits16": dict(  # DEIMv2 L
        embed_dim=384, num_heads=6, depth=12, ffn_ratio=4.0, ffn_layer="mlp", n_storage_tokens=4,
        layerscale_init=1e-5, norm_eps=1e-5, rope_base=100.0, rope_rescale_coords=2.0,
    ),
    "dinov3_vits16plus": dict(  # DEIMv2 X
        embed_dim=384, num_heads=6, depth=12, ffn_ratio=6.0, ffn_layer="swiglu", n_storage_tokens=4,
        layerscale_init=1e-5, norm_eps=1e-5, rope_base=100.0, rope_rescale_coords=2.0,
    ),
}


class SpatialTuningAdapter(nn.Module):
    """Small CNN on the image: [B, 3, H, W] -> detail maps at 1/8 (2c), 1/16 (4c), 1/32 (4c), c = inplanes."""

    def __init__(self, inplanes: int = 16) -> None:
        super().__init__()
        c = inplanes
        self.stem = nn.Sequential(  # 1/4
            nn.Conv2d(3, c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.GELU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
        self.conv2 = nn.Sequential(  # 1/8
            nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * c),
        )
        self.conv3 = nn.Sequential(  # 1/16
            nn.GELU(),
            nn.Conv2d(2 * c, 4 * c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(4 * c),
        )
        self.conv4 = nn.Sequential(  # 1/32
            nn.GELU(),
            nn.Conv2d(4 * c, 4 * c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(4 * c),
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        c8 = self.conv2(self.stem(x))
        c16 = self.conv3(c8)
        c32 = self.conv4(c16)
        return [c8, c16, c32]


class ViTAdapterBackbone(nn.Module):
    """ViT + STA backbone (reference: DINOv3STAs). forward(x [B, 3, H, W]) -> [c8, c16, c32],
    each [B, hidden_dim, H/s, W/s]; H and W must be multiples of 32.

    vit: a key of VIT_CONFIGS; interaction_indexes: the three blocks tapped for strides 8, 16, 32;
    hidden_dim defaults to the ViT width.
    """

    out_strides = [8, 16, 32]

    def __init__(
        self,
        vit: str,
        interaction_indexes: Sequence[int],
        conv_inplane: int = 16,
        hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        if vit not in VIT_CONFIGS:
            raise ValueError(f"unknown ViT {vit!r}; expected one of {sorted(VIT_CONFIGS)}")
        if len(interaction_indexes) != 3 or list(interaction_indexes) != sorted(set(interaction_indexes)):
            raise ValueError(f"interaction_indexes must be 3 increasing block indexes, got {interaction_indexes}")
        cfg = VIT_CONFIGS[vit]
        self.name = vit
        vit_cls = DinoVisionTransformer if vit.startswith("dinov3") else VisionTransformer
        self.dinov3 = vit_cls(**cfg)
        self.interaction_indexes = list(interaction_indexes)

        embed_dim = cfg["embed_dim"]
        hidden_dim = hidden_dim or embed_dim
        self.sta = SpatialTuningAdapter(conv_inplane)
        detail_dims = [2 * conv_inplane, 4 * conv_inplane, 4 * conv_inplane]
        self.convs = nn.ModuleList(nn.Conv2d(embed_dim + d, hidden_dim, 1, bias=False) for d in detail_dims)
        self.norms = nn.ModuleList(nn.BatchNorm2d(hidden_dim) for _ in detail_dims)
        self.out_channels = [hidden_dim] * 3

    def forward(self, x: Tensor) -> list[Tensor]:
        B, _, H, W = x.shape
        h, w = H // self.dinov3.patch_size, W // self.dinov3.patch_size  # ViT patch grid
        tokens = self.dinov3(x, self.interaction_indexes)  # 3 x [B, h*w, C]
        details = self.sta(x)  # [B, 2c, H/8, W/8], [B, 4c, H/16, W/16], [B, 4c, H/32, W/32]
        outs = []
        for tok, detail, conv, norm in zip(tokens, details, self.convs, self.norms):
            sem = tok.transpose(1, 2).reshape(B, -1, h, w)  # [B, C, h, w]
            if sem.shape[-2:] != detail.shape[-2:]:
                sem = F.interpolate(sem, size=detail.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(norm(conv(torch.cat([sem, detail], dim=1))))
        return outs
