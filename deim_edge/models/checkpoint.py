"""Checkpoint io in the official DEIMv2 format: {'model': ..., 'ema': {'module': ...}, ...}."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import CheckpointError
from ..fileio import atomic_path
from ..variants import VARIANTS, Variant, get_variant
from .deimv2 import DEIMv2, build_model
from .hub import hub_weights, input_size_of_config, read_hub, variant_of_config

# Buffers that depend on the input size: regenerated for the requested size, never copied.
SIZE_DEPENDENT = ("decoder.anchors", "decoder.valid_mask")
SCORE_HEAD = "decoder.enc_score_head.weight"  # [num_classes, hidden]
MAX_LISTED = 8


@dataclass(frozen=True)
class CheckpointRecord:
    """What a deim-edge training checkpoint says about its model beside the weights (None: not recorded, as in
    the official checkpoints)."""

    variant: str | None = None
    class_names: tuple[str, ...] | None = None
    input_size: tuple[int, int] | None = None


def read_state_dict(source: str | os.PathLike | Mapping[str, Any], trusted: bool = False) -> dict[str, Tensor]:
    """The model weights in a checkpoint file or dict; the EMA weights when present.

    Accepts an official training checkpoint, a bare state dict, or their path. Files are read
    with torch's weights-only unpickler unless `trusted=True`.
    """
    return read_checkpoint(source, trusted)[0]


def read_checkpoint(source: str | os.PathLike | Mapping[str, Any],
                    trusted: bool = False) -> tuple[dict[str, Tensor], CheckpointRecord]:
    """The model weights (see read_state_dict) and the record a deim-edge training checkpoint keeps beside them:
    its variant, class names and input size, so export, predict and bench need none of them given again."""
    is_file = isinstance(source, (str, os.PathLike))
    if is_file and (weights := hub_weights(source)) is not None:  # a Hugging Face Hub-layout folder or file
        state, config = read_hub(weights)
        return state, CheckpointRecord(variant_of_config(config), None, input_size_of_config(config))
    obj = load_file(source, trusted) if is_file else source
    what = str(source) if is_file else "the checkpoint"
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what} must hold a dict, got {type(obj).__name__}")
    ema = obj.get("ema")
    if isinstance(ema, Mapping) and isinstance(ema.get("module"), Mapping):
        state = ema["module"]
    elif isinstance(obj.get("model"), Mapping):
        state = obj["model"]
    elif isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    else:
        state = obj
    state = {_strip_wrappers(k): v for k, v in state.items()}
    if not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{what} holds no state dict of tensors (expected keys 'model' or 'ema.module', or a "
                              "plain state dict)")
    return state, _record(obj)


def _record(obj: Mapping[str, Any]) -> CheckpointRecord:
    """The checkpoint's own record; fields of the wrong type are left out (None), never guessed."""
    variant, names, size = obj.get("variant"), obj.get("class_names"), obj.get("input_size")
    names_ok = isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names)
    size_ok = (isinstance(size, (list, tuple)) and len(size) == 2
               and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size))
    return CheckpointRecord(variant if isinstance(variant, str) else None, tuple(names) if names_ok else None,
                            tuple(size) if size_ok else None)


def _strip_wrappers(key: str) -> str:
    """Keys saved from DistributedDataParallel or torch.compile wrappers."""
    return re.sub(r"^(module\.|_orig_mod\.)+", "", key)


