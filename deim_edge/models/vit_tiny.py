"""ViT-Tiny / ViT-Tiny+ with RoPE, the distilled DINOv3 students of DEIMv2 S and M.

One class token, no registers, no LayerScale, no final norm; weights live under `_model.` so the
distilled checkpoints (`vitt_distill.pt`, `vittplus_distill.pt`) load into `_model` with strict=True.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .dinov3 import PatchEmbed, RopePositionEmbedding, SelfAttentionBlock, init_vit_weights


class VisionTransformer(nn.Module):
    """forward(x [B, 3, H, W], layers) -> raw patch tokens [B, H/p * W/p, C] of each requested block."""

    def __init__(
        self,
        embed_dim: int = 192,
        num_heads: int = 3,
        depth: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        norm_eps: float = 1e-6,
        rope_base: float = 100.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        # plain container: its attribute names are the checkpoint's keys
        self._model = nn.Module()
        self._model.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self._model.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self._model.blocks = nn.ModuleList(
            SelfAttentionBlock(embed_dim, num_heads, mlp_ratio, "mlp", norm_eps) for _ in range(depth)
        )
        self._model.rope_embed = RopePositionEmbedding(embed_dim, num_heads, base=rope_base)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """From-scratch init (truncated-normal 0.02 for Linear and the class token)."""
        init_vit_weights(self)
        nn.init.trunc_normal_(self._model.cls_token, std=0.02)

    def forward(self, x: Tensor, layers: Sequence[int]) -> list[Tensor]:
        m = self._model
        patches = m.patch_embed(x)  # [B, C, h, w]
        B, _, h, w = patches.shape
        x = torch.cat([m.cls_token.expand(B, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)  # [B, 1+h*w, C]
        rope = m.rope_embed(H=h, W=w)
        outs = []
        for i, blk in enumerate(m.blocks):
            x = blk(x, rope)
            if i in layers:
                outs.append(x[:, 1:])
        return outs
