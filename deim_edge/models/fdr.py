"""Fine-grained distribution refinement math: bin weights W(n), integral, edge distances <-> boxes."""
import torch
import torch.nn.functional as F
from torch import Tensor

from .box_ops import box_xyxy_to_cxcywh


def weighting_function(reg_max: int, up: Tensor, reg_scale: Tensor | float) -> Tensor:
    """Non-uniform bin values W(n), n = 0..reg_max: [reg_max + 1], symmetric around W(reg_max/2) = 0.

    up [1] sets the outer bounds (+-2 * up * reg_scale); reg_scale sets the curvature.
    Computed in the dtype of `up`, but at least float32 (pass float64 tensors for a high-precision
    table); callers cast the table to their activations' dtype.
    """
    dtype = torch.promote_types(up.dtype, torch.float32)
    up = up.reshape(-1)[:1].abs().to(dtype)  # [1]
    reg_scale = torch.as_tensor(reg_scale, device=up.device).abs().to(dtype)
    inner_bound = up * reg_scale
    outer_bound = up * reg_scale * 2
    step = (inner_bound + 1) ** (2 / (reg_max - 2))
    powers = torch.arange(1, reg_max // 2, dtype=dtype, device=up.device)
    right = step ** powers - 1  # [reg_max / 2 - 1]
    zero = torch.zeros_like(up)
    return torch.cat([-outer_bound, -right.flip(0), zero, right, outer_bound])


def integral(corners: Tensor, project: Tensor) -> Tensor:
    """Expected edge offsets of per-edge bin logits: [..., 4 * (reg_max + 1)] -> [..., 4], in corners' dtype."""
    num_bins = project.shape[0]
    prob = F.softmax(corners.reshape(*corners.shape[:-1], 4, num_bins), dim=-1)
    # a matrix product with a [bins, 1] column: ONNX Runtime runs F.linear's 1-D MatMul as one small product per
    # row (94 us for Atto's 100 queries at 1 thread) and this as one GEMM (10 us)
    column = project.to(dtype=prob.dtype, device=prob.device).unsqueeze(-1)
    return (prob @ column).squeeze(-1)


def distance2bbox(points: Tensor, distance: Tensor, reg_scale: Tensor | float) -> Tensor:
    """Boxes from reference boxes [..., 4] cxcywh and edge distances [..., 4] (l, t, r, b) -> cxcywh.

    reg_scale (a float or a [1] tensor of any dtype) is cast to the boxes' dtype.
    """
    reg_scale = torch.as_tensor(reg_scale, device=points.device).abs().to(points.dtype)
    cx, cy, w, h = points.unbind(-1)
    x1 = cx - (0.5 * reg_scale + distance[..., 0]) * (w / reg_scale)
    y1 = cy - (0.5 * reg_scale + distance[..., 1]) * (h / reg_scale)
    x2 = cx + (0.5 * reg_scale + distance[..., 2]) * (w / reg_scale)
    y2 = cy + (0.5 * reg_scale + distance[..., 3]) * (h / reg_scale)
    return box_xyxy_to_cxcywh(torch.stack([x1, y1, x2, y2], -1))


def translate_gt(gt: Tensor, reg_max: int, reg_scale: Tensor | float, up: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Soft bin targets for continuous offsets: (left bin index, right weight, left weight), each [N].

    Offsets below W(0) go fully to bin 0, offsets at or above W(reg_max) fully to the right end.
    """
    gt = gt.reshape(-1)
    values = weighting_function(reg_max, up, reg_scale)  # [reg_max + 1]
    indices = ((values.unsqueeze(0) - gt.unsqueeze(1)) <= 0).sum(dim=1).float() - 1
    weight_right = torch.zeros_like(indices)
    weight_left = torch.zeros_like(indices)

    inside = (indices >= 0) & (indices < reg_max)
    left_idx = indices[inside].long()
    left_gap = (gt[inside] - values[left_idx]).abs()
    right_gap = (values[left_idx + 1] - gt[inside]).abs()
    weight_right[inside] = left_gap / (left_gap + right_gap)
    weight_left[inside] = 1.0 - weight_right[inside]

    below = indices < 0
    weight_right[below] = 0.0
    weight_left[below] = 1.0
    indices[below] = 0.0

    above = indices >= reg_max
    weight_right[above] = 1.0
    weight_left[above] = 0.0
    indices[above] = reg_max - 0.1
    return indices, weight_right, weight_left


def bbox2distance(points: Tensor, bbox: Tensor, reg_max: int, reg_scale: Tensor | float, up: Tensor,
                  eps: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Soft bin targets of xyxy boxes [N, 4] around reference boxes [N, 4] cxcywh.

    Returns (fractional left-bin index [N * 4] in [0, reg_max - eps], right weight [N * 4],
    left weight [N * 4]), all detached; edge order is (left, top, right, bottom).
    """
    reg_scale = abs(reg_scale)
    unit_w = points[:, 2] / reg_scale + 1e-16
    unit_h = points[:, 3] / reg_scale + 1e-16
    left = (points[:, 0] - bbox[:, 0]) / unit_w - 0.5 * reg_scale
    top = (points[:, 1] - bbox[:, 1]) / unit_h - 0.5 * reg_scale
    right = (bbox[:, 2] - points[:, 0]) / unit_w - 0.5 * reg_scale
    bottom = (bbox[:, 3] - points[:, 1]) / unit_h - 0.5 * reg_scale
    four_lens = torch.stack([left, top, right, bottom], -1)
    indices, weight_right, weight_left = translate_gt(four_lens, reg_max, reg_scale, up)
    indices = indices.clamp(min=0, max=reg_max - eps)
    return indices.reshape(-1).detach(), weight_right.detach(), weight_left.detach()
