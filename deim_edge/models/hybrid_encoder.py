"""HybridEncoder: AIFI transformer on the coarsest level plus a CNN FPN/PAN (DEIMv2 N to X)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import (
    ConvBN,
    ConvNormLayer,
    RepNCSPELAN4,
    RepNCSPELAN5,
    SCDown,
    TransformerEncoder,
    sincos_position_embedding,
)


class HybridEncoder(nn.Module):
    """Fuses backbone maps at several strides into maps of `hidden_dim` channels each.

    Inputs are projected to `hidden_dim` (1x1 conv-BN, skipped when the channels already
    match), the levels in `use_encoder_idx` go through a transformer encoder with sin-cos
    positions, then a top-down FPN and a bottom-up PAN fuse the levels. `version` picks the
    fuse block: 'dfine' (RepNCSPELAN4, DEIMv2-N) or 'deim' (RepNCSPELAN5, DEIMv2-S to X).
    Two levels are joined by summation.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        feat_strides: Sequence[int],
        hidden_dim: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        enc_act: str = "gelu",
        use_encoder_idx: Sequence[int] = (2,),
        num_encoder_layers: int = 1,
        pe_temperature: float = 10000.0,
        expansion: float = 1.0,
        depth_mult: float = 1.0,
        act: str = "silu",
        version: str = "deim",
    ) -> None:
        super().__init__()
        if len(in_channels) != len(feat_strides):
            raise ValueError(f"in_channels {in_channels} and feat_strides {feat_strides} differ in length")
        if version not in ("dfine", "deim"):
            raise ValueError(f"unknown HybridEncoder version {version!r}; use 'dfine' or 'deim'")
        self.in_channels = list(in_channels)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.pe_temperature = pe_temperature
        self.out_channels = [hidden_dim] * len(in_channels)
        self.out_strides = list(feat_strides)

        self.input_proj = nn.ModuleList(
            [nn.Identity() if c == hidden_dim else ConvBN(c, hidden_dim, 1) for c in in_channels]
        )
        self.encoder = nn.ModuleList(
            [
                TransformerEncoder(hidden_dim, nhead, dim_feedforward, enc_act, num_encoder_layers)
                for _ in self.use_encoder_idx
            ]
        )

        c4 = round(expansion * hidden_dim // 2)
        num_blocks = round(3 * depth_mult)
        block = RepNCSPELAN4 if version == "dfine" else RepNCSPELAN5
        num_joins = len(in_channels) - 1
        self.lateral_convs = nn.ModuleList([ConvNormLayer(hidden_dim, hidden_dim, 1) for _ in range(num_joins)])
        self.fpn_blocks = nn.ModuleList(
            [block(hidden_dim, hidden_dim, hidden_dim * 2, c4, num_blocks, act=act) for _ in range(num_joins)]
        )
        self.downsample_convs = nn.ModuleList(
            [nn.Sequential(SCDown(hidden_dim, hidden_dim, 3, 2)) for _ in range(num_joins)]
        )
        self.pan_blocks = nn.ModuleList(
            [block(hidden_dim, hidden_dim, hidden_dim * 2, c4, num_blocks, act=act) for _ in range(num_joins)]
        )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """feats: [B, C_i, H_i, W_i] finest first -> [B, hidden_dim, H_i, W_i] per level."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"HybridEncoder expects {len(self.in_channels)} feature maps, got {len(feats)}")
        proj = [p(f) for p, f in zip(self.input_proj, feats)]

        for encoder, idx in zip(self.encoder, self.use_encoder_idx):
            b, c, h, w = proj[idx].shape
            src = proj[idx].flatten(2).permute(0, 2, 1)  # [B, H*W, C]
            pos = sincos_position_embedding(h, w, self.hidden_dim, self.pe_temperature)
            memory = encoder(src, pos_embed=pos.to(device=src.device, dtype=src.dtype))
            proj[idx] = memory.permute(0, 2, 1).reshape(b, c, h, w).contiguous()

        # top-down: coarsest to finest
        inner = [proj[-1]]
        for i, lateral in enumerate(self.lateral_convs):
            coarse = lateral(inner[0])
            inner[0] = coarse
            up = F.interpolate(coarse, scale_factor=2.0, mode="nearest")
            inner.insert(0, self.fpn_blocks[i](up + proj[-2 - i]))

        # bottom-up: finest to coarsest
        outs = [inner[0]]
        for i, down in enumerate(self.downsample_convs):
            outs.append(self.pan_blocks[i](down(outs[-1]) + inner[i + 1]))
        return outs
