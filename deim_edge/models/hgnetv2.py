"""HGNetv2 backbone (B0 and the pruned Pico, Femto, Atto) of the small DEIMv2 variants.

Module names reproduce the official state-dict keys (`stem.stem1.conv.weight`,
`stages.2.blocks.0.layers.1.conv2.lab.scale`, ...), so official checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HGNETV2_CONFIGS", "HGNetv2", "StageConfig"]


class StageConfig(NamedTuple):
    """One HGNetv2 stage: [in, mid, out, blocks, downsample, light, kernel, layers]."""

    in_chs: int
    mid_chs: int
    out_chs: int
    num_blocks: int
    downsample: bool
    light: bool
    kernel_size: int
    num_layers: int


# The only place the architecture numbers live. "stem" is (in, mid, out) channels.
HGNETV2_CONFIGS: dict[str, dict] = {
    "B0": {
        "stem": (3, 16, 16),
        "stages": (
            StageConfig(16, 16, 64, 1, False, False, 3, 3),
            StageConfig(64, 32, 256, 1, True, False, 3, 3),
            StageConfig(256, 64, 512, 2, True, True, 5, 3),
            StageConfig(512, 128, 1024, 1, True, True, 5, 3),
        ),
    },
    "Pico": {  # B0 without its last stage
        "stem": (3, 16, 16),
        "stages": (
            StageConfig(16, 16, 64, 1, False, False, 3, 3),
            StageConfig(64, 32, 256, 1, True, False, 3, 3),
            StageConfig(256, 64, 512, 2, True, True, 5, 3),
        ),
    },
    "Femto": {  # Pico with one block in the last stage
        "stem": (3, 16, 16),
        "stages": (
            StageConfig(16, 16, 64, 1, False, False, 3, 3),
            StageConfig(64, 32, 256, 1, True, False, 3, 3),
            StageConfig(256, 64, 512, 1, True, True, 5, 3),
        ),
    },
    "Atto": {  # Femto with 256 output channels and 3x3 kernels in the last stage
        "stem": (3, 16, 16),
        "stages": (
            StageConfig(16, 16, 64, 1, False, False, 3, 3),
            StageConfig(64, 32, 256, 1, True, False, 3, 3),
            StageConfig(256, 64, 256, 1, True, True, 3, 3),
        ),
    },
}


class LearnableAffine(nn.Module):
    """Scalar scale and shift learned after an activation (`scale * x + bias`)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x + self.bias


