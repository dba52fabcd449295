"""DEIMv2 decoder: query selection, deformable decoder layers and fine-grained distribution refinement."""
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .box_ops import inverse_sigmoid
from .decoder_layers import LQE, MLP, DecoderLayer, prior_prob_bias
from .denoising import make_denoising_group
from .fdr import distance2bbox, integral, weighting_function


class TransformerDecoder(nn.Module):
    """The stack of decoder layers and their LQE heads; refines boxes layer by layer (FDR).

    `up` and `reg_scale` are the parent's parameters, registered here too (the official
    checkpoints store them under both names).
    """

    def __init__(self, hidden_dim: int, num_layers: int, num_head: int, dim_feedforward: int,
                 num_points: list[int], use_gateway: bool, reg_max: int, up: nn.Parameter,
                 reg_scale: nn.Parameter, eval_idx: int = -1, act: str = "silu") -> None:
        super().__init__()
        self.num_head = num_head
        self.reg_max = reg_max
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx
        self.up = up
        self.reg_scale = reg_scale
        self.layers = nn.ModuleList(
            DecoderLayer(hidden_dim, num_head, dim_feedforward, num_points, use_gateway) for _ in range(num_layers))
        self.lqe_layers = nn.ModuleList(LQE(4, 64, 2, reg_max, act=act) for _ in range(num_layers))
        self.deployed = False

    def convert_to_deploy(self) -> None:
        """Drop the layers after eval_idx and the unused LQE heads; fix the bin table W(n)."""
        project = weighting_function(self.reg_max, self.up.detach().double(), self.reg_scale.detach().double())
        self.register_buffer("project", project.to(self.up.dtype), persistent=False)
        self.layers = self.layers[:self.eval_idx + 1]
        self.lqe_layers = nn.ModuleList([nn.Identity()] * self.eval_idx + [self.lqe_layers[self.eval_idx]])
        self.deployed = True

    def _split_value(self, memory: Tensor, spatial_shapes: list[tuple[int, int]]) -> list[Tensor]:
        """[B, L, C] -> per level [B, heads, C/heads, H*W]."""
        bs, length, _ = memory.shape
        value = memory.reshape(bs, length, self.num_head, -1).permute(0, 2, 3, 1)
        return list(value.split([h * w for h, w in spatial_shapes], dim=-1))

    def forward(self, target: Tensor, ref_unact: Tensor, memory: Tensor, spatial_shapes: list[tuple[int, int]],
                bbox_head: nn.ModuleList, score_head: nn.ModuleList, query_pos_head: nn.Module,
                pre_bbox_head: nn.Module, attn_mask: Tensor | None = None) -> dict[str, Tensor]:
        """target [B, Q, C]; ref_unact [B, Q, 4] logit-space cxcywh; memory [B, L, C].

        Returns 'boxes' [N, B, Q, 4], 'logits' [N, B, Q, classes], 'corners' [N, B, Q, 4 * (reg_max + 1)],
        'refs' [N, B, Q, 4] (N = every layer in training, only eval_idx in eval) and the first layer's
        'pre_boxes' [B, Q, 4] and, in training, 'pre_logits' [B, Q, classes].
        """
        value = self._split_value(memory, spatial_shapes)
        project = self.project if self.deployed else weighting_function(self.reg_max, self.up, self.reg_scale)

        ref_boxes = torch.sigmoid(ref_unact)
        query_pos = query_pos_head(ref_boxes).clamp(min=-10, max=10)
        output = target
        output_detach: Tensor | float = 0.0
        prev_corners: Tensor | float = 0.0
        out: dict[str, list[Tensor]] = {"boxes": [], "logits": [], "corners": [], "refs": []}
        result: dict[str, Tensor] = {}
        for i, layer in enumerate(self.layers):
            output = layer(output, ref_boxes.unsqueeze(2), value, spatial_shapes, attn_mask, query_pos)
            if i == 0:
                result["pre_boxes"] = torch.sigmoid(pre_bbox_head(output) + inverse_sigmoid(ref_boxes))
                if self.training:
                    result["pre_logits"] = score_head[0](output)
                initial_boxes = result["pre_boxes"].detach()

            corners = bbox_head[i](output + output_detach) + prev_corners
            boxes = distance2bbox(initial_boxes, integral(corners, project), self.reg_scale)
            if self.training or i == self.eval_idx:
                out["logits"].append(self.lqe_layers[i](score_head[i](output), corners))
                out["boxes"].append(boxes)
                out["corners"].append(corners)
                out["refs"].append(initial_boxes)
                if not self.training:
                    break
            prev_corners = corners
            ref_boxes = boxes.detach()
            output_detach = output.detach()
        result.update({k: torch.stack(v) for k, v in out.items()})
        return result


