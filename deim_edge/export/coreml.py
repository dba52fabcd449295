"""The `coreml` (FP16) and `coreml-fp32` targets: a deployed DEIMv2 as a CoreML ML program (.mlpackage).

The model is traced with torch.jit.trace in the metadata's output layout (graph.wrap) and converted
by coremltools: grid_sample becomes `resample`, top-k `topk`, the gathers `gather_along_axis`. Input
"images" [B, 3, H, W] float32, normalized on the host as the metadata says; outputs float32
(labels int32, read as int64 by the runtime). The metadata goes in user_defined_metadata. The structure
(inputs, outputs, metadata) is checked here; the numbers by the export's check, where Core ML runs (macOS).
"""

from __future__ import annotations

import contextlib
import platform
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import ConfigError, ExportError
from ..formats.coreml import embed, read_metadata
from ..metadata import RAW, ArtifactMetadata
from ..progress import step
from ..runtimes.coreml import INPUT_NAME
from .graph import wrap

PRECISIONS = {"fp16": "FLOAT16", "fp32": "FLOAT32", "int8": "FLOAT16"}  # metadata.precision -> compute precision (int8: int8 weights)
OLDEST_TARGET = "iOS15"  # ML programs need iOS 15 / macOS 12 / tvOS 15 / watchOS 8


def export_coreml(model: nn.Module, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
    """Write `model` (deployed) to `out_path` as an .mlpackage with `metadata`; options:
    minimum_deployment_target (e.g. "iOS16", "macOS13"; iOS15/macOS12 at least)."""
    import coremltools as ct

    target = deployment_target(options["minimum_deployment_target"])
    target_name = getattr(options["minimum_deployment_target"], "name", options["minimum_deployment_target"])
    if metadata.precision not in PRECISIONS:
        raise ExportError(f"CoreML export supports precision {' or '.join(PRECISIONS)}, not {metadata.precision!r}")
    if metadata.batch is None:
        raise ConfigError("CoreML export needs a fixed batch size (the traced graph has static shapes); "
                          "export without dynamic_batch (batch=N, default 1)")
    module = wrap(model, metadata)
    h, w = metadata.input_size
    images = torch.rand(metadata.batch, 3, h, w, generator=torch.Generator().manual_seed(0))

    step(f"tracing ({metadata.output} outputs, batch {metadata.batch}, {h}x{w})")
    traced = trace(module, images)
    precision = getattr(ct.precision, PRECISIONS[metadata.precision])
    step(f"converting to a CoreML ML program ({metadata.precision}, minimum target {target_name})")
    outputs = [ct.TensorType(name=n, dtype=np.int32 if n == "labels" else np.float32) for n in module.output_names]
    try:
        with warnings.catch_warnings(), _conversion_fixes():
            warnings.simplefilter("ignore")  # coremltools' notes on untested torch versions and flattened tuples
            mlmodel = ct.convert(traced, inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(images.shape),
                                                               dtype=np.float32)],
                                 outputs=outputs, convert_to="mlprogram", compute_precision=precision,
                                 minimum_deployment_target=target, skip_model_load=platform.system() != "Darwin")
    except Exception as e:  # noqa: BLE001 -- coremltools raises bare exceptions for unsupported ops
        raise ExportError(f"coremltools could not convert the model for {target_name}: {type(e).__name__}: {e}. "
                          f"A newer minimum_deployment_target (e.g. iOS17) may support the op") from e
    if "int8" in options:  # coreml-int8: the plan's INT8 layers get int8 weights (calibration.int8)
        from .coreml_int8 import float_weights, quantize_coreml_weights

        mlmodel = quantize_coreml_weights(mlmodel, float_weights(mlmodel, options["int8"].plan))
    describe(mlmodel, metadata)
    check_interface(mlmodel.get_spec(), metadata)
    step(f"writing {out_path.name}")
    mlmodel.save(str(out_path))
    if read_metadata(out_path) != metadata:
        raise ExportError(f"the metadata read back from {out_path.name} differs from the metadata written")
    return out_path


def deployment_target(name: Any):
    """The coremltools target for an option value like "iOS16", "ios17" or "macOS13" (or a ct.target);
    ConfigError listing the valid names otherwise. Targets of one release are one member (macOS13 is iOS16)."""
    import coremltools as ct

    if isinstance(name, ct.target):
        found = name
    else:
        by_name = {t.lower(): member for t, member in ct.target.__members__.items()}
        found = by_name.get(str(name).strip().lower())
    oldest = getattr(ct.target, OLDEST_TARGET)
    valid = [t for t, member in ct.target.__members__.items() if member >= oldest]
    if found is None:
        raise ConfigError(f"unknown minimum_deployment_target {name!r}; choose one of: {', '.join(valid)}")
    if found < oldest:
        raise ConfigError(f"minimum_deployment_target {name!r} is too old: CoreML ML programs need "
                          f"iOS15/macOS12/tvOS15/watchOS8 or newer (iOS16/macOS13 to run resample in FP16); "
                          f"choose one of: {', '.join(valid)}")
    return found