def load_file(path: str | os.PathLike, trusted: bool = False) -> Any:
    """What torch.save wrote to `path` (weights-only unless `trusted`); CheckpointError when the file is missing,
    a folder, corrupt or not written by torch.save."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; give the .pth file itself")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as e:
        if not trusted and _looks_like_torch_save(path) and "weights only load failed" in str(e).lower():
            raise CheckpointError(
                f"{path} holds Python objects beyond tensors; if you trust its source, load it with "
                f"trusted=True (torch: {_first_line_after(str(e), 'WeightsUnpickler error:')})") from e
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (expected a file written by torch.save)") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, IndexError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(e).split('. ')[0]}; copy or save it again") from e


def _looks_like_torch_save(path: Path) -> bool:
    """A torch.save zip archive or a legacy pickle (protocol 2+ starts with 0x80)."""
    with open(path, "rb") as f:
        return zipfile.is_zipfile(f) or f.read(1) == b"\x80"


def _first_line_after(text: str, marker: str) -> str:
    tail = text.split(marker, 1)[-1].strip()
    return tail.splitlines()[0] if tail else text.splitlines()[0]


def guess_variant(state: Mapping[str, Tensor]) -> Variant | None:
    """The variant whose decoder width, depth and backbone family match a state dict, if any."""
    head = state.get(SCORE_HEAD)
    if head is None:
        return None
    layers = {int(m.group(1)) for k in state if (m := re.match(r"decoder\.decoder\.layers\.(\d+)\.", k))}
    vit = any(k.startswith("backbone.dinov3.") for k in state)
    for v in VARIANTS.values():
        if (v.decoder.hidden_dim, v.decoder.num_layers, v.backbone.name.startswith(("vit", "dinov3"))) == (
                head.shape[1], len(layers), vit):
            return v
    return None


def _disagreements(model: nn.Module, state: Mapping[str, Tensor]) -> tuple[list, list, list]:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, tuple(state[k].shape), s) for k, s in expected.items()
              if k in state and k not in SIZE_DEPENDENT and tuple(state[k].shape) != s]
    return missing, unexpected, shapes


def _report(variant: Variant, state: Mapping[str, Tensor], missing: list, unexpected: list, shapes: list) -> str:
    def listed(items: list) -> str:
        more = f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
        return ", ".join(map(str, items[:MAX_LISTED])) + more

    lines = [f"the checkpoint does not fit {variant.name}:"]
    if missing:
        lines.append(f"  {len(missing)} keys missing from the checkpoint: {listed(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} keys the model does not have: {listed(unexpected)}")
    if shapes:
        lines.append(f"  {len(shapes)} shapes disagree (key: checkpoint vs model): "
                     + listed([f"{k}: {a} vs {b}" for k, a, b in shapes]))
    guess = guess_variant(state)
    if guess is not None and guess.name != variant.name:
        lines.append(f"  it looks like a {guess.name} checkpoint: pass variant={guess.name!r}")
    elif shapes and all(k.startswith(("decoder.enc_score_head", "decoder.dec_score_head",
                                      "decoder.denoising_class_embed")) for k, _, _ in shapes):
        lines.append(f"  only the class heads differ: pass num_classes={state[SCORE_HEAD].shape[0]}")
    return "\n".join(lines)


def variant_of(state: Mapping[str, Tensor], record: CheckpointRecord, variant: str | Variant | None,
               source: Any = "the checkpoint") -> Variant:
    """`variant` when given, else the one the checkpoint records (a deim-edge run, a Hub config.json), else the
    one its weights match; CheckpointError when none tells."""
    if variant is not None:
        return get_variant(variant)
    if record.variant is not None:
        return get_variant(record.variant)
    guessed = guess_variant(state)
    if guessed is None:
        raise CheckpointError(f"cannot tell which DEIMv2 variant {source} is; give the variant "
                              f"(one of {', '.join(VARIANTS)})")
    return guessed


def load_checkpoint(source: str | os.PathLike | Mapping[str, Any], variant: str | Variant | None = None,
                    input_size: int | tuple[int, int] | None = None, num_classes: int | None = None,
                    trusted: bool = False) -> DEIMv2:
    """A `variant` model with the weights of an official (or deim-edge, or Hub-layout) checkpoint, in eval mode.

    The variant defaults to the one the checkpoint records or its weights match. Keys and shapes are checked
    strictly; names a file stores once for several modules sharing a tensor (safetensors) are filled from the
    model's own sharing. The anchors and valid mask are rebuilt for `input_size` (default: the checkpoint's,
    else the variant's), so a checkpoint trained at one size loads for another. Deploy-mode state dicts load
    into a deployed model. num_classes defaults to the checkpoint's.
    """
    state, record = read_checkpoint(source, trusted=trusted)
    variant = variant_of(state, record, variant, source if isinstance(source, (str, os.PathLike)) else "the "
                         "checkpoint")
    input_size = input_size or record.input_size
    if num_classes is None:
        num_classes = state[SCORE_HEAD].shape[0] if SCORE_HEAD in state else variant.num_classes
    model = build_model(variant, num_classes=num_classes, input_size=input_size)
    filled = _with_shared(model, state)
    problems = _disagreements(model, filled)
    if any(problems):  # a deploy-mode state dict? then it loads into a deployed model
        deployed = build_model(variant, num_classes=num_classes, input_size=input_size).deploy()
        deployed_filled = _with_shared(deployed, state)
        deployed_problems = _disagreements(deployed, deployed_filled)
        if not any(deployed_problems):
            model, filled = deployed, deployed_filled
        else:
            closest = min(problems, deployed_problems, key=lambda p: sum(map(len, p)))
            raise CheckpointError(_report(variant, state, *closest))
    own = model.state_dict()
    filled = {k: (own[k] if k in SIZE_DEPENDENT else v) for k, v in filled.items()}
    model.load_state_dict(filled, strict=True)
    return model.eval()


def _with_shared(model: nn.Module, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """`state` with the names it lacks filled where the model shares one tensor under several names (the
    decoder's shared box head, up, reg_scale) and the state holds one of them: safetensors stores each once."""
    groups: dict[int, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(tensor), []).append(key)
    filled = dict(state)
    for keys in groups.values():
        present = [k for k in keys if k in state]
        if present and len(present) < len(keys):
            filled.update({k: state[present[0]] for k in keys if k not in state})
    return filled


def save_checkpoint(path: str | os.PathLike, model: nn.Module, ema: nn.Module | None = None,
                    **extra: Any) -> Path:
    """Write `model` (and its EMA copy) in the official format, atomically; extra keys are kept."""
    updates = extra.pop("ema_updates", 0)
    ckpt: dict[str, Any] = {"model": model.state_dict(), **extra}
    if ema is not None:
        ckpt["ema"] = {"module": ema.state_dict(), "updates": updates}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return Path(path)
