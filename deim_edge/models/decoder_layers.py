"""Building blocks of the DEIMv2 decoder: norms, MLPs, deformable attention, decoder layer, LQE."""
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import get_activation
from .ranking import topk_values
from .sampling import sample


def prior_prob_bias(prior_prob: float) -> float:
    """Logit bias that makes a sigmoid output start at prior_prob."""
    return -math.log((1 - prior_prob) / prior_prob)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim (computed in at least float32), with a learned scale."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        wide = x.to(torch.promote_types(x.dtype, torch.float32))
        normed = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.scale


class MLP(nn.Module):
    """Stack of linear layers with an activation between them (none after the last)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, act: str) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.act = get_activation(act)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(x))
        return self.layers[-1](x)


class SwiGLUFFN(nn.Module):
    """Feed-forward block silu(x W1) * (x W2) -> W3, with W1 and W2 fused in `w12`."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(in_features, 2 * hidden_features)
        self.w3 = nn.Linear(hidden_features, out_features)
        for linear in (self.w12, self.w3):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Gate(nn.Module):
    """Learned sigmoid gates mixing a residual stream and an update, then RMSNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * dim, 2 * dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, prior_prob_bias(0.5))
        self.norm = RMSNorm(dim)

    def forward(self, x: Tensor, update: Tensor) -> Tensor:
        gate_x, gate_update = torch.sigmoid(self.gate(torch.cat([x, update], dim=-1))).chunk(2, dim=-1)
        return self.norm(gate_x * x + gate_update * update)


class MSDeformableAttention(nn.Module):
    """Multi-scale deformable cross-attention around reference boxes, without value/output projections.

    Each head samples num_points[l] points on level l (bilinear, zero padding), offsets scaled by
    the reference box size / points, and averages them with softmax weights over all points.
    """

    def __init__(self, embed_dim: int, num_heads: int, num_points: list[int], offset_scale: float = 0.5) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.num_points = list(num_points)
        self.offset_scale = offset_scale
        self.sampling = "grid"  # or "gather": the same bilinear sampling without GridSample (models/sampling.py)
        total = sum(self.num_points)
        scale = [1 / n for n in self.num_points for _ in range(n)]
        self.register_buffer("num_points_scale", torch.tensor(scale, dtype=torch.float32))  # [P]
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * total * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * total)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # each head starts looking along its own direction, 1..n steps out on every level
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values  # [H, 2]
        steps = torch.cat([torch.arange(1, n + 1) for n in self.num_points]).reshape(1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_((directions[:, None, :] * steps).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)

    def forward(self, query: Tensor, ref_boxes: Tensor, value: list[Tensor]) -> Tensor:
        """query [B, Q, C]; ref_boxes [B, Q, 1, 4] cxcywh in [0, 1]; value per level [B*heads, C/heads, H, W]."""
        bs, num_q = query.shape[:2]
        total = sum(self.num_points)
        offsets = self.sampling_offsets(query).reshape(bs, num_q, self.num_heads, total, 2)
        weights = self.attention_weights(query).reshape(bs, num_q, self.num_heads, total).softmax(-1)

        # grid = 2 * (center + offset * points_scale * size * offset_scale) - 1, arranged so that the two
        # operations on the [B, heads, Q, P, 2] offsets broadcast over the heads only (the outermost dim):
        # runtimes run middle-dim broadcasts as slow generic loops (ONNX Runtime: 57 us each in Atto)
        offsets = offsets.permute(0, 2, 1, 3, 4)  # [B, heads, Q, P, 2]
        points_scale = self.num_points_scale.to(dtype=query.dtype).unsqueeze(-1) * (2 * self.offset_scale)
        boxes = ref_boxes.unsqueeze(1)  # [B, 1, Q, 1, 4]
        step = boxes[..., 2:] * points_scale  # [B, 1, Q, P, 2]
        origin = (2 * boxes[..., :2] - 1).expand(step.shape)  # [B, 1, Q, P, 2]
        grids = (offsets * step + origin).flatten(0, 1)  # [B*heads, Q, P, 2]

        head_dim = value[0].shape[1]
        samples = []
        for level_value, level_grid in zip(value, grids.split(self.num_points, dim=-2), strict=True):
            samples.append(sample(level_value, level_grid, self.sampling))  # [B*heads, C/heads, Q, P_l]
        weights = weights.permute(0, 2, 1, 3).reshape(bs * self.num_heads, 1, num_q, total)
        out = (torch.cat(samples, dim=-1) * weights).sum(-1)  # [B*heads, C/heads, Q]
        return out.reshape(bs, self.num_heads * head_dim, num_q).permute(0, 2, 1)


class DecoderLayer(nn.Module):
    """Self-attention -> deformable cross-attention (gated or residual) -> SwiGLU FFN, RMSNorm after each."""

    def __init__(self, d_model: int, n_head: int, dim_feedforward: int, num_points: list[int],
                 use_gateway: bool) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, n_head, batch_first=True)
        self.norm1 = RMSNorm(d_model)
        self.cross_attn = MSDeformableAttention(d_model, n_head, num_points)
        self.use_gateway = use_gateway
        if use_gateway:
            self.gateway = Gate(d_model)
        else:
            self.norm2 = RMSNorm(d_model)
        self.swish_ffn = SwiGLUFFN(d_model, dim_feedforward // 2, d_model)
        self.norm3 = RMSNorm(d_model)

    def forward(self, target: Tensor, ref_boxes: Tensor, value: list[Tensor], attn_mask: Tensor | None,
                query_pos: Tensor) -> Tensor:
        """target, query_pos [B, Q, C]; ref_boxes [B, Q, 1, 4]; value per level [B*heads, C/heads, H, W];
        attn_mask [Q, Q] (True = blocked) -> [B, Q, C]."""
        q = k = target + query_pos
        # need_weights=True takes the same (non-SDPA) kernel path as the official code: bit-identical outputs
        attended, _ = self.self_attn(q, k, target, attn_mask=attn_mask, need_weights=True)
        target = self.norm1(target + attended)

        sampled = self.cross_attn(target + query_pos, ref_boxes, value)
        if self.use_gateway:
            target = self.gateway(target, sampled)
        else:
            target = self.norm2(target + sampled)

        target = target + self.swish_ffn(target)
        return self.norm3(target.clamp(min=-65504, max=65504))


class LQE(nn.Module):
    """Localization quality estimator: adds a score from the top-k bin probabilities of each edge."""

    def __init__(self, k: int, hidden_dim: int, num_layers: int, reg_max: int, act: str) -> None:
        super().__init__()
        self.k = k
        self.reg_max = reg_max
        self.ranking = "topk"  # or "compare": the top-k bins without TopK (models/ranking.py)
        self.reg_conf = MLP(4 * (k + 1), hidden_dim, 1, num_layers, act=act)
        nn.init.zeros_(self.reg_conf.layers[-1].weight)
        nn.init.zeros_(self.reg_conf.layers[-1].bias)

    def forward(self, scores: Tensor, corners: Tensor) -> Tensor:
        """scores [B, Q, classes]; corners [B, Q, 4 * (reg_max + 1)] -> scores [B, Q, classes]."""
        bs, num_q, _ = corners.shape
        prob = F.softmax(corners.reshape(bs, num_q, 4, self.reg_max + 1), dim=-1)
        top = topk_values(prob, self.k) if self.ranking == "compare" else prob.topk(self.k, dim=-1).values  # [B,Q,4,k]
        stat = torch.cat([top, top.mean(dim=-1, keepdim=True)], dim=-1)
        return scores + self.reg_conf(stat.reshape(bs, num_q, -1))
