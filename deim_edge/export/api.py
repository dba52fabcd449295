"""`export()`: a checkpoint (or model) in, one artifact with its metadata out, written atomically."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..calibration.settings import DEFAULT_BUDGET, DEFAULT_SIZE as DEFAULT_CALIB_SIZE, QuantizeSettings
from ..errors import ConfigError, DeimEdgeError, ExportError
from ..fileio import artifact_size_mb, atomic_path, check_output, staged_output
from ..formats import Format, get_format
from ..metadata import COCO_CLASSES, HALF_FLOAT_OPS, RAW, TOPK, ArtifactMetadata
from ..variants import Variant, get_variant
from ..progress import reporting, step, warn
from ..sizes import as_hw
from .registry import ONNX_OPTIONS, Target, get_target

if TYPE_CHECKING:
    from torch import nn

DECODES = {"host": RAW, "graph": TOPK}  # --decode -> output layout
PROFILES = ("default", "npu")  # --profile: the model's operators (DEIMv2.set_ops)
FOLDER_SUFFIXES = (".mlpackage",)  # artifacts that are folders


def export(checkpoint_or_model: str | os.PathLike | Mapping[str, Any] | nn.Module | None = None,
           target: str = "onnx", variant: str | Variant | None = None, imgsz: int | Sequence[int] | None = None,
           out: str | os.PathLike | None = None, *, decode: str | None = None, profile: str | None = None,
           max_det: int = 300, batch: int = 1,
           dynamic_batch: bool = False,
           class_names: str | os.PathLike | Sequence[str] | None = None, progress: bool = False,
           calib_data: str | os.PathLike | None = None, calib_size: int = DEFAULT_CALIB_SIZE,
           calib_method: str = "minmax", recipe: str = "detr", max_drop: float | None = None,
           val_data: str | os.PathLike | None = None, **options: Any) -> Path:
    """Export a DEIMv2 checkpoint (path or loaded dict), model (nn.Module, left unchanged) or, with None, random
    weights of `variant`, to `target`; returns the path written.

    imgsz: int or (h, w), multiples of 32 (default: the variant's, or the model's). decode
    'graph' puts top-k in the artifact (TOPK: scores, labels, boxes; the default); 'host' leaves logits and
    boxes for the host (RAW). profile 'npu' builds the graph NPUs convert: no GridSample, no TopK (the same
    numbers from gathers, comparisons and arithmetic), decoded on the host, a fixed batch, and its ops checked
    against Rockchip RKNN's list before the export is written; default: the profile the target converts (rknn:
    npu), else 'default'. class_names: names or a file (one per line, or a JSON list);
    COCO's 80 by default. Target options (e.g. opset, simplify for onnx) go in **options.
    out defaults to the checkpoint's path (or `<variant>`) with the target's suffix; a folder
    takes that name inside it. Nothing is left at `out` when the export fails.

    INT8 targets calibrate on `calib_size` images of `calib_data` (a folder, a COCO .json, a video, or
    "synthetic") with `calib_method` (minmax, entropy, percentile) and quantize what `recipe` ("detr", or the
    "naive" quantize-everything baseline) allows, moving the most sensitive layers back to float until the drop
    is within `max_drop` (default 1.0). The accuracy gate (any target) measures the artifact against the FP32
    PyTorch model on `val_data` (COCO: AP; plain images: agreement): the figures go into the artifact's metadata
    and `<artifact>.accuracy.json`; with `max_drop`, an export that loses more fails and writes nothing.
    """
    tgt = get_target(target)
    tgt.require()
    profile = _profile(profile, tgt)
    settings = QuantizeSettings(None if calib_data is None else str(calib_data), int(calib_size), calib_method,
                                recipe, max_drop, None if val_data is None else str(val_data))
    if tgt.precision == "int8":
        from ..calibration.data import check_calibration_data

        tgt.int8_hooks().check_method(calib_method, tgt.name)
        settings.require_calibration(tgt.name)
        check_calibration_data(settings.calib_data)
    if val_data is not None:
        from ..calibration.gate import find_val_data

        find_val_data(val_data)
    target_options = tgt.resolve_options(options)
    layout = _layout(_decode(decode, profile, dynamic_batch))
    batch_size = _batch(batch, dynamic_batch)
    if int(max_det) < 1:
        raise ConfigError(f"max_det must be at least 1, got {max_det}")
    if out is not None and Path(out).suffix.lower() != tgt.suffix and not Path(out).is_dir():
        raise ConfigError(f"the output {out} must end with {tgt.suffix} (runtimes are chosen by file suffix)")
    with reporting(progress):
        model, source, stored_names = _load(checkpoint_or_model, variant, imgsz)
        if profile == "npu":  # the model's operators (models/deimv2.py); a loaded model has the default ones
            model.set_ops(profile)
        v = model.variant
        num_classes = model.decoder.num_classes
        names = _class_names(class_names if class_names is not None else stored_names, num_classes)
        # TOPK keeps max_det, or every query-class pair when there are fewer
        k = min(int(max_det), v.decoder.num_queries * num_classes) if layout == TOPK else int(max_det)
        metadata = ArtifactMetadata.for_variant(v, input_size=model.input_size, class_names=names, output=layout,
                                                batch=batch_size, precision=tgt.precision).with_(max_det=k)
        if profile == "npu":
            metadata = metadata.with_(extra={**metadata.extra, "profile": profile})
        path = check_output(_out_path(out, source, v, tgt.suffix), folder=tgt.suffix in FOLDER_SUFFIXES)
        step(f"exporting to {tgt.name}: {path}")
        try:
            with staged_output(path) as tmp:
                figures, gate = None, None
                if tgt.measured_in_build:  # checked, calibrated and measured by the export function itself
                    target_options = {**target_options, "quantize": settings, "progress": progress}
                elif tgt.precision == "int8":
                    metadata, target_options, figures, gate = _plan_int8(model, metadata, tgt, target_options,
                                                                         settings, progress)
                written = tmp.parent / tgt.export(model, metadata, tmp, target_options).name
                if tgt.measured_in_build:
                    metadata = tgt.record.read_metadata(written)
                    figures = metadata.extra.get("accuracy")
                else:
                    if target_options.get("verify", True):
                        _verify(written, tmp, model, metadata, tgt.record)
                    if tgt.precision != "int8" and (val_data is not None or max_drop is not None):
                        figures, gate = None, float_gate(model, metadata, settings)
                if gate is not None:  # the backend's own artifact, measured
                    half_budget = None
                    if tgt.precision == "int8":
                        half_budget = settings.max_drop if settings.max_drop is not None else DEFAULT_BUDGET
                    figures, metadata = (_gate_artifact(written, tgt.record, *gate, progress, half_budget)
                                         or (None, metadata))
                if figures is not None:
                    from ..calibration.gate import check

                    check(figures, max_drop, f"the {tgt.name} export")
                written = path.parent / written.name
        except OSError as e:
            raise ExportError(f"cannot write {path}: {e}") from e
        if figures is not None:
            _write_report(written, tgt.name, settings, metadata, figures)
        step(f"done: {written} ({artifact_size_mb(written):.1f} MB)")
    return written


def _plan_int8(model: nn.Module, metadata: ArtifactMetadata, tgt: Target, options: dict[str, Any],
               settings: QuantizeSettings, progress: bool):
    """(metadata with the INT8 record, target options with the plan, the figures if final, the gate's
    reference and data when the backend's artifact must be measured again)."""
    import onnx

    from ..calibration.int8 import plan_int8
    from .onnx import build_onnx

    hooks = tgt.int8_hooks()
    fp32_metadata = metadata.with_(precision="fp32")
    fp32 = build_onnx(model, fp32_metadata, int(options.get("opset", ONNX_OPTIONS["opset"])),
                      bool(options.get("simplify", True)))
    if options.get("verify", True):  # the graph every backend quantizes: as an ONNX artifact, against PyTorch
        from .verify import verify_artifact

        with tempfile.TemporaryDirectory(prefix="deim-edge-fp32-") as folder:
            onnx.save(fp32, str(Path(folder) / "fp32.onnx"))
            verify_artifact(Path(folder) / "fp32.onnx", model, fp32_metadata, get_format("onnx"))
    plan, reference, data = plan_int8(model, metadata, settings, fp32, hooks, progress)
    metadata = metadata.with_(extra={**metadata.extra, "int8": plan.record(settings)})
    options = {**options, "int8": plan}
    if hooks.ships_qdq:  # the artifact is the measured QDQ graph (TensorRT: as ONNX Runtime runs it)
        where = "QDQ ONNX in ONNX Runtime" + (" (TensorRT builds the engine from it)" if hooks.qdq_style == "trt"
                                              else "")
        figures = {**plan.figures, "measured": where}
        return metadata.with_(extra={**metadata.extra, "accuracy": figures}), options, figures, None
    return metadata, options, None, (reference, data)


def _verify(written: Path, requested: Path, model: nn.Module, metadata: ArtifactMetadata, fmt: Format) -> None:
    """The export's check of the written artifact; not of a TensorRT bundle (written where no engine can be
    built), which holds no engine to run."""
    from .verify import verify_artifact

    if written.name != requested.name:
        step(f"not running {written.name} against PyTorch: it is a bundle, its engine is built on the device")
        return
    verify_artifact(written, model, metadata, fmt)


def float_gate(model: nn.Module, metadata: ArtifactMetadata, settings: QuantizeSettings):
    """The accuracy gate of a float export: the FP32 reference (`model`) and --val-data, else the bundled samples."""
    from ..media import sample_images
    from ..calibration.gate import GateData
    from ..detector import Detector
    from ..runtimes.torch import TorchRuntime

    images, where = sample_images()
    fallback = [img[..., ::-1].copy() for img in images]  # BGR as read -> RGB
    data = GateData.find(settings.val_data, fallback, f"{len(images)} bundled sample images (no --val-data)")
    return Detector(TorchRuntime.of(model, metadata)), data


def _gate_artifact(path: Path, fmt: Format, reference, data, progress: bool,
                   half_budget: float | None = None) -> tuple[dict, ArtifactMetadata] | None:
    """The gate's figures of the written artifact and its metadata with them, as stamped into it; None (with a
    warning) where the artifact cannot run here. With half_budget (INT8) and a runtime that can run the float ops
    in this machine's half precision (format.half), measured that way too: within the budget, the metadata
    allows it (HALF_FLOAT_OPS) and the figures say how it did."""
    from ..calibration.gate import measure, public
    from ..detector import Detector

    try:
        candidate = Detector(fmt.open(path, **fmt.check_options))
    except DeimEdgeError as e:
        warn(f"the accuracy gate cannot run {path.name} here ({e}); its accuracy is not measured")
        return None
    try:
        measured = measure(candidate, reference, data, None, progress)
    except DeimEdgeError:
        raise
    except Exception as e:  # noqa: BLE001 -- a runtime's own error: the artifact does not run, do not ship it
        raise ExportError(f"the written {path.name} fails on the accuracy gate's images ({type(e).__name__}: {e}); "
                          f"nothing was written") from e
    figures = {**public(measured), "measured": f"{path.suffix} artifact"}
    if half_budget is not None:
        half = _half_trial(path, fmt, reference, data, measured["_reference"], progress)
        if half is not None:
            figures["half_float_ops"] = {**half, "allowed": half["drop"] <= half_budget}
    written = candidate.runtime.metadata  # as the backend wrote it (e.g. the TFLite INT8 mode it used)
    extra = {**written.extra, "accuracy": figures}
    if figures.get("half_float_ops", {}).get("allowed"):
        extra[HALF_FLOAT_OPS] = {k: figures["half_float_ops"][k] for k in ("precision", "drop")}
    written = written.with_(extra=extra)
    fmt.write_metadata(path, written)
    return figures, written


def _half_trial(path: Path, fmt: Format, reference, data, reference_figures: dict, progress: bool) -> dict | None:
    """{"precision", "drop"} of the artifact with its float ops in this machine's half precision, where its
    runtime has one (format.half); None where not, or (with a warning) where that does not run."""
    from ..calibration.gate import measure
    from ..detector import Detector

    half = fmt.half_options()
    if half is None:
        return None
    step(f"measuring {path.name} again with its float ops in {half['precision']}")
    try:
        figures = measure(Detector(fmt.open(path, **fmt.check_options, **half)), reference, data, reference_figures,
                          progress)
    except Exception as e:  # noqa: BLE001 -- the float artifact stands; only the faster option is lost
        warn(f"{path.name} does not run with {half['precision']} float ops here ({type(e).__name__}: {e}); "
             f"its float ops stay f32")
        return None
    return {"precision": half["precision"], "drop": figures["drop"]}


def _write_report(artifact: Path, target: str, settings: QuantizeSettings, metadata: ArtifactMetadata,
                  figures: dict) -> None:
    """<artifact>.accuracy.json: the gate's figures, the settings and (INT8) how the layers were chosen."""
    report = {"artifact": artifact.name, "target": target, "variant": metadata.variant,
              "input_size": list(metadata.input_size), "accuracy": figures,
              "settings": {k: v for k, v in vars(settings).items() if v is not None},
              **({"int8": metadata.extra["int8"]} if "int8" in metadata.extra else {})}
    dest = artifact.with_name(artifact.name + ".accuracy.json")
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    step(f"accuracy report: {dest}")


def _profile(profile: str | None, tgt: Target) -> str:
    """--profile, defaulted and checked against the target's: a target that converts one profile (rknn: npu)
    takes only that one."""
    if profile not in (None, *PROFILES):
        raise ConfigError(f"profile must be one of {', '.join(PROFILES)}, got {profile!r}")
    if tgt.profile is None:
        return profile or "default"
    if profile not in (None, tgt.profile):
        raise ConfigError(f"{tgt.name} converts the {tgt.profile} profile's graph: leave --profile out or give "
                          f"--profile {tgt.profile}, not {profile!r}")
    return tgt.profile


def _decode(decode: str | None, profile: str, dynamic_batch: bool) -> str:
    """--decode, defaulted and checked against --profile: the npu profile decodes on the host (the graph's
    top-k is a TopK, which NPUs lack) at a fixed batch."""
    if profile != "npu":
        return decode or "graph"
    if decode not in (None, "host"):
        raise ConfigError("the npu profile decodes on the host (top-k in the graph is a TopK, which NPUs lack): "
                          "leave --decode out or give --decode host")
    if dynamic_batch:
        raise ConfigError("the npu profile needs a fixed batch (NPU compilers take static shapes): give --batch N")
    return "host"


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


def _load(source: Any, variant: str | Variant | None,
          imgsz: int | Sequence[int] | None) -> tuple[nn.Module, Path | None, tuple[str, ...] | None]:
    """A deployed copy of the model to export, the checkpoint path it came from (if any), and the class names
    the checkpoint stores (deim-edge training checkpoints: with their variant and input size, used when not
    given)."""
    from torch import nn

    from ..models import load_checkpoint
    from ..models.checkpoint import read_checkpoint, variant_of
    from ..models.deimv2 import DEIMv2, check_input_size
    from .weights import random_model

    size = None if imgsz is None else as_hw(imgsz)
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
        return model.deploy(), None, None

    if source is None:
        if variant is None:
            raise ConfigError("give a checkpoint, or a variant to export with random weights (--variant)")
        v = get_variant(variant)
        size = size or (v.input_size, v.input_size)
        check_input_size(v, *size)
        warn(f"no checkpoint given: exporting {v.name} with RANDOM weights; its detections mean nothing "
             f"(pass --checkpoint for a trained model)")
        step(f"building {v.name} at {size[0]}x{size[1]} (random weights)")
        model, record = random_model(v, input_size=size), None
    else:
        step(f"reading {source}")
        state, record = read_checkpoint(source)
        v = variant_of(state, record, variant, source)
        size = size or record.input_size or (v.input_size, v.input_size)
        check_input_size(v, *size)
        step(f"building {v.name} at {size[0]}x{size[1]} with the checkpoint's weights")
        model = load_checkpoint(state, v, input_size=size)
    step("deploying (eval, fused convs)")
    path = Path(source) if isinstance(source, (str, os.PathLike)) else None
    return model.deploy(), path, (record.class_names if record is not None else None)


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
    or that file beside the checkpoint (or in the working folder: no checkpoint, or one in the Hub's cache,
    named like its repo)."""
    from ..models.hub import hub_cache_repo

    repo = hub_cache_repo(checkpoint) if checkpoint is not None else None
    stem = repo or (checkpoint.stem if checkpoint is not None else variant.name)
    if out is None:
        return (checkpoint.parent if checkpoint is not None and repo is None else Path()) / f"{stem}{suffix}"
    folder = Path(out).is_dir() and Path(out).suffix.lower() != suffix  # an existing .mlpackage is replaced
    return Path(out) / f"{stem}{suffix}" if folder else Path(out)
