"""DEIMLoss: the DEIM training criterion over every output of a DEIMv2 model in training mode."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..models.box_ops import box_cxcywh_to_xyxy
from ..models.fdr import bbox2distance
from ..variants import TrainRecipe
from .losses import box_losses, ddf_loss, ddf_terms, fgl_loss, flat_index, mal_loss, matched_targets
from .matcher import HungarianMatcher, Indices, dense_assignment, union_indices

Targets = list[dict[str, Tensor]]


def _mean_count(count: int, device: torch.device) -> float:
    """Per-process average of `count` over the distributed group (when there is one), at least 1."""
    total = torch.as_tensor([count], dtype=torch.float, device=device)
    world = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
        world = dist.get_world_size()
    return torch.clamp(total / world, min=1).item()


def denoising_indices(dn_meta: dict, targets: Targets) -> Indices:
    """Denoising queries matched to the targets they were made from, group after group."""
    indices = []
    for positive, t in zip(dn_meta["dn_positive_idx"], targets):
        num = len(t["labels"])
        gt = torch.arange(num, dtype=torch.int64, device=t["labels"].device).tile(dn_meta["dn_num_group"])
        if num == 0:
            positive = torch.zeros(0, dtype=torch.int64, device=gt.device)
        indices.append((positive, gt))
    return indices


class DEIMLoss(nn.Module):
    """Weighted MAL, L1, GIoU (+ FGL, DDF) over the final, intermediate, pre-decoder, encoder and
    denoising outputs, and (recipe.dense_positives > 0, outputs with 'enc_dense': the trainer asks the
    decoder for them in the recipe's first dense_epochs) one-to-many over every encoder anchor. Keys:
    loss_{mal,bbox,giou,fgl,ddf} with suffixes '', _aux_i, _pre, _enc_i, _dn_i, _dn_pre, _dense."""

    def __init__(self, num_classes: int, recipe: TrainRecipe) -> None:
        super().__init__()
        self.num_classes = num_classes
        w = recipe.loss_weights
        self.weights = {"loss_mal": w.mal, "loss_bbox": w.bbox, "loss_giou": w.giou,
                        "loss_fgl": w.fgl, "loss_ddf": w.ddf}
        costs = recipe.matcher_costs
        self.matcher = HungarianMatcher(costs.cls, costs.bbox, costs.giou, recipe.matcher_focal_alpha,
                                        recipe.matcher_focal_gamma, recipe.matcher_iou_order,
                                        recipe.matcher_change_epoch)
        self.mal_gamma = recipe.mal_gamma
        # The official configs' criterion alpha (0.75) only reaches their VFL/focal losses; their MAL
        # runs without an alpha, so negatives weigh p ** gamma.
        self.mal_alpha = None
        self.use_fgl_ddf = recipe.use_fgl_ddf
        self.use_uni_set = recipe.use_uni_set
        self.dense_positives = recipe.dense_positives

    def forward(self, outputs: dict, targets: Targets, epoch: int = 0) -> dict[str, Tensor]:
        """outputs: the model's training dict; targets: per image 'labels' [M] int64 and 'boxes'
        [M, 4] normalized cxcywh. Returns the weighted loss terms."""
        device = outputs["pred_logits"].device
        indices = self.matcher(outputs, targets, epoch)
        layers = outputs["aux_outputs"] + [outputs["pre_outputs"]]
        layer_indices = [self.matcher(o, targets, epoch) for o in layers]
        enc_indices = [self.matcher(o, targets, epoch) for o in outputs["enc_aux_outputs"]]
        uni = union_indices(indices, layer_indices + enc_indices)
        num_boxes = _mean_count(sum(len(t["labels"]) for t in targets), device)
        num_uni = _mean_count(sum(len(src) for src, _ in uni), device)
        box_idx, num_box = (uni, num_uni) if self.use_uni_set else (None, num_boxes)
        shared: dict = {"up": outputs["up"], "reg_scale": outputs["reg_scale"]}  # FGL targets, DDF balance

        losses = self._terms(outputs, targets, indices, box_idx or indices, num_boxes, num_box, shared, "")
        for i, (out, own) in enumerate(zip(outputs["aux_outputs"], layer_indices)):
            losses.update(self._terms(out, targets, own, box_idx or own, num_boxes, num_box, shared, f"_aux_{i}"))
        losses.update(self._terms(outputs["pre_outputs"], targets, layer_indices[-1], box_idx or layer_indices[-1],
                                  num_boxes, num_box, shared, "_pre"))

        agnostic = outputs["enc_meta"]["class_agnostic"]
        enc_targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets] if agnostic else targets
        for i, (out, own) in enumerate(zip(outputs["enc_aux_outputs"], enc_indices)):
            losses.update(self._terms(out, enc_targets, own, box_idx or own, num_boxes, num_box, shared, f"_enc_{i}",
                                      num_classes=1 if agnostic else None))

        if self.dense_positives and "enc_dense" in outputs:
            dense = outputs["enc_dense"]
            assigned = dense_assignment(dense["pred_logits"], dense["pred_boxes"], dense["centres"], dense["valid"],
                                        enc_targets, self.dense_positives)
            num_dense = _mean_count(sum(len(src) for src, _ in assigned), device)
            losses.update(self._terms(dense, enc_targets, assigned, assigned, num_dense, num_dense, shared, "_dense",
                                      num_classes=1 if agnostic else None))

        if "dn_outputs" in outputs:
            dn = denoising_indices(outputs["dn_meta"], targets)
            num_dn = num_boxes * outputs["dn_meta"]["dn_num_group"]
            for i, out in enumerate(outputs["dn_outputs"]):
                losses.update(self._terms(out, targets, dn, dn, num_dn, num_dn, shared, f"_dn_{i}", denoising=True))
            losses.update(self._terms(outputs["dn_pre_outputs"], targets, dn, dn, num_dn, num_dn, shared, "_dn_pre"))
        return {k: torch.nan_to_num(v, nan=0.0) for k, v in losses.items()}

    def _terms(self, out: dict, targets: Targets, cls_idx: Indices, box_idx: Indices, num_cls: float,
               num_box: float, shared: dict, suffix: str, num_classes: int | None = None,
               denoising: bool = False) -> dict[str, Tensor]:
        """Weighted terms of one output dict (pred_logits [B, Q, C], pred_boxes [B, Q, 4], ...)."""
        terms = {"loss_mal": mal_loss(out["pred_logits"], out["pred_boxes"], targets, cls_idx, num_cls,
                                      num_classes or self.num_classes, self.mal_gamma, self.mal_alpha)}
        terms["loss_bbox"], terms["loss_giou"] = box_losses(out["pred_boxes"], targets, box_idx, num_box)
        if self.use_fgl_ddf and "pred_corners" in out:
            terms.update(self._local_terms(out, targets, box_idx, num_box, shared, denoising))
        return {k + suffix: v * self.weights[k] for k, v in terms.items()}

    def _local_terms(self, out: dict, targets: Targets, indices: Indices, num_boxes: float, shared: dict,
                     denoising: bool) -> dict[str, Tensor]:
        """FGL against bin targets made once per forward (per matching or denoising side: every layer
        shares the same reference boxes), and DDF towards the teacher (last) layer."""
        corners = out["pred_corners"]  # [B, Q, 4 * (reg_max + 1)]
        key = "bins_dn" if denoising else "bins"
        if key not in shared:
            with torch.no_grad():
                ref = out["ref_points"][flat_index(indices)].detach()  # [K, 4] cxcywh
                tgt = box_cxcywh_to_xyxy(matched_targets(targets, indices, "boxes"))
                shared[key] = bbox2distance(ref, tgt, corners.shape[-1] // 4 - 1, shared["reg_scale"], shared["up"])
        terms = {"loss_fgl": fgl_loss(corners, out["pred_boxes"], targets, indices, num_boxes, shared[key])}
        if "teacher_corners" in out and not torch.equal(corners, out["teacher_corners"]):
            per_edge, mask = ddf_terms(corners, out["pred_boxes"], out["teacher_corners"], out["teacher_logits"],
                                       targets, indices)
            if not denoising:  # denoising layers reuse the matched side's balance
                scale = 8 / out["pred_boxes"].shape[0]  # as if 8 images per device
                shared["balance"] = ((mask.sum() * scale) ** 0.5, ((~mask).sum() * scale) ** 0.5)
            terms["loss_ddf"] = ddf_loss(per_edge, mask, *shared["balance"])
        return terms
