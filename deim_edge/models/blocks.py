"""Conv and transformer building blocks shared by the DEIMv2 encoders.

Attribute names follow the official checkpoints, so the state-dict keys load unchanged.
Blocks that change for deployment define `convert_to_deploy()`, which folds BatchNorm into
the preceding conv (and RepVGG's two branches into one 3x3 conv).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def get_activation(name: str | None) -> nn.Module:
    """Activation module by name: None, 'relu', 'silu' (alias 'swish') or 'gelu'."""
    if name is None:
        return nn.Identity()
    key = name.lower()
    if key in ("silu", "swish"):
        return nn.SiLU()
    if key == "relu":
        return nn.ReLU()
    if key == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}; use one of None, 'relu', 'silu', 'gelu'")


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of the single conv equal to `norm(conv(x))` in eval mode."""
    scale = norm.weight / (norm.running_var + norm.eps).sqrt()  # [C_out]
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight, bias


def _conv_like(conv: nn.Conv2d, weight: Tensor, bias: Tensor) -> nn.Conv2d:
    """A biased copy of `conv`'s geometry holding the given weight and bias."""
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        groups=conv.groups, bias=True, device=weight.device, dtype=weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused


class ConvBN(nn.Module):
    """Conv2d (no bias, 'same' padding) followed by BatchNorm; kept unfused at deploy."""

    def __init__(self, ch_in: int, ch_out: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding, groups=groups, bias=False)
        self.norm = nn.BatchNorm2d(ch_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))


class ConvNormLayer(ConvBN):
    """ConvBN + activation; deploy folds the BN into `conv_bn_fused`."""

    def __init__(
        self,
        ch_in: int,
        ch_out: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: str | None = None,
    ) -> None:
        super().__init__(ch_in, ch_out, kernel_size, stride, groups)
        self.act = get_activation(act)
        self.conv_bn_fused: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv_bn_fused is not None:
            return self.act(self.conv_bn_fused(x))
        return self.act(super().forward(x))

    def convert_to_deploy(self) -> None:
        """Replace conv + norm by one biased conv (call in eval mode)."""
        if self.conv_bn_fused is not None:
            return
        self.conv_bn_fused = _conv_like(self.conv, *fuse_conv_bn(self.conv, self.norm))
        del self.conv, self.norm


class RepVggBlock(nn.Module):
    """RepVGG block: act(3x3 conv-BN + 1x1 conv-BN); deploy merges both into one 3x3 `conv`."""

    def __init__(self, ch_in: int, ch_out: int, act: str | None = "relu") -> None:
        super().__init__()
        self.conv1 = ConvBN(ch_in, ch_out, 3)
        self.conv2 = ConvBN(ch_in, ch_out, 1)
        self.act = get_activation(act)
        self.conv: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.conv is not None:
            return self.act(self.conv(x))
        return self.act(self.conv1(x) + self.conv2(x))

    def convert_to_deploy(self) -> None:
        """Merge the two branches into one biased 3x3 conv (call in eval mode)."""
        if self.conv is not None:
            return
        w3, b3 = fuse_conv_bn(self.conv1.conv, self.conv1.norm)
        w1, b1 = fuse_conv_bn(self.conv2.conv, self.conv2.norm)
        weight = w3 + F.pad(w1, [1, 1, 1, 1])  # 1x1 kernel sits at the 3x3 centre
        self.conv = _conv_like(self.conv1.conv, weight, b3 + b1)
        del self.conv1, self.conv2


class CSPRepLayer(nn.Module):
    """CSP layer (RepC3 style): 1x1 conv to two halves, RepVGG blocks on one, sum of both."""

    def __init__(self, ch_in: int, ch_out: int, num_blocks: int = 3, act: str | None = "silu") -> None:
        super().__init__()
        self.conv1 = ConvNormLayer(ch_in, ch_out * 2, 1, act=act)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(ch_out, ch_out, act=act) for _ in range(num_blocks)])

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.conv1(x).chunk(2, dim=1)  # 2 x [B, C_out, H, W]
        return a + self.bottlenecks(b)


