"""DINOv3 ViT-S/16 and ViT-S+/16 (Meta) as used by DEIMv2 L and X.

Attribute names follow Meta's release so `dinov3_vits16*_pretrain_lvd1689m-*.pth` loads with
strict=True. Only the inference path plus the training-time RoPE coordinate rescale are kept.
The RoPE, attention, FFN and block layers here are shared with the ViT-Tiny in `vit_tiny.py`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rope_rotate_half(x: Tensor) -> Tensor:
    """[x_a, x_b] -> [-x_b, x_a] along the last dim."""
    x_a, x_b = x.chunk(2, dim=-1)
    return torch.cat([-x_b, x_a], dim=-1)


def rope_apply(x: Tensor, sin: Tensor, cos: Tensor) -> Tensor:
    """Rotate x [..., HW, D] by the angles whose sin/cos are [HW, D]."""
    return x * cos + rope_rotate_half(x) * sin


class RopePositionEmbedding(nn.Module):
    """Axial 2D rotary embedding: sin/cos [HW, D_head] for an H x W patch grid.

    Coordinates are cell centres normalised per axis to [-1, 1]; with `rescale_coords` set,
    training mode multiplies them by a log-uniform factor in [1/r, r].
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        base: float = 100.0,
        rescale_coords: float | None = None,
    ) -> None:
        super().__init__()
        if embed_dim % (4 * num_heads) != 0:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by 4 * num_heads ({num_heads})")
        self.base = base
        self.d_head = embed_dim // num_heads
        self.rescale_coords = rescale_coords
        self.register_buffer("periods", torch.empty(self.d_head // 4), persistent=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """periods[i] = base ** (2i / (D_head / 2)), i < D_head / 4 (same float ops as Meta)."""
        exponents = 2 * torch.arange(self.d_head // 4, device=self.periods.device, dtype=torch.float32)
        self.periods.data = self.base ** (exponents / (self.d_head // 2))

    def forward(self, H: int, W: int) -> tuple[Tensor, Tensor]:
        dd = {"device": self.periods.device, "dtype": torch.float32}
        coords_h = torch.arange(0.5, H, **dd) / H  # [H]
        coords_w = torch.arange(0.5, W, **dd) / W  # [W]
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1)  # [HW, 2]
        coords = 2.0 * coords - 1.0
        if self.training and self.rescale_coords is not None:
            log_r = math.log(self.rescale_coords)
            coords = coords * torch.empty(1, **dd).uniform_(-log_r, log_r).exp()
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]  # [HW, 2, D/4]
        angles = angles.flatten(1, 2).tile(2)  # [HW, D]
        return torch.sin(angles), torch.cos(angles)


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: [B, 3, H, W] -> [B, C, H/p, W/p]."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 384) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class LinearKMaskedBias(nn.Linear):
    """qkv projection whose bias is multiplied by `bias_mask` (1 for q and v, 0 for k)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if bias:
            self.register_buffer("bias_mask", self._qv_mask(out_features))

    @staticmethod
    def _qv_mask(out_features: int) -> Tensor:
        mask = torch.ones(out_features)
        mask[out_features // 3 : 2 * out_features // 3] = 0.0
        return mask

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias * self.bias_mask.to(self.bias.dtype) if self.bias is not None else None
        return F.linear(x, self.weight, bias)


class SelfAttention(nn.Module):
    """Multi-head self-attention; RoPE rotates q/k of the trailing HW patch tokens only."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, mask_k_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = (LinearKMaskedBias if mask_k_bias else nn.Linear)(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x [B, heads, N, D]
        if rope is not None:
            q, k = self._apply_rope(q, k, rope)
        x = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, D]
        return self.proj(x.transpose(1, 2).reshape(B, N, C))

    @staticmethod
    def _apply_rope(q: Tensor, k: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        sin, cos = rope  # [HW, D]
        n_prefix = q.shape[-2] - sin.shape[-2]  # class (+ storage) tokens are not rotated

        def rotate(t: Tensor) -> Tensor:
            rotated = rope_apply(t[:, :, n_prefix:].to(sin.dtype), sin, cos).to(t.dtype)
            return torch.cat([t[:, :, :n_prefix], rotated], dim=-2)

        return rotate(q), rotate(k)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLUFFN(nn.Module):
    """w3(silu(w1 x) * w2 x); hidden width is 2/3 of `hidden_features`, rounded up to `align_to`."""

    def __init__(self, in_features: int, hidden_features: int, bias: bool = True, align_to: int = 8) -> None:
        super().__init__()
        d = int(hidden_features * 2 / 3)
        d += -d % align_to
        self.w1 = nn.Linear(in_features, d, bias=bias)
        self.w2 = nn.Linear(in_features, d, bias=bias)
        self.w3 = nn.Linear(d, in_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class LayerScale(nn.Module):
    """Per-channel learned scale `gamma`."""

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_values))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


FFN_LAYERS = {"mlp": Mlp, "swiglu": SwiGLUFFN}


class SelfAttentionBlock(nn.Module):
    """Pre-norm transformer block with optional LayerScale (no LayerScale -> no ls1/ls2 keys)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_ratio: float = 4.0,
        ffn_layer: str = "mlp",
        norm_eps: float = 1e-5,
        layerscale_init: float | None = None,
        mask_k_bias: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = SelfAttention(dim, num_heads, qkv_bias=True, mask_k_bias=mask_k_bias)
        self.ls1 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = FFN_LAYERS[ffn_layer](dim, int(dim * ffn_ratio))
        self.ls2 = LayerScale(dim, layerscale_init) if layerscale_init else nn.Identity()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


def init_vit_weights(module: nn.Module) -> None:
    """Meta's ViT init: truncated-normal(0.02) Linear weights, zero biases, default norms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            m.reset_parameters()


class DinoVisionTransformer(nn.Module):
    """DINOv3 ViT: patch tokens after 1 class + `n_storage_tokens` register tokens, RoPE,
    LayerScale blocks and a final LayerNorm.

    forward(x [B, 3, H, W], layers) -> [B, H/p * W/p, C] final-normed patch tokens of each
    requested block (Meta's `get_intermediate_layers(x, n=layers, norm=True)`).
    """

    def __init__(
        self,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        ffn_ratio: float = 4.0,
        ffn_layer: str = "mlp",
        n_storage_tokens: int = 4,
        patch_size: int = 16,
        layerscale_init: float = 1e-5,
        norm_eps: float = 1e-5,
        rope_base: float = 100.0,
        rope_rescale_coords: float | None = 2.0,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.n_storage_tokens = n_storage_tokens
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, n_storage_tokens, embed_dim))
        self.rope_embed = RopePositionEmbedding(
            embed_dim, num_heads, base=rope_base, rescale_coords=rope_rescale_coords
        )
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(
                embed_dim, num_heads, ffn_ratio, ffn_layer, norm_eps, layerscale_init, mask_k_bias=True
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # only for key parity with Meta
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """From-scratch init as in Meta's training code (checkpoints overwrite it)."""
        init_vit_weights(self)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.storage_tokens, std=0.02)
        nn.init.zeros_(self.mask_token)
        bound = 1.0 / math.sqrt(3 * self.patch_size**2)
        nn.init.uniform_(self.patch_embed.proj.weight, -bound, bound)
        nn.init.uniform_(self.patch_embed.proj.bias, -bound, bound)

    def forward(self, x: Tensor, layers: Sequence[int]) -> list[Tensor]:
        patches = self.patch_embed(x)  # [B, C, h, w]
        B, _, h, w = patches.shape
        # `0 * mask_token` keeps the unused token in the graph (as Meta does) for DDP
        cls_token = self.cls_token + 0 * self.mask_token
        x = torch.cat(
            [cls_token.expand(B, -1, -1), self.storage_tokens.expand(B, -1, -1), patches.flatten(2).transpose(1, 2)],
            dim=1,
        )  # [B, 1 + S + h*w, C]
        n_prefix = 1 + self.n_storage_tokens
        rope = self.rope_embed(H=h, W=w)
        outs = []
        for i, blk in enumerate(self.blocks):
            if self.training and i > 0:
                rope = self.rope_embed(H=h, W=w)  # Meta draws a fresh coordinate rescale per block
            x = blk(x, rope)
            if i in layers:
                outs.append(self.norm(x[:, n_prefix:]))
        return outs
