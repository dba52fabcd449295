"""AdamW with the parameter groups of the official DEIMv2 configs.

The public configs pick groups with regexes over parameter names; since our names equal the
official ones, the same rules are written here as plain substring tests (verified name by name
against the public code). Groups, in the official order (this order makes optimizer state dicts
interchangeable with official checkpoints):

HGNetv2 variants (Atto, Femto, Pico, N):
  0. 'backbone' without 'norm'          -- backbone_lr, weight decay
  1. 'backbone' with 'norm'             -- backbone_lr, no weight decay
  2. 'encoder'/'decoder' with 'norm' or 'bn' (Femto, Pico, N: or 'bias') -- lr, no weight decay
  3. everything else                    -- lr, weight decay
  The official pattern `(?!.*norm|bn)` only tests for 'norm' (the '|bn' alternative applies to
  the start of the name), so HGNetv2's BatchNorm layers ('.bn.') stay in group 0 with weight
  decay and group 1 is empty; kept so, as the published models were trained.
ViT variants (S, M, L, X):
  0. '.dinov3' without 'norm'/'bn'/'bias' -- backbone_lr, weight decay
  1. '.dinov3' with 'norm'/'bn'/'bias'    -- backbone_lr, no weight decay
  2. 'sta'/'encoder'/'decoder' with 'norm'/'bn'/'bias' -- lr, no weight decay
  3. everything else (e.g. backbone.convs, backbone.norms) -- lr, weight decay
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from ..variants import TrainRecipe, Variant, get_variant
from .ema import unwrap_model


def _has_any(name: str, words: tuple[str, ...]) -> bool:
    return any(w in name for w in words)


def _hgnetv2_group(name: str, head_no_decay: tuple[str, ...]) -> int:
    norm = "norm" in name or name.startswith("bn")  # the official `(?=.*norm|bn)`
    if "backbone" in name:
        return 1 if norm else 0
    if _has_any(name, ("encoder", "decoder")) and _has_any(name, head_no_decay):
        return 2
    return 3


def _vit_group(name: str) -> int:
    no_decay = _has_any(name, ("norm", "bn", "bias"))
    if "dinov3" in name[1:]:  # the official `(?=.*.dinov3)`: 'dinov3' after at least one character
        return 1 if no_decay else 0
    if _has_any(name, ("sta", "encoder", "decoder")) and no_decay:
        return 2
    return 3


def group_names(model: nn.Module, variant: str | Variant) -> list[list[str]]:
    """Names of the trainable parameters of `model` in each of the four official groups."""
    variant = get_variant(variant)
    if variant.backbone.sta_channels > 0:
        pick = _vit_group
    else:
        head_no_decay = ("norm", "bn") if variant.recipe.head_bias_weight_decay else ("norm", "bn", "bias")
        pick = partial(_hgnetv2_group, head_no_decay=head_no_decay)
    groups: list[list[str]] = [[], [], [], []]
    for name, p in unwrap_model(model).named_parameters():
        if p.requires_grad:
            groups[pick(name)].append(name)
    return groups


def build_optimizer(model: nn.Module, variant: str | Variant, recipe: TrainRecipe | None = None) -> torch.optim.AdamW:
    """AdamW over the official parameter groups of `variant`, with lr, backbone_lr, betas and
    weight_decay from `recipe` (default: the variant's own recipe; pass a modified one to
    change them). Call before wrapping the model in DistributedDataParallel or after, the
    groups are the same."""
    variant = get_variant(variant)
    recipe = variant.recipe if recipe is None else recipe
    params = dict(unwrap_model(model).named_parameters())
    backbone, backbone_no_decay, head_no_decay, rest = group_names(model, variant)
    groups = [
        {"params": [params[n] for n in backbone], "lr": recipe.backbone_lr},
        {"params": [params[n] for n in backbone_no_decay], "lr": recipe.backbone_lr, "weight_decay": 0.0},
        {"params": [params[n] for n in head_no_decay], "weight_decay": 0.0},
    ]
    if rest:  # the public code adds the catch-all group only when something is left
        groups.append({"params": [params[n] for n in rest]})
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