class RepNCSPELAN4(nn.Module):
    """CSP-ELAN block (D-FINE): split, two chained CSP + 3x3 conv branches, concat all, 1x1 conv.

    c1: input channels, c2: output channels, c3: width of the first 1x1 conv (split in two
    halves), c4: width of each branch, n: RepVGG blocks per CSP layer.
    """

    def __init__(self, c1: int, c2: int, c3: int, c4: int, n: int = 3, act: str | None = "silu") -> None:
        super().__init__()
        self.cv1 = ConvNormLayer(c1, c3, 1, act=act)
        self.cv2 = self._branch(c3 // 2, c4, n, act)
        self.cv3 = self._branch(c4, c4, n, act)
        self.cv4 = ConvNormLayer(c3 + 2 * c4, c2, 1, act=act)

    @staticmethod
    def _branch(ch_in: int, ch_out: int, n: int, act: str | None) -> nn.Sequential:
        return nn.Sequential(CSPRepLayer(ch_in, ch_out, n, act), ConvNormLayer(ch_out, ch_out, 3, act=act))

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.cv1(x).chunk(2, dim=1)  # 2 x [B, c3/2, H, W]
        y2 = self.cv2(b)  # [B, c4, H, W]
        y3 = self.cv3(y2)  # [B, c4, H, W]
        return self.cv4(torch.cat([a, b, y2, y3], dim=1))


class RepNCSPELAN5(RepNCSPELAN4):
    """RepNCSPELAN4 without the 3x3 conv after each CSP layer (DEIM flavour)."""

    @staticmethod
    def _branch(ch_in: int, ch_out: int, n: int, act: str | None) -> nn.Sequential:
        return nn.Sequential(CSPRepLayer(ch_in, ch_out, n, act))


class SCDown(nn.Module):
    """Spatial-channel downsampling: 1x1 conv-BN, then depthwise kxk conv-BN with stride s."""

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 2) -> None:
        super().__init__()
        self.cv1 = ConvNormLayer(c1, c2, 1)
        self.cv2 = ConvNormLayer(c2, c2, k, s, groups=c2)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv2(self.cv1(x))


class TransformerEncoderLayer(nn.Module):
    """Post-norm transformer encoder layer; the position embedding is added to queries and keys."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 1024, activation: str = "gelu") -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.activation = get_activation(activation)

    def forward(self, src: Tensor, pos_embed: Tensor | None = None) -> Tensor:
        # src: [B, N, C]; pos_embed: [1 or B, N, C]
        q = k = src if pos_embed is None else src + pos_embed
        attn, _ = self.self_attn(q, k, value=src, need_weights=False)
        src = self.norm1(src + attn)
        return self.norm2(src + self.linear2(self.activation(self.linear1(src))))


class TransformerEncoder(nn.Module):
    """A stack of `num_layers` TransformerEncoderLayers sharing one position embedding."""

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, activation: str = "gelu", num_layers: int = 1
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [TransformerEncoderLayer(d_model, nhead, dim_feedforward, activation) for _ in range(num_layers)]
        )

    def forward(self, src: Tensor, pos_embed: Tensor | None = None) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos_embed=pos_embed)
        return src


def sincos_position_embedding(h: int, w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """2-D sin-cos embedding [1, h*w, dim] for the row-major tokens of an h x w map.

    Token k gets the coordinate pair (k // h, k % h): the official code enumerates an (w, h)
    grid, which for square maps is (row, col) and for non-square maps must be kept as is for
    the trained weights to see the same embedding.
    """
    if dim % 4:
        raise ValueError(f"the sin-cos position embedding needs a dim divisible by 4, got {dim}")
    k = torch.arange(h * w)
    first = (k // h).to(torch.float32)[:, None]  # [N, 1]
    second = (k % h).to(torch.float32)[:, None]  # [N, 1]
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter)  # [dim/4]
    out_a = first * omega[None]  # [N, dim/4]
    out_b = second * omega[None]
    return torch.cat([out_a.sin(), out_a.cos(), out_b.sin(), out_b.cos()], dim=1)[None]