class ConvBNAct(nn.Module):
    """Conv (no bias), BatchNorm, optional ReLU, then a learnable affine when both act and lab are on."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        use_act: bool = True,
        use_lab: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_chs, out_chs, kernel_size, stride, padding=(kernel_size - 1) // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True) if use_act else nn.Identity()
        self.lab = LearnableAffine() if use_act and use_lab else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lab(self.act(self.bn(self.conv(x))))


class LightConvBNAct(nn.Module):
    """Pointwise conv without activation followed by a depthwise kxk conv with activation."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, use_lab: bool = False) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_chs, out_chs, 1, use_act=False, use_lab=use_lab)
        self.conv2 = ConvBNAct(out_chs, out_chs, kernel_size, groups=out_chs, use_lab=use_lab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class StemBlock(nn.Module):
    """Stride-4 stem: 3x3 s2 conv, a 2x2-conv branch beside a 2x2 max-pool, 3x3 s2 conv, 1x1 conv."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, use_lab: bool = False) -> None:
        super().__init__()
        self.stem1 = ConvBNAct(in_chs, mid_chs, 3, stride=2, use_lab=use_lab)
        self.stem2a = ConvBNAct(mid_chs, mid_chs // 2, 2, use_lab=use_lab)
        self.stem2b = ConvBNAct(mid_chs // 2, mid_chs, 2, use_lab=use_lab)
        self.stem3 = ConvBNAct(mid_chs * 2, mid_chs, 3, stride=2, use_lab=use_lab)
        self.stem4 = ConvBNAct(mid_chs, out_chs, 1, use_lab=use_lab)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=1, ceil_mode=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(self.stem1(x), (0, 1, 0, 1))  # [B, mid, H/2 + 1, W/2 + 1]
        branch = self.stem2b(F.pad(self.stem2a(x), (0, 1, 0, 1)))  # [B, mid, H/2, W/2]
        x = torch.cat([self.pool(x), branch], dim=1)  # [B, 2 * mid, H/2, W/2]
        return self.stem4(self.stem3(x))  # [B, out, H/4, W/4]


class HGBlock(nn.Module):
    """A chain of convs whose outputs (and the input) are concatenated and squeezed to out_chs."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        num_layers: int,
        kernel_size: int = 3,
        light: bool = False,
        residual: bool = False,
        use_lab: bool = False,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.ModuleList()
        for i in range(num_layers):
            layer_in = in_chs if i == 0 else mid_chs
            if light:
                self.layers.append(LightConvBNAct(layer_in, mid_chs, kernel_size, use_lab=use_lab))
            else:
                self.layers.append(ConvBNAct(layer_in, mid_chs, kernel_size, use_lab=use_lab))
        total_chs = in_chs + num_layers * mid_chs
        self.aggregation = nn.Sequential(
            ConvBNAct(total_chs, out_chs // 2, 1, use_lab=use_lab),
            ConvBNAct(out_chs // 2, out_chs, 1, use_lab=use_lab),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(layer(feats[-1]))
        out = self.aggregation(torch.cat(feats, dim=1))  # [B, out, H, W]
        return out + x if self.residual else out


class HGStage(nn.Module):
    """Optional depthwise stride-2 downsample followed by HG blocks (residual after the first)."""

    def __init__(self, cfg: StageConfig, use_lab: bool = False) -> None:
        super().__init__()
        if cfg.downsample:
            self.downsample = ConvBNAct(
                cfg.in_chs, cfg.in_chs, 3, stride=2, groups=cfg.in_chs, use_act=False, use_lab=use_lab
            )
        else:
            self.downsample = nn.Identity()
        self.blocks = nn.Sequential(
            *[
                HGBlock(
                    cfg.in_chs if i == 0 else cfg.out_chs,
                    cfg.mid_chs,
                    cfg.out_chs,
                    cfg.num_layers,
                    kernel_size=cfg.kernel_size,
                    light=cfg.light,
                    residual=i > 0,
                    use_lab=use_lab,
                )
                for i in range(cfg.num_blocks)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with statistics and affine parameters held fixed as buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)  # BatchNorm2d checkpoints carry it
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d under module by a FrozenBatchNorm2d with the same values."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


class HGNetv2(nn.Module):
    """HGNetv2 backbone returning the feature maps of the stages in return_idx (increasing).

    freeze_at >= 0 freezes the stem's parameters, and with freeze_stem_only=False also those of
    stages 0..freeze_at; freeze_norm swaps every BatchNorm2d for a FrozenBatchNorm2d. All DEIMv2
    configs use freeze_at=-1, freeze_norm=False.
    """

    def __init__(
        self,
        name: str,
        return_idx: Sequence[int],
        use_lab: bool = True,
        freeze_at: int = -1,
        freeze_stem_only: bool = True,
        freeze_norm: bool = False,
    ) -> None:
        super().__init__()
        if name not in HGNETV2_CONFIGS:
            raise ValueError(f"unknown HGNetv2 config {name!r}; valid names: {sorted(HGNETV2_CONFIGS)}")
        cfg = HGNETV2_CONFIGS[name]
        self.name = name
        stage_cfgs: Sequence[StageConfig] = cfg["stages"]
        return_idx = list(return_idx)
        increasing = all(a < b for a, b in zip(return_idx, return_idx[1:]))
        if not return_idx or not increasing or not 0 <= return_idx[0] <= return_idx[-1] < len(stage_cfgs):
            raise ValueError(
                f"return_idx must be increasing stage indices in 0..{len(stage_cfgs) - 1}, got {return_idx}"
            )
        self.return_idx = return_idx

        self.stem = StemBlock(*cfg["stem"], use_lab=use_lab)
        self.stages = nn.ModuleList([HGStage(s, use_lab=use_lab) for s in stage_cfgs])

        strides, stride = [], 4  # the stem reduces by 4, every downsampling stage by 2 more
        for s in stage_cfgs:
            stride *= 2 if s.downsample else 1
            strides.append(stride)
        self.out_channels = [stage_cfgs[i].out_chs for i in self.return_idx]
        self.out_strides = [strides[i] for i in self.return_idx]

        if freeze_at >= 0:
            frozen = [self.stem] if freeze_stem_only else [self.stem, *self.stages[: freeze_at + 1]]
            for module in frozen:
                module.requires_grad_(False)
        if freeze_norm:
            _freeze_batchnorm(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [B, 3, H, W] -> one [B, out_channels[i], H / out_strides[i], W / out_strides[i]] per returned stage."""
        x = self.stem(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.return_idx:
                outs.append(x)
        return outs
