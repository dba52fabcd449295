"""torch.topk along the last dim without a TopK op, for runtimes and NPUs that lack one (Rockchip RKNN, Hailo,
Qualcomm QNN): each element's rank is counted with comparisons (Greater, Equal, ReduceSum), and the k largest
are picked by a one-hot matrix, so values and gathered rows come from a MatMul instead of TopK and Gather.

Ties go to the lower index. Ranks are whole numbers below n, exact in float32, and in float16 for n <= 2048
(the anchors of Atto to N at their sizes: 500 to 2000). The comparison matrix is n x n per row: meant for the
decoder's query selection (n = anchors) and the LQE's bins (n = reg_max + 1 = 33), not for large n.
"""
from __future__ import annotations

import torch
from torch import Tensor


def top_onehot(x: Tensor, k: int) -> Tensor:
    """x [..., n] -> [..., k, n]: row r is 1 at the position of x's r-th largest element (ties: lower index
    first), 0 elsewhere; as `torch.topk(x, k).indices` one-hot encoded, from comparisons and sums only."""
    n = x.shape[-1]
    earlier = torch.ones(n, n, dtype=x.dtype, device=x.device).tril(-1)  # [i, j] = 1 where j < i
    above = (x.unsqueeze(-2) > x.unsqueeze(-1)).to(x.dtype)  # [..., i, j] = 1 where x_j > x_i
    tied_before = (x.unsqueeze(-2) == x.unsqueeze(-1)).to(x.dtype) * earlier
    rank = (above + tied_before).sum(-1)  # [..., n]: 0 for the largest
    ranks = torch.arange(k, dtype=x.dtype, device=x.device).unsqueeze(-1)  # [k, 1]
    return (rank.unsqueeze(-2) == ranks).to(x.dtype)


def topk_values(x: Tensor, k: int) -> Tensor:
    """`torch.topk(x, k, dim=-1).values` without TopK."""
    return (top_onehot(x, k) * x.unsqueeze(-2)).sum(-1)


def take_top(onehot: Tensor, rows: Tensor) -> Tensor:
    """onehot [B, k, n] (top_onehot), rows [B or 1, n, C] -> the picked rows [B, k, C], by MatMul (no Gather)."""
    return onehot @ rows.expand(onehot.shape[0], -1, -1)
