"""`export()`: a checkpoint (or model) in, one artifact with its metadata out, written atomically."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..errors import ConfigError, ExportError
from ..fileio import artifact_size_mb, staged_output
from ..metadata import COCO_CLASSES, RAW, TOPK, ArtifactMetadata
from ..variants import Variant, get_variant
from ..progress import reporting, step, warn
from .registry import get_target

if TYPE_CHECKING:
    from torch import nn

DECODES = {"host": RAW, "graph": TOPK}  # --decode -> output layout


def export(checkpoint_or_model: str | os.PathLike | Mapping[str, Any] | nn.Module | None = None,
           target: str = "onnx", variant: str | Variant | None = None, imgsz: int | Sequence[int] | None = None,
           out: str | os.PathLike | None = None, *, decode: str = "graph", max_det: int = 300, batch: int = 1,
           dynamic_batch: bool = False,
           class_names: str | os.PathLike | Sequence[str] | None = None, progress: bool = False,
           **options: Any) -> Path:
    """Export a DEIMv2 checkpoint (path or loaded dict), model (nn.Module, left unchanged) or, with None, random
    weights of `variant`, to `target`; returns the path written.

    imgsz: int or (h, w), multiples of 32 (default: the variant's, or the model's). decode
    'graph' puts top-k in the artifact (TOPK: scores, labels, boxes); 'host' leaves logits and
    boxes for the host (RAW). class_names: names or a file (one per line, or a JSON list);
    COCO's 80 by default. Target options (e.g. opset, simplify for onnx) go in **options.
    out defaults to the checkpoint's path (or `<variant>`) with the target's suffix; a folder
    takes that name inside it. Nothing is left at `out` when the export fails.
    """
    tgt = get_target(target)
    tgt.require()
    target_options = tgt.resolve_options(options)
    layout = _layout(decode)
    batch_size = _batch(batch, dynamic_batch)
    if int(max_det) < 1:
        raise ConfigError(f"max_det must be at least 1, got {max_det}")
    if out is not None and Path(out).suffix.lower() != tgt.suffix and not Path(out).is_dir():
        raise ConfigError(f"the output {out} must end with {tgt.suffix} (runtimes are chosen by file suffix)")
    with reporting(progress):
        model, source = _load(checkpoint_or_model, variant, imgsz)
        v = model.variant
        num_classes = model.decoder.num_classes
        names = _class_names(class_names, num_classes)
        # TOPK keeps max_det, or every query-class pair when there are fewer
        k = min(int(max_det), v.decoder.num_queries * num_classes) if layout == TOPK else int(max_det)
        metadata = ArtifactMetadata.for_variant(v, input_size=model.input_size, class_names=names, output=layout,
                                                batch=batch_size, precision=tgt.precision).with_(max_det=k)
        path = _out_path(out, source, v, tgt.suffix)
        step(f"exporting to {tgt.name}: {path}")
        try:
            with staged_output(path) as tmp:
                written = path.parent / tgt.export(model, metadata, tmp, target_options).name
        except OSError as e:
            raise ExportError(f"cannot write {path}: {e}") from e
        step(f"done: {written} ({artifact_size_mb(written):.1f} MB)")
    return written


def _layout(decode: str) -> str:
    if decode not in DECODES:
        raise ConfigError(f"decode must be one of {', '.join(DECODES)} ('graph': top-k in the artifact; "
                          f"'host': raw logits and boxes), got {decode!r}")
    return DECODES[decode]


def _batch(batch: int, dynamic: bool) -> int | None:
    if dynamic:
        return None
    if int(batch) < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}")
    return int(batch)


def _size(imgsz: int | Sequence[int] | None) -> tuple[int, int] | None:
    if imgsz is None:
        return None
    size = (imgsz, imgsz) if isinstance(imgsz, int) else tuple(int(s) for s in imgsz)
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2:
        raise ConfigError(f"imgsz is one size or (height, width), got {imgsz!r}")
    return size


def _load(source: Any, variant: str | Variant | None,
          imgsz: int | Sequence[int] | None) -> tuple[nn.Module, Path | None]:
    """A deployed copy of the model to export, and the checkpoint path it came from (if any)."""
    from torch import nn

    from ..models import load_checkpoint, read_state_dict
    from ..models.checkpoint import guess_variant
    from ..models.deimv2 import DEIMv2, check_input_size
    from .weights import random_model

    size = _size(imgsz)
    if isinstance(source, nn.Module):
        if not isinstance(source, DEIMv2):
            raise ExportError(f"export takes a deim-edge DEIMv2 model, got {type(source).__name__}")
        if variant is not None and get_variant(variant).name != source.variant.name:
            raise ConfigError(f"the model is a {source.variant.name}, not {get_variant(variant).name}")
        step(f"copying the given {source.variant.name} model")
        model = copy.deepcopy(source)
        if size is not None and size != model.input_size:
            model.set_input_size(size)
        step("deploying (eval, fused convs)")
        return model.deploy(), None

    if source is None:
        if variant is None:
            raise ConfigError("give a checkpoint, or a variant to export with random weights (--variant)")
        v = get_variant(variant)
        size = size or (v.input_size, v.input_size)
        check_input_size(v, *size)
        warn(f"no checkpoint given: exporting {v.name} with RANDOM weights; its detections mean nothing "
             f"(pass --checkpoint for a trained model)")
        step(f"building {v.name} at {size[0]}x{size[1]} (random weights)")
        model = random_model(v, input_size=size)
    else:
        step(f"reading {source}")
        state = read_state_dict(source)
        v = get_variant(variant) if variant is not None else guess_variant(state)
        if v is None:
            raise ConfigError(f"cannot tell which DEIMv2 variant {source} holds; pass --variant")
        size = size or (v.input_size, v.input_size)
        check_input_size(v, *size)
        step(f"building {v.name} at {size[0]}x{size[1]} with the checkpoint's weights")
        model = load_checkpoint(state, v, input_size=size)
    step("deploying (eval, fused convs)")
    return model.deploy(), (Path(source) if isinstance(source, (str, os.PathLike)) else None)


def _class_names(names: str | os.PathLike | Sequence[str] | None, num_classes: int) -> tuple[str, ...]:
    """Names from a list or file, checked against the model's number of classes."""
    if names is None:
        if num_classes != len(COCO_CLASSES):
            raise ConfigError(f"the model has {num_classes} classes, not COCO's {len(COCO_CLASSES)}; "
                              f"give their names (--class-names FILE: one per line, or a JSON list)")
        return COCO_CLASSES
    if isinstance(names, (str, os.PathLike)):
        names = read_class_names(names)
    names = tuple(str(n) for n in names)
    if len(names) != num_classes:
        raise ConfigError(f"{len(names)} class names given, but the model has {num_classes} classes")
    return names


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a JSON list, or a text file with one name per line (blank lines skipped)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read class names from {path}: {e}") from e
    if text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} starts like a JSON list but is not valid JSON: {e}") from e
        if not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{path} must be a JSON list of strings")
        return names
    return [line.strip() for line in text.splitlines() if line.strip()]


def _out_path(out: str | os.PathLike | None, checkpoint: Path | None, variant: Variant, suffix: str) -> Path:
    """Where the artifact goes: `out`, a file named like the checkpoint (or variant) inside folder `out`,
    or that file beside the checkpoint (or in the working folder)."""
    stem = checkpoint.stem if checkpoint is not None else variant.name
    if out is None:
        return (checkpoint.parent if checkpoint is not None else Path()) / f"{stem}{suffix}"
    folder = Path(out).is_dir() and Path(out).suffix.lower() != suffix  # an existing .mlpackage is replaced
    return Path(out) / f"{stem}{suffix}" if folder else Path(out)
