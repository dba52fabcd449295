"""DEIMv2 decoder: query selection, deformable decoder layers and fine-grained distribution refinement."""
import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .box_ops import inverse_sigmoid
from .decoder_layers import LQE, MLP, DecoderLayer, prior_prob_bias
from .denoising import make_denoising_group
from .fdr import distance2bbox, integral, weighting_function
from .ranking import take_top, top_onehot

ANCHOR_EPS = 1e-2  # anchors with a coordinate this close to 0 or 1 are invalid


def _clones(make: Callable[[], nn.Module], n: int) -> list[nn.Module]:
    """n independent modules that start with the same weights: one made by `make`, then deep-copied."""
    if n == 0:
        return []
    first = make()
    return [first] + [copy.deepcopy(first) for _ in range(n - 1)]


class TransformerDecoder(nn.Module):
    """The stack of decoder layers and their LQE heads; refines boxes layer by layer (FDR).

    `up` and `reg_scale` are the parent's parameters, registered here too (the official
    checkpoints store them under both names). eval_idx (0 <= eval_idx < num_layers) is the layer
    whose output eval returns. The layers up to eval_idx start as copies of one layer, those after
    it as copies of another; the LQE heads start independent.
    """

    def __init__(self, hidden_dim: int, num_layers: int, num_head: int, dim_feedforward: int,
                 num_points: list[int], use_gateway: bool, reg_max: int, up: nn.Parameter,
                 reg_scale: nn.Parameter, eval_idx: int, act: str) -> None:
        super().__init__()
        self.num_head = num_head
        self.reg_max = reg_max
        self.eval_idx = eval_idx
        self.up = up
        self.reg_scale = reg_scale

        def layer() -> DecoderLayer:
            return DecoderLayer(hidden_dim, num_head, dim_feedforward, num_points, use_gateway)

        self.layers = nn.ModuleList(_clones(layer, eval_idx + 1) + _clones(layer, num_layers - eval_idx - 1))
        self.lqe_layers = nn.ModuleList(LQE(4, 64, 2, reg_max, act) for _ in range(num_layers))
        self.deployed = False

    def convert_to_deploy(self) -> None:
        """Drop the layers after eval_idx and the unused LQE heads; fix the bin table W(n)."""
        project = weighting_function(self.reg_max, self.up.detach().double(), self.reg_scale.detach().double())
        self.register_buffer("project", project.to(self.up.dtype), persistent=False)
        self.layers = self.layers[:self.eval_idx + 1]
        self.lqe_layers = nn.ModuleList([nn.Identity()] * self.eval_idx + [self.lqe_layers[self.eval_idx]])
        self.deployed = True

    def _split_value(self, memory: Tensor, spatial_shapes: list[tuple[int, int]]) -> list[Tensor]:
        """[B, L, C] -> per level [B*heads, C/heads, H, W], contiguous (CPU grid_sample in bf16 / fp16 returns
        NaNs for the strided view)."""
        bs, _, channels = memory.shape
        levels = memory.split([h * w for h, w in spatial_shapes], dim=1)
        return [level.reshape(bs, h, w, self.num_head, channels // self.num_head).permute(0, 3, 4, 1, 2)
                .reshape(bs * self.num_head, channels // self.num_head, h, w).contiguous()
                for level, (h, w) in zip(levels, spatial_shapes)]

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
            output = layer(output, ref_boxes.unsqueeze(2), value, attn_mask, query_pos)
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
    """DEIMv2 detection head on encoder feature maps; returns class logits and normalized cxcywh boxes.

    The feature maps must already have hidden_dim channels, one per stride in feat_strides.
    Anchors and their valid mask for inputs of eval_spatial_size (h, w) are kept as buffers (as in
    the official checkpoints); other sizes get theirs generated on the fly.
    """

    def __init__(
        self,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        feat_strides: Sequence[int],
        num_points: Sequence[int],
        nhead: int,
        num_layers: int,
        dim_feedforward: int,
        reg_max: int,
        reg_scale: float,
        use_gateway: bool,
        share_bbox_head: bool,
        activation: str,
        num_denoising: int,
        eval_spatial_size: tuple[int, int],
        eval_idx: int = -1,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if len(num_points) != len(feat_strides):
            raise ValueError(f"need one num_points entry per feature level, got {num_points} for {feat_strides}")
        if not -num_layers <= eval_idx < num_layers:
            raise ValueError(f"eval_idx {eval_idx} is out of range for {num_layers} layers")
        self.feat_strides = list(feat_strides)
        self.hidden_dim = hidden_dim
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.ranking = "topk"  # or "compare": the query selection without TopK (models/ranking.py)
        self.dense_supervision = False  # training: also return every anchor's prediction ('enc_dense')
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.eval_idx = eval_idx % num_layers
        tail = num_layers - self.eval_idx - 1  # layers after eval_idx: trained, dropped by deploy

        self.up = nn.Parameter(torch.tensor([0.5]), requires_grad=False)
        # whole numbers are stored as int64, as in the official checkpoints
        scale_dtype = torch.int64 if float(reg_scale).is_integer() else torch.float32
        self.reg_scale = nn.Parameter(torch.tensor([reg_scale], dtype=scale_dtype), requires_grad=False)
        self.decoder = TransformerDecoder(hidden_dim, num_layers, nhead, dim_feedforward, list(num_points),
                                          use_gateway, reg_max, self.up, self.reg_scale, self.eval_idx, activation)
        if num_denoising > 0:
            self.denoising_class_embed = nn.Embedding(num_classes + 1, hidden_dim, padding_idx=num_classes)
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, activation)
        self.query_pos_head = MLP(4, hidden_dim, hidden_dim, 3, activation)
        self.pre_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, activation)
        # every layer's head starts from the same weights, as one head copied num_layers times
        self.dec_score_head = nn.ModuleList(_clones(lambda: nn.Linear(hidden_dim, num_classes), num_layers))

        def bbox_head() -> MLP:
            return MLP(hidden_dim, hidden_dim, 4 * (reg_max + 1), 3, activation)

        kept = [bbox_head()] * (self.eval_idx + 1) if share_bbox_head else _clones(bbox_head, self.eval_idx + 1)
        self.dec_bbox_head = nn.ModuleList(kept + [bbox_head() for _ in range(tail)])

        self.eval_spatial_size = (int(eval_spatial_size[0]), int(eval_spatial_size[1]))
        anchors, valid_mask = self._generate_anchors(self._spatial_shapes_for(self.eval_spatial_size))
        self.register_buffer("anchors", anchors)  # [1, L, 4]
        self.register_buffer("valid_mask", valid_mask)  # [1, L, 1]
        self._reset_parameters()

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

    def convert_to_deploy(self) -> None:
        """Drop the score heads before eval_idx and the box heads after it."""
        self.dec_score_head = nn.ModuleList([nn.Identity()] * self.eval_idx + [self.dec_score_head[self.eval_idx]])
        self.dec_bbox_head = nn.ModuleList(
            head if i <= self.eval_idx else nn.Identity() for i, head in enumerate(self.dec_bbox_head))

    def set_input_size(self, size: tuple[int, int]) -> None:
        """Rebuild the `anchors` / `valid_mask` buffers for input images of size (h, w)."""
        self.eval_spatial_size = (int(size[0]), int(size[1]))
        anchors, valid_mask = self._generate_anchors(self._spatial_shapes_for(self.eval_spatial_size))
        self.register_buffer("anchors", anchors.to(self.anchors))  # keeps the buffer's dtype and device
        self.register_buffer("valid_mask", valid_mask.to(self.valid_mask.device))

    def _spatial_shapes_for(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """Feature-map (h, w) per level for an (h, w) input."""
        return [(int(size[0] / s), int(size[1] / s)) for s in self.feat_strides]

    @staticmethod
    def _generate_anchors(spatial_shapes: list[tuple[int, int]], grid_size: float = 0.05,
                          device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """Logit-space anchors [1, L, 4] (float32) and valid_mask [1, L, 1].

        Anchors sit at the cells' centres with wh = grid_size * 2^level; invalid ones (any coordinate
        within ANCHOR_EPS of 0 or 1) are +inf.
        """
        anchors = []
        for level, (h, w) in enumerate(spatial_shapes):
            grid_y, grid_x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            centers = (torch.stack([grid_x, grid_y], dim=-1) + 0.5) / torch.tensor([w, h], dtype=torch.float32)
            wh = torch.full_like(centers, grid_size * 2.0 ** level)
            anchors.append(torch.cat([centers, wh], dim=-1).reshape(1, h * w, 4))
        anchors = torch.cat(anchors, dim=1).to(device)
        valid_mask = ((anchors > ANCHOR_EPS) & (anchors < 1 - ANCHOR_EPS)).all(-1, keepdim=True)
        anchors = torch.where(valid_mask, torch.log(anchors / (1 - anchors)), torch.inf)
        return anchors, valid_mask

    def _anchors_for(self, spatial_shapes: list[tuple[int, int]], memory: Tensor) -> tuple[Tensor, Tensor]:
        """Anchors in memory's dtype and the valid mask: the stored ones when they fit these feature maps
        (eval), else freshly generated ones."""
        if self.training or spatial_shapes != self._spatial_shapes_for(self.eval_spatial_size):
            anchors, valid_mask = self._generate_anchors(spatial_shapes, device=memory.device)
        else:
            anchors, valid_mask = self.anchors, self.valid_mask
        return anchors.to(memory.dtype), valid_mask

    @staticmethod
    def _flatten_features(feats: list[Tensor]) -> tuple[Tensor, list[tuple[int, int]]]:
        """Flatten feature maps to memory [B, L, C] with their (h, w) per level."""
        spatial_shapes = [(int(f.shape[2]), int(f.shape[3])) for f in feats]
        memory = torch.cat([f.flatten(2).permute(0, 2, 1) for f in feats], dim=1)
        return memory, spatial_shapes

    def _select_queries(self, memory: Tensor, spatial_shapes: list[tuple[int, int]]) -> dict[str, Tensor]:
        """Top-K encoder positions by max class logit: their content, logit-space boxes and (training) outputs."""
        anchors, valid_mask = self._anchors_for(spatial_shapes, memory)
        memory = valid_mask.to(memory.dtype) * memory
        enc_logits = self.enc_score_head(memory)  # [B, L, classes]
        if self.ranking == "compare":  # no TopK or Gather in the graph (models/ranking.py)
            onehot = top_onehot(enc_logits.max(-1).values, self.num_queries)  # [B, K, L]

            def take(x: Tensor) -> Tensor:
                return take_top(onehot, x)
        else:
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
            if self.dense_supervision:  # every anchor's prediction, for the one-to-many encoder loss
                selected["dense"] = {"pred_logits": enc_logits,
                                     "pred_boxes": torch.sigmoid(self.enc_bbox_head(memory) + anchors),
                                     "centres": torch.sigmoid(anchors[0, :, :2].float()), "valid": valid_mask[0, :, 0]}
        return selected

    def forward(self, feats: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> dict:
        """feats: per stride s in feat_strides [B, hidden_dim, H / s, W / s]; targets (training, for denoising):
        per image 'labels' [N] and 'boxes' [N, 4] normalized cxcywh.

        Eval: {'pred_logits' [B, Q, classes], 'pred_boxes' [B, Q, 4] normalized cxcywh}.
        Training adds corners, reference points, up / reg_scale and the auxiliary, encoder, first-layer
        and denoising outputs a DEIM criterion consumes.
        """
        if len(feats) != len(self.feat_strides):
            raise ValueError(f"expected {len(self.feat_strides)} feature maps (strides {self.feat_strides}), "
                             f"got {len(feats)}")
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
            boxes_unact = torch.cat([dn_boxes_unact.to(boxes_unact.dtype), boxes_unact], dim=1)

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
        if "dense" in selected:
            out["enc_dense"] = selected["dense"]
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
