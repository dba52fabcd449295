"""The `onnx` target: a deployed DEIMv2 as one self-contained float32 ONNX file with its metadata.

Traced with torch's TorchScript exporter (the dynamo exporter writes external .data files and
ignores opset 16), simplified with onnxslim (or onnxsim) and checked by onnx.checker.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path
from typing import Any, Mapping

import onnx
import torch
from torch import nn

from ..calibration.hooks import Int8Hooks
from ..errors import ExportError
from ..formats.onnx import embed
from ..metadata import ArtifactMetadata
from .fold import clip_negative_shifts, fold_affine_scales
from .op_support import check_ops
from .graph import wrap
from ..progress import step, warn

INPUT_NAME = "images"
OPSETS = range(16, 21)  # GridSample needs 16; the TorchScript exporter stops at 20
DYNAMIC_TRACE_BATCH = 2  # a batch > 1 when tracing a dynamic batch, so no size-1 special case is baked in


def _for_onnx_runtime(proto: onnx.ModelProto, metadata: ArtifactMetadata | None = None) -> onnx.ModelProto:
    """The graph as ONNX Runtime runs it best: non-positive LAB shifts as Clips (see export/fold.py)."""
    shifted = clip_negative_shifts(proto)
    if shifted:
        step(f"{shifted} affine shifts <= 0 as clips (fused into their convolutions by ONNX Runtime)")
    return proto


# onnx-int8 ships the QDQ graph the search measured in ONNX Runtime; attention's activation x activation products
# stay float (ONNX Runtime would run the softmax between them as QLinearSoftmax: see calibration/recipe.py)
INT8_HOOKS = Int8Hooks(ships_qdq=True, prepare=_for_onnx_runtime, activation_products=False)


def export_onnx(model: nn.Module, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
    """Write `model` (deployed) to `out_path` as ONNX with `metadata` embedded; options: opset, simplify."""
    proto = _for_onnx_runtime(build_onnx(model, metadata, int(options["opset"]), bool(options["simplify"])))
    step(f"writing {metadata.output} ONNX, {len(proto.graph.node)} nodes")
    onnx.save(proto, str(out_path))
    return out_path


def export_onnx_int8(model: nn.Module, metadata: ArtifactMetadata, out_path: Path,
                     options: Mapping[str, Any]) -> Path:
    """The onnx-int8 target: the QDQ graph calibration.int8 chose and measured (options["int8"]), with
    `metadata` embedded."""
    proto = options["int8"].qdq_onnx
    embed(proto, metadata)
    step(f"writing INT8 QDQ ONNX, {len(proto.graph.node)} nodes")
    onnx.save(proto, str(out_path))
    return out_path


def build_onnx(model: nn.Module, metadata: ArtifactMetadata, opset: int = 17, simplify: bool = True
               ) -> onnx.ModelProto:
    """The ONNX graph of `model` (deployed) in the metadata's layout, batch and size, with the metadata
    embedded: traced, simplified and checked. The other targets convert from this graph."""
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported; use {OPSETS.start} to {OPSETS.stop - 1} "
                          f"(GridSample needs 16, the TorchScript exporter stops at {OPSETS.stop - 1})")
    module = wrap(model, metadata)
    h, w = metadata.input_size
    images = torch.rand(metadata.batch or DYNAMIC_TRACE_BATCH, 3, h, w, generator=torch.Generator().manual_seed(0))

    step(f"tracing ({metadata.output} outputs, opset {opset}, batch {metadata.batch or 'dynamic'})")
    proto = _trace(module, images, opset, dynamic=metadata.batch is None)
    if simplify:
        proto = _simplify(proto)
    folded = fold_affine_scales(proto)
    if folded:
        step(f"folded {folded} affine scales into their convolutions")
    if metadata.extra.get("profile") == "npu":
        step("checking the ops against Rockchip RKNN's list (the npu profile)")
        check_ops(proto, "rknn")
    embed(proto, metadata)
    step("checking")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported ONNX graph is invalid: {e}") from e
    return proto


def _trace(module: nn.Module, images: torch.Tensor, opset: int, dynamic: bool) -> onnx.ModelProto:
    names = list(module.output_names)
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *names]} if dynamic else None
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # tracer notes on shapes fixed at trace time: intended (static H, W)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
            warnings.filterwarnings("ignore", message="The feature will be removed")  # torch's own logging setup
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # left to the simplifier
            torch.onnx.export(module, (images,), buffer, input_names=[INPUT_NAME], output_names=names,
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as e:  # noqa: BLE001 -- any tracer or exporter failure, reported with its cause
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {type(e).__name__}: {e}") from e
    return onnx.load_from_string(buffer.getvalue())


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim, else onnxsim; on failure (or neither installed) the graph as traced, with a warning."""
    if importlib.util.find_spec("onnxslim") is not None:
        import onnxslim

        step(f"simplifying with onnxslim ({len(proto.graph.node)} nodes)")
        try:
            return onnxslim.slim(proto)
        except Exception as e:  # noqa: BLE001 -- a simplifier bug must not lose the export
            warn(f"onnxslim failed ({type(e).__name__}: {e}); keeping the unsimplified graph")
            return proto
    if importlib.util.find_spec("onnxsim") is not None:
        import onnxsim

        step(f"simplifying with onnxsim ({len(proto.graph.node)} nodes)")
        try:
            simplified, ok = onnxsim.simplify(proto)
        except Exception as e:  # noqa: BLE001
            warn(f"onnxsim failed ({type(e).__name__}: {e}); keeping the unsimplified graph")
            return proto
        if ok:
            return simplified
        warn("onnxsim could not validate its result; keeping the unsimplified graph")
        return proto
    warn("neither onnxslim nor onnxsim is installed; the graph is not simplified (pip install onnxslim)")
    return proto
