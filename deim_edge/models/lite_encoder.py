"""LiteEncoder: the two-scale, transformer-free encoder of DEIMv2 Atto, Femto and Pico."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ConvBN, ConvNormLayer, RepNCSPELAN4, get_activation


class GAPFusion(nn.Module):
    """Adds the global average of a map to every position, then a 1x1 conv-BN-act."""

    def __init__(self, channels: int, act: str | None = "silu") -> None:
        super().__init__()
        self.cv = ConvNormLayer(channels, channels, 1, act=act)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv(x + x.mean(dim=(2, 3), keepdim=True))


def _pool_downsample(channels: int, act: str | None) -> nn.Sequential:
    """Stride-2 downsampling: 3x3 average pool, 1x1 conv, BN, activation."""
    return nn.Sequential(
        nn.AvgPool2d(kernel_size=3, stride=2, padding=1),
        nn.Conv2d(channels, channels, 1, bias=False),
        nn.BatchNorm2d(channels),
        get_activation(act),
    )


class LiteEncoder(nn.Module):
    """Turns one backbone map (stride s) into two fused maps at strides s and 2s.

    The coarse level is made by pooling the projected input; a small FPN/PAN pair of
    RepNCSPELAN4 blocks fuses the two levels. Input sides must be multiples of 2s.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        feat_strides: Sequence[int],
        hidden_dim: int,
        expansion: float = 1.0,
        depth_mult: float = 1.0,
        act: str = "silu",
    ) -> None:
        super().__init__()
        if len(in_channels) != 1 or len(feat_strides) != 1:
            raise ValueError(
                f"LiteEncoder takes exactly one input level, got in_channels={in_channels}, "
                f"feat_strides={feat_strides}"
            )
        self.in_channels = list(in_channels)
        self.hidden_dim = hidden_dim
        self.out_channels = [hidden_dim, hidden_dim]
        self.out_strides = [feat_strides[0], feat_strides[0] * 2]

        self.input_proj = nn.ModuleList([ConvBN(in_channels[0], hidden_dim, 1)])
        self.down_sample1 = _pool_downsample(hidden_dim, act)
        self.down_sample2 = _pool_downsample(hidden_dim, act)
        self.bi_fusion = GAPFusion(hidden_dim, act=act)

        c4 = round(expansion * hidden_dim // 2)
        num_blocks = round(3 * depth_mult)
        self.fpn_block = RepNCSPELAN4(hidden_dim, hidden_dim, hidden_dim * 2, c4, num_blocks, act=act)
        self.pan_block = RepNCSPELAN4(hidden_dim, hidden_dim, hidden_dim * 2, c4, num_blocks, act=act)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """feats: [[B, C_in, H, W]] -> [[B, D, H, W], [B, D, H/2, W/2]]."""
        if len(feats) != 1:
            raise ValueError(f"LiteEncoder expects 1 feature map, got {len(feats)}")
        fine = self.input_proj[0](feats[0])  # [B, D, H, W]
        coarse = self.bi_fusion(self.down_sample1(fine))  # [B, D, H/2, W/2]
        out_fine = self.fpn_block(fine + F.interpolate(coarse, scale_factor=2.0, mode="nearest"))
        out_coarse = self.pan_block(coarse + self.down_sample2(out_fine))
        return [out_fine, out_coarse]