class DEIMv2Decoder(nn.Module):
    """DEIMv2 detection head on encoder feature maps; returns class logits and normalized cxcywh boxes."""

    def __init__(
        self,
        num_classes: int = 80,
        hidden_dim: int = 256,
        num_queries: int = 300,
        feat_channels: Sequence[int] = (256, 256, 256),
        feat_strides: Sequence[int] = (8, 16, 32),
        num_levels: int = 3,
        num_points: Sequence[int] = (3, 6, 3),
        nhead: int = 8,
        num_layers: int = 6,
        dim_feedforward: int = 2048,
        num_denoising: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        eval_spatial_size: tuple[int, int] | None = None,
        eval_idx: int = -1,
        eps: float = 1e-2,
        reg_max: int = 32,
        reg_scale: float = 4.0,
        layer_scale: float = 1,
        activation: str = "silu",
        mlp_act: str = "silu",
        use_gateway: bool = True,
        share_bbox_head: bool = False,
    ) -> None:
        super().__init__()
        if not len(feat_strides) == len(feat_channels) <= num_levels == len(num_points):
            raise ValueError("need len(feat_strides) == len(feat_channels) <= num_levels == len(num_points)")
        if layer_scale != 1:
            raise ValueError("only layer_scale=1 is supported (the reference's wide layers cannot train)")
        strides = list(feat_strides)
        while len(strides) < num_levels:
            strides.append(strides[-1] * 2)
        self.feat_strides = strides
        self.hidden_dim = hidden_dim
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.num_levels = num_levels
        self.eps = eps
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.eval_idx = eval_idx if eval_idx >= 0 else num_layers + eval_idx

        self.input_proj = self._make_input_proj(list(feat_channels))
        self.up = nn.Parameter(torch.tensor([0.5]), requires_grad=False)
        # whole numbers are stored as int64, as in the official checkpoints
        scale_dtype = torch.int64 if float(reg_scale).is_integer() else torch.float32
        self.reg_scale = nn.Parameter(torch.tensor([reg_scale], dtype=scale_dtype), requires_grad=False)
        self.eval_spatial_size = tuple(eval_spatial_size) if eval_spatial_size else None
        if self.eval_spatial_size:
            anchors, valid_mask = self._generate_anchors(self._spatial_shapes_for(self.eval_spatial_size))
            self.register_buffer("anchors", anchors)  # [1, L, 4]
            self.register_buffer("valid_mask", valid_mask)  # [1, L, 1]

        self.decoder = TransformerDecoder(hidden_dim, num_layers, nhead, dim_feedforward, list(num_points),
                                          use_gateway, reg_max, self.up, self.reg_scale, eval_idx, act=activation)
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, act=mlp_act)
        self.query_pos_head = MLP(4, hidden_dim, hidden_dim, 3, act=mlp_act)
        self.pre_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, act=mlp_act)
        self.dec_score_head = nn.ModuleList(nn.Linear(hidden_dim, num_classes) for _ in range(num_layers))
        if share_bbox_head:
            shared = MLP(hidden_dim, hidden_dim, 4 * (reg_max + 1), 3, act=mlp_act)
            bbox_heads = [shared] * (self.eval_idx + 1)
        else:
            bbox_heads = [MLP(hidden_dim, hidden_dim, 4 * (reg_max + 1), 3, act=mlp_act)
                          for _ in range(self.eval_idx + 1)]
        bbox_heads += [MLP(hidden_dim, hidden_dim, 4 * (reg_max + 1), 3, act=mlp_act)
                       for _ in range(num_layers - self.eval_idx - 1)]
        self.dec_bbox_head = nn.ModuleList(bbox_heads)
        self._reset_parameters()

    def _make_input_proj(self, feat_channels: list[int]) -> nn.ModuleList:
        """1x1 conv + BN to hidden_dim per input level (identity when it matches), 3x3 s2 for extra levels."""
        def conv_bn(in_ch: int, kernel: int, stride: int) -> nn.Module:
            if in_ch == self.hidden_dim:
                return nn.Identity()
            return nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(in_ch, self.hidden_dim, kernel, stride, padding=kernel // 2, bias=False)),
                ("norm", nn.BatchNorm2d(self.hidden_dim))]))

        projs = [conv_bn(ch, 1, 1) for ch in feat_channels]
        in_ch = feat_channels[-1]
        for _ in range(self.num_levels - len(feat_channels)):
            projs.append(conv_bn(in_ch, 3, 2))
            in_ch = self.hidden_dim
        return nn.ModuleList(projs)

    def _reset_parameters(self) -> None:
        score_bias = prior_prob_bias(0.01)
        nn.init.constant_(self.enc_score_head.bias, score_bias)
        for head in [self.enc_bbox_head, self.pre_bbox_head, *self.dec_bbox_head]:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        for head in self.dec_score_head:
            nn.init.constant_(head.bias, score_bias)
        for layer in self.query_pos_head.layers:
            nn.init.xavier_uniform_(layer.weight)
        for proj in self.input_proj:
            if isinstance(proj, nn.Sequential):
                nn.init.xavier_uniform_(proj.conv.weight)

    def convert_to_deploy(self) -> None:
        """Drop the score heads before eval_idx and the box heads after it."""
        self.dec_score_head = nn.ModuleList([nn.Identity()] * self.eval_idx + [self.dec_score_head[self.eval_idx]])
        self.dec_bbox_head = nn.ModuleList(
            head if i <= self.eval_idx else nn.Identity() for i, head in enumerate(self.dec_bbox_head))

    def set_input_size(self, size: tuple[int, int]) -> None:
        """Rebuild the `anchors` / `valid_mask` buffers for input images of size (h, w)."""
        self.eval_spatial_size = (int(size[0]), int(size[1]))
        anchors, valid_mask = self._generate_anchors(self._spatial_shapes_for(self.eval_spatial_size),
                                                     device=self.up.device)
        self.register_buffer("anchors", anchors)
        self.register_buffer("valid_mask", valid_mask)

    def _spatial_shapes_for(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map (h, w) per level for an (h, w) input."""
        return [(int(size[0] / s), int(size[1] / s)) for s in self.feat_strides]

    def _generate_anchors(self, spatial_shapes: list[tuple[int, int]], grid_size: float = 0.05,
                          device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """Logit-space anchors [1, L, 4] and valid_mask [1, L, 1].

        Anchors sit at the cells' centres with wh = grid_size * 2^level; invalid ones (any coordinate
        within eps of 0 or 1) are +inf.
        """
        anchors = []
        for level, (h, w) in enumerate(spatial_shapes):
            grid_y, grid_x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            centers = (torch.stack([grid_x, grid_y], dim=-1) + 0.5) / torch.tensor([w, h], dtype=torch.float32)
            wh = torch.full_like(centers, grid_size * 2.0 ** level)
            anchors.append(torch.cat([centers, wh], dim=-1).reshape(1, h * w, 4))
        anchors = torch.cat(anchors, dim=1).to(device)
        valid_mask = ((anchors > self.eps) & (anchors < 1 - self.eps)).all(-1, keepdim=True)
        anchors = torch.where(valid_mask, torch.log(anchors / (1 - anchors)), torch.inf)
        return anchors, valid_mask

    def _anchors_for(self, spatial_shapes: list[tuple[int, int]], device: torch.device) -> tuple[Tensor, Tensor]:
        """The stored anchors when they fit these feature maps (eval), else freshly generated ones."""
        stored = self.eval_spatial_size is not None and spatial_shapes == self._spatial_shapes_for(
            self.eval_spatial_size)
        if self.training or not stored:
            return self._generate_anchors(spatial_shapes, device=device)
        return self.anchors, self.valid_mask

    def _flatten_features(self, feats: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Project feature maps and flatten them to memory [B, L, C] with their (h, w) per level."""
        proj = [self.input_proj[i](feat) for i, feat in enumerate(feats)]
        for i in range(len(feats), self.num_levels):
            proj.append(self.input_proj[i](feats[-1] if i == len(feats) else proj[-1]))
        spatial_shapes = [(int(p.shape[2]), int(p.shape[3])) for p in proj]
        memory = torch.cat([p.flatten(2).permute(0, 2, 1) for p in proj], dim=1)
        return memory, spatial_shapes

    def _select_queries(self, memory: Tensor, spatial_shapes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """Top-K encoder positions by max class logit: their content, logit-space boxes and (training) outputs."""
        anchors, valid_mask = self._anchors_for(spatial_shapes, memory.device)
        memory = valid_mask.to(memory.dtype) * memory
        enc_logits = self.enc_score_head(memory)  # [B, L, classes]
        topk_ind = torch.topk(enc_logits.max(-1).values, self.num_queries, dim=-1).indices  # [B, K]

        def take(x: Tensor) -> Tensor:
            x = x.expand(memory.shape[0], -1, -1)
            return x.gather(1, topk_ind.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

        topk_memory = take(memory)
        boxes_unact = self.enc_bbox_head(topk_memory) + take(anchors)  # [B, K, 4]
        selected = {"content": topk_memory.detach(), "boxes_unact": boxes_unact.detach()}
        if self.training:
            selected["enc_logits"] = take(enc_logits)
            selected["enc_boxes"] = torch.sigmoid(boxes_unact)
        return selected

    def forward(self, feats: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> dict:
        """feats: per level [B, C_l, H / s_l, W / s_l]; targets (training, for denoising): 'labels' [N], 'boxes' [N, 4].

        Eval: {'pred_logits' [B, Q, classes], 'pred_boxes' [B, Q, 4] normalized cxcywh}.
        Training adds corners, reference points, up / reg_scale and the auxiliary, encoder, first-layer
        and denoising outputs a DEIM criterion consumes.
        """
        memory, spatial_shapes = self._flatten_features(feats)
        dn = None
        if self.training and self.num_denoising > 0 and targets is not None:
            dn = make_denoising_group(targets, self.num_classes, self.num_queries, self.denoising_class_embed,
                                      self.num_denoising, self.label_noise_ratio, self.box_noise_scale)
        selected = self._select_queries(memory, spatial_shapes)
        content, boxes_unact = selected["content"], selected["boxes_unact"]
        attn_mask, dn_meta = None, None
        if dn is not None:
            dn_content, dn_boxes_unact, attn_mask, dn_meta = dn
            content = torch.cat([dn_content, content], dim=1)
            boxes_unact = torch.cat([dn_boxes_unact, boxes_unact], dim=1)

        dec = self.decoder(content, boxes_unact, memory, spatial_shapes, self.dec_bbox_head, self.dec_score_head,
                           self.query_pos_head, self.pre_bbox_head, attn_mask=attn_mask)
        if not self.training:
            return {"pred_logits": dec["logits"][-1], "pred_boxes": dec["boxes"][-1]}

        dn_dec = {}
        if dn_meta is not None:
            split = dn_meta["dn_num_split"]
            for key in ("pre_logits", "pre_boxes"):
                dn_dec[key], dec[key] = torch.split(dec[key], split, dim=1)
            for key in ("logits", "boxes", "corners", "refs"):
                dn_dec[key], dec[key] = torch.split(dec[key], split, dim=2)

        out = {"pred_logits": dec["logits"][-1], "pred_boxes": dec["boxes"][-1], "pred_corners": dec["corners"][-1],
               "ref_points": dec["refs"][-1], "up": self.up, "reg_scale": self.reg_scale,
               "aux_outputs": _layer_outputs(dec, last=False),
               "enc_aux_outputs": [{"pred_logits": selected["enc_logits"], "pred_boxes": selected["enc_boxes"]}],
               "pre_outputs": {"pred_logits": dec["pre_logits"], "pred_boxes": dec["pre_boxes"]},
               "enc_meta": {"class_agnostic": False}}
        if dn_meta is not None:
            out["dn_outputs"] = _layer_outputs(dn_dec, last=True)
            out["dn_pre_outputs"] = {"pred_logits": dn_dec["pre_logits"], "pred_boxes": dn_dec["pre_boxes"]}
            out["dn_meta"] = dn_meta
        return out


def _layer_outputs(dec: dict[str, Tensor], last: bool) -> list[dict[str, Tensor]]:
    """Per-layer output dicts (all layers, or all but the last), each with the last layer as teacher."""
    num = dec["logits"].shape[0] - (0 if last else 1)
    return [{"pred_logits": dec["logits"][i], "pred_boxes": dec["boxes"][i], "pred_corners": dec["corners"][i],
             "ref_points": dec["refs"][i], "teacher_corners": dec["corners"][-1], "teacher_logits": dec["logits"][-1]}
            for i in range(num)]
