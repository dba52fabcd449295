"""Deterministic, implementation-independent weights for parity checks.

Every parameter and BatchNorm statistic is drawn from numpy with a seed derived from its
state-dict name, so the public DEIMv2 model and ours receive the same values without sharing
code or init order. DINOv3's qkv bias masks get their
real pattern; other buffers and frozen parameters (anchors, RoPE periods, up, reg_scale) keep
their computed values.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch
from torch import nn


def _draw(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape)
    if leaf == "running_mean":
        return 0.1 * rng.standard_normal(shape)
    if len(shape) <= 1:
        if leaf in ("weight", "scale", "gamma"):  # norm scales, LAB scale, LayerScale
            return 1.0 + 0.1 * rng.standard_normal(shape)
        return 0.05 * rng.standard_normal(shape)  # biases
    fan_in = int(np.prod(shape[1:])) or 1
    return rng.standard_normal(shape) / np.sqrt(fan_in)


@torch.no_grad()
def fill_parity_weights(model: nn.Module, seed: int = 0) -> nn.Module:
    """Overwrite `model`'s parameters and BatchNorm statistics in place; returns the model."""
    for name, p in model.named_parameters():  # shared tensors are visited once, under their first name
        if not p.requires_grad:  # fixed hyper-parameters stored as parameters (decoder up, reg_scale)
            continue
        p.copy_(torch.from_numpy(_draw(name, tuple(p.shape), seed)).to(p.dtype))
    for name, b in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            b.copy_(torch.from_numpy(_draw(name, tuple(b.shape), seed)).to(b.dtype))
        elif name.endswith("qkv.bias_mask"):  # DINOv3: q and v biases on, k bias off (NaN until set)
            b.fill_(1.0)
            b[b.numel() // 3: 2 * b.numel() // 3] = 0.0
    return model


def parity_input(size: tuple[int, int], seed: int = 0, batch: int = 2) -> torch.Tensor:
    """A fixed image batch in [0, 1], [batch, 3, H, W]."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.uniform(0.0, 1.0, (batch, 3, *size)).astype(np.float32))
