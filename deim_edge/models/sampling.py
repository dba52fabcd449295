"""Bilinear sampling of feature maps at fractional points, as `F.grid_sample(mode="bilinear",
padding_mode="zeros", align_corners=False)`, in two interchangeable forms:

- "grid": grid_sample itself (one GridSample node in ONNX);
- "gather": the four neighbours read with one row Gather from the flattened maps and blended with
  arithmetic (Pad, Floor, Clip, Cast, Gather, Mul, Add): ops every converter and NPU toolchain knows,
  where GridSample is missing (Rockchip RKNN, Hailo, Qualcomm QNN, older TensorRT and TFLite delegates).

Out-of-range neighbours read a one-pixel zero border, so no comparison or select is needed: each
integer coordinate is clipped to the border, and a point whose neighbours both fall outside reads
zeros from it, as grid_sample's zero padding does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SAMPLINGS = ("grid", "gather")


def sample(value: Tensor, grid: Tensor, sampling: str = "grid") -> Tensor:
    """value [N, C, H, W], grid [N, Q, P, 2] (x, y in [-1, 1] over the map's edges) -> [N, C, Q, P]."""
    if sampling == "grid":
        return F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if sampling == "gather":
        return gather_sample(value, grid)
    raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")


def gather_sample(value: Tensor, grid: Tensor) -> Tensor:
    """grid_sample (bilinear, zero padding, align_corners=False) with a row gather and arithmetic."""
    n, c, h, w = value.shape
    _, q, p, _ = grid.shape
    # pixel coordinates of the padded map: x = ((gx + 1) * W - 1) / 2, + 1 for the border
    x = (grid[..., 0] + 1) * (w / 2) + 0.5
    y = (grid[..., 1] + 1) * (h / 2) + 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    wx1, wy1 = x - x0, y - y0
    wx0, wy0 = 1 - wx1, 1 - wy1
    rows = F.pad(value, (1, 1, 1, 1)).permute(0, 2, 3, 1).reshape(n * (h + 2) * (w + 2), c)  # [N*(H+2)*(W+2), C]
    base = (torch.arange(n, device=value.device) * ((h + 2) * (w + 2))).reshape(n, 1, 1)

    def corner(xi: Tensor, yi: Tensor, weight: Tensor) -> Tensor:
        xi = xi.clamp(0, w + 1)
        yi = yi.clamp(0, h + 1)
        index = (yi * (w + 2) + xi).to(torch.int64) + base  # [N, Q, P]
        return rows[index.reshape(-1)].reshape(n, q, p, c) * weight.unsqueeze(-1)

    out = (corner(x0, y0, wx0 * wy0) + corner(x0 + 1, y0, wx1 * wy0)
           + corner(x0, y0 + 1, wx0 * wy1) + corner(x0 + 1, y0 + 1, wx1 * wy1))
    return out.permute(0, 3, 1, 2)