def trace(module: nn.Module, images: torch.Tensor) -> torch.jit.ScriptModule:
    """torch.jit.trace of the wrapped model on `images` (shapes fixed at trace time, as intended)."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r"`torch.jit.trace\w*` is deprecated")  # coremltools needs it
            return torch.jit.trace(module, images, check_trace=False)
    except Exception as e:  # noqa: BLE001 -- any tracer failure, reported with its cause
        raise ExportError(f"torch.jit.trace failed: {type(e).__name__}: {e}") from e


@contextlib.contextmanager
def _conversion_fixes() -> Iterator[None]:
    """Two torch ops that coremltools 8/9 converts wrongly, translated here for the conversion only
    (the registry is restored afterwards):

    - linear with a 1-D weight (the FDR integral, prob [..., n] . project [n]): coremltools assumes
      a 2-D weight and fails; it becomes a matmul with a [n, 1] column.
    - integer division with rounding (the top-k query index, index // num_classes): coremltools
      divides in floating point, which FP16 compute rounds (24000 is not exact in float16); it
      becomes an int32 floor_div (trunc: the sign-corrected floor_div of the magnitudes).
    """
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, _get_kwinputs
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY
    from coremltools.converters.mil.mil import types

    table = _TORCH_OPS_REGISTRY.name_to_func_mapping
    original = {name: table[name] for name in ("linear", "div")}

    def linear(context, node):
        x, weight, *bias = _get_inputs(context, node, expected=[2, 3])
        if weight.rank != 1 or (bias and bias[0] is not None):
            return original["linear"](context, node)
        column = mb.expand_dims(x=weight, axes=[-1])  # [n, 1]
        context.add(mb.squeeze(x=mb.matmul(x=x, y=column), axes=[-1], name=node.name), torch_name=node.name)

    def div(context, node):
        inputs = _get_inputs(context, node, expected=[2, 3])
        x, y = inputs[0], inputs[1]
        mode = inputs[2].val if len(inputs) > 2 and inputs[2] is not None else None
        mode = _get_kwinputs(context, node, "rounding_mode", default=[mode])[0]
        if mode not in ("floor", "trunc") or not (types.is_int(x.dtype) and types.is_int(y.dtype)):
            return original["div"](context, node)
        x, y = (v if v.dtype == types.int32 else mb.cast(x=v, dtype="int32") for v in (x, y))
        if mode == "floor":
            result = mb.floor_div(x=x, y=y, name=node.name)
        else:
            magnitude = mb.floor_div(x=mb.abs(x=x), y=mb.abs(x=y))
            result = mb.mul(x=mb.mul(x=mb.sign(x=x), y=mb.sign(x=y)), y=magnitude, name=node.name)
        context.add(result, torch_name=node.name)

    table.update(linear=linear, div=div)
    try:
        yield
    finally:
        table.update(original)


def describe(mlmodel, metadata: ArtifactMetadata) -> None:
    """Author, description, version, the deim-edge record and the class names (what Xcode shows)."""
    h, w = metadata.input_size
    norm = "x/255" if metadata.mean is None else f"x/255, mean {list(metadata.mean)}, std {list(metadata.std)}"
    mlmodel.author = f"deim-edge {__version__}"
    mlmodel.short_description = (f"{metadata.variant or 'DEIMv2'} object detector, {h}x{w}, {metadata.num_classes} "
                                 f"classes, {metadata.output} outputs, {metadata.precision}")
    mlmodel.version = __version__
    embed(mlmodel, metadata)
    mlmodel.input_description[INPUT_NAME] = (f"RGB batch [{metadata.batch}, 3, {h}, {w}] float32, resized "
                                             f"({metadata.resize}) and normalized ({norm})")
    descriptions = {"logits": "class logits [B, queries, classes]",
                    "boxes": ("boxes [B, queries, 4] cx, cy, w, h" if metadata.output == RAW
                              else "boxes [B, K, 4] x1, y1, x2, y2") + ", normalized to the input size",
                    "scores": "scores [B, K], sorted descending", "labels": "class ids [B, K] int32"}
    for name in mlmodel.output_description:
        mlmodel.output_description[name] = descriptions.get(name, name)


def expected_outputs(metadata: ArtifactMetadata, num_queries: int | None = None) -> dict[str, tuple[int, ...]]:
    """Output name -> shape of an artifact with this metadata (RAW needs the number of queries)."""
    b, k, c = metadata.batch, metadata.max_det, metadata.num_classes
    if metadata.output == RAW:
        return {"logits": (b, num_queries, c), "boxes": (b, num_queries, 4)}
    return {"scores": (b, k), "labels": (b, k), "boxes": (b, k, 4)}


def check_interface(spec, metadata: ArtifactMetadata) -> None:
    """ExportError unless the converted model has input images [B,3,H,W] float32 and the layout's outputs
    (float32; labels int32)."""
    from coremltools.proto.FeatureTypes_pb2 import ArrayFeatureType

    def features(described) -> dict[str, tuple[tuple[int, ...], str]]:
        return {f.name: (tuple(f.type.multiArrayType.shape), ArrayFeatureType.ArrayDataType.Name(
            f.type.multiArrayType.dataType).lower()) for f in described}

    inputs = features(spec.description.input)
    want = {INPUT_NAME: ((metadata.batch, 3, *metadata.input_size), "float32")}
    if inputs != want:
        raise ExportError(f"the converted model's inputs are {inputs}, expected {want}")
    outputs = features(spec.description.output)
    queries = outputs.get("logits", ((None, None),))[0][1]
    want = {name: (shape, "int32" if name == "labels" else "float32")
            for name, shape in expected_outputs(metadata, queries).items()}
    if outputs != want:
        raise ExportError(f"the converted model's outputs are {outputs}, expected {want}")
