"""Pretrained backbone weights: ImageNet HGNetv2, Meta's DINOv3 ViTs and DEIMv2's distilled ViT-Tiny.

Which part of the backbone a file initializes:
- HGNetv2: the whole backbone; tensors are copied where name and shape match, so the pruned
  Pico / Femto / Atto take the matching subset of `PPHGNetV2_B0_stage1.pth`.
- ViT + STA: only the ViT, strictly. Meta's `dinov3_vits16[plus]_pretrain_lvd1689m-*.pth` go into
  `dinov3`, the distilled `vitt_distill.pt` / `vittplus_distill.pt` into `dinov3._model`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..variants import VARIANTS
from .checkpoint import read_state_dict
from .deimv2 import DEIMv2, build_backbone
from .hgnetv2 import HGNetv2
from .sta import ViTAdapterBackbone
from .vit_tiny import VisionTransformer

MAX_LISTED = 5


@dataclass(frozen=True)
class PretrainedReport:
    """What a pretrained file gave the backbone; keys are relative to the backbone."""

    loaded: list[str] = field(default_factory=list)
    skipped_shape: list[str] = field(default_factory=list)  # in both, with another shape in the file
    missing: list[str] = field(default_factory=list)  # the backbone's, absent from the file
    unexpected: list[str] = field(default_factory=list)  # the file's, unknown to the backbone


def load_pretrained_backbone(
    model_or_backbone: nn.Module, path: str | os.PathLike | Mapping, min_fraction: float = 0.5
) -> PretrainedReport:
    """Load a pretrained backbone file (or state dict) into a DEIMv2 model's backbone or a bare backbone.

    Prefixes of a larger model are stripped: `backbone.`, and for ViTs `dinov3.` and (ViT-Tiny)
    `_model.`; when a file holds such a prefix, only the keys under it are read. Raises
    CheckpointError if the file is missing or unreadable, if fewer than `min_fraction` of the
    target's tensors are found with the right shape (naming the backbone the file seems to be
    for), or, for a ViT, if any name or shape disagrees.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    backbone = model_or_backbone.backbone if isinstance(model_or_backbone, DEIMv2) else model_or_backbone
    if not isinstance(backbone, (HGNetv2, ViTAdapterBackbone)):
        raise TypeError(f"expected a DEIMv2 model, an HGNetv2 or a ViTAdapterBackbone, got {type(backbone).__name__}")
    part, target, prefixes = _pretrained_part(backbone)
    raw = read_state_dict(path)
    state = _scoped(raw, prefixes)
    own = part.state_dict()
    vit = f"the ViT (backbone.{target.rstrip('.')}) of " if target else ""
    where = f"{_source(path)} does not fit {vit}{_describe(backbone.name)}"

    loaded = [k for k, v in state.items() if k in own and v.shape == own[k].shape]
    if len(loaded) < min_fraction * len(own):
        raise CheckpointError(
            f"{where}: only {len(loaded)} of its {len(own)} tensors are in the file with the right name and "
            f"shape; {_guess(raw)}")
    skipped_shape = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]

    if isinstance(backbone, HGNetv2):
        backbone.load_state_dict({k: state[k] for k in loaded}, strict=False)
    else:
        if skipped_shape or missing or unexpected:
            problems = _disagreements(state, own, skipped_shape, missing, unexpected)
            raise CheckpointError(f"{where}: " + "; ".join(problems))
        part.load_state_dict(state, strict=True)

    def rel(keys: list[str]) -> list[str]:
        return [target + k for k in keys]

    return PretrainedReport(rel(loaded), rel(skipped_shape), rel(missing), rel(unexpected))


def _pretrained_part(backbone: nn.Module) -> tuple[nn.Module, str, tuple[str, ...]]:
    """The module a pretrained file fills, its key prefix inside the backbone, and the prefixes to strip."""
    if isinstance(backbone, HGNetv2):
        return backbone, "", ("backbone.",)
    if isinstance(backbone.dinov3, VisionTransformer):
        return backbone.dinov3._model, "dinov3._model.", ("backbone.", "dinov3.", "_model.")
    return backbone.dinov3, "dinov3.", ("backbone.", "dinov3.")


def _scoped(state: Mapping[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """For each prefix in turn: if some keys carry it, keep only those, without it."""
    state = dict(state)
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def _listed(keys: list[str]) -> str:
    more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
    return ", ".join(keys[:MAX_LISTED]) + more


def _disagreements(state: Mapping[str, Tensor], own: Mapping[str, Tensor], skipped_shape: list[str],
                   missing: list[str], unexpected: list[str]) -> list[str]:
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing from the file: {_listed(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors the model does not have: {_listed(unexpected)}")
    if skipped_shape:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in skipped_shape]
        problems.append(f"{len(shapes)} shapes differ (file vs model): {_listed(shapes)}")
    return problems


def _source(path: str | os.PathLike | Mapping) -> str:
    return "the state dict" if isinstance(path, Mapping) else repr(os.fspath(path))


def _describe(name: str) -> str:
    """'the <name> backbone (<variants using it>)'."""
    users = [v.name for v in VARIANTS.values() if v.backbone.name == name]
    return f"the {name} backbone ({', '.join(users)})"


@functools.cache
def _pretrained_shapes() -> dict[str, tuple[tuple[str, ...], dict[str, torch.Size]]]:
    """Backbone name -> (prefixes to strip, {key: shape} of its pretrained part), for every variant."""
    shapes = {}
    for variant in VARIANTS.values():
        with torch.device("meta"):  # shapes only
            candidate = build_backbone(variant)
        part, _, prefixes = _pretrained_part(candidate)
        shapes[variant.backbone.name] = (prefixes, {k: v.shape for k, v in part.state_dict().items()})
    return shapes


def _guess(state: Mapping[str, Tensor]) -> str:
    """Which DEIMv2 backbone's pretrained part the tensors of `state` fit best."""
    best, best_score = "", 0.0
    for name, (prefixes, own) in _pretrained_shapes().items():
        scoped = _scoped(state, prefixes)
        matched = sum(k in own and v.shape == own[k] for k, v in scoped.items())
        score = matched / max(len(own), len(scoped))
        if score > best_score:
            best, best_score = name, score
    if best_score < 0.5:
        return f"it does not look like the weights of any DEIMv2 backbone (first keys: {_listed(list(state))})"
    return f"it looks like the weights of {_describe(best)}"
