"""The `onnx` target: a deployed DEIMv2 as one self-contained float32 ONNX file with its metadata.

Traced with torch's TorchScript exporter (the dynamo exporter writes external .data files and
ignores opset 16), simplified with onnxslim (or onnxsim), checked by onnx.checker and, when
ONNX Runtime is installed, run once against PyTorch on the traced input.
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
import torch
from torch import nn

from .. import __version__
from ..errors import ExportError
from ..metadata import METADATA_KEY, ArtifactMetadata
from .graph import wrap
from ..progress import step, warn

INPUT_NAME = "images"
OPSETS = range(16, 21)  # GridSample needs 16; the TorchScript exporter stops at 20
DYNAMIC_TRACE_BATCH = 2  # a batch > 1 when tracing a dynamic batch, so no size-1 special case is baked in
VERIFY_ATOL = 1e-3  # ONNX Runtime vs PyTorch on the traced input (typically ~1e-5)
VERIFY_MIN_AGREEMENT = 0.9  # near-ties may swap a few rows; a wrong graph agrees on almost none


def export_onnx(model: nn.Module, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
    """Write `model` (deployed) to `out_path` as ONNX with `metadata` embedded; options: opset,
    simplify, verify."""
    proto = build_onnx(model, metadata, int(options["opset"]), bool(options["simplify"]), bool(options["verify"]))
    step(f"writing {metadata.output} ONNX, {len(proto.graph.node)} nodes")
    onnx.save(proto, str(out_path))
    return out_path


def export_onnx_int8(model: nn.Module, metadata: ArtifactMetadata, out_path: Path,
                     options: Mapping[str, Any]) -> Path:
    """The onnx-int8 target: the QDQ graph calibration.int8 chose and measured (options["int8"]), with
    `metadata` embedded."""
    proto = options["int8"].qdq_onnx
    _embed(proto, metadata)
    step(f"writing INT8 QDQ ONNX, {len(proto.graph.node)} nodes")
    onnx.save(proto, str(out_path))
    return out_path


def build_onnx(model: nn.Module, metadata: ArtifactMetadata, opset: int = 17, simplify: bool = True,
               verify: bool = True) -> onnx.ModelProto:
    """The ONNX graph of `model` (deployed) in the metadata's layout, batch and size, with the metadata
    embedded: traced, simplified, checked and (verify) compared with PyTorch in ONNX Runtime. The
    other targets convert from this graph."""
    if opset not in OPSETS:
        raise ExportError(f"opset {opset} is not supported; use {OPSETS.start} to {OPSETS.stop - 1} "
                          f"(GridSample needs 16, the TorchScript exporter stops at {OPSETS.stop - 1})")
    module = wrap(model, metadata)
    h, w = metadata.input_size
    images = torch.rand(metadata.batch or DYNAMIC_TRACE_BATCH, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [t.numpy() for t in module(images)]

    step(f"tracing ({metadata.output} outputs, opset {opset}, batch {metadata.batch or 'dynamic'})")
    proto = _trace(module, images, opset, dynamic=metadata.batch is None)
    if simplify:
        proto = _simplify(proto)
    _embed(proto, metadata)
    step("checking")
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"the exported ONNX graph is invalid: {e}") from e
    if verify:
        _verify(proto, images.numpy(), expected)
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


def _embed(proto: onnx.ModelProto, metadata: ArtifactMetadata) -> None:
    """The metadata record under METADATA_KEY in metadata_props, and who produced the file."""
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: metadata.to_json()})
    proto.producer_name = "deim-edge"
    proto.producer_version = __version__
    h, w = metadata.input_size
    proto.doc_string = f"{metadata.variant} {h}x{w}, {metadata.output} outputs"


def _verify(proto: onnx.ModelProto, images: np.ndarray, expected: list[np.ndarray]) -> None:
    """Run the graph in ONNX Runtime and compare with PyTorch, row by row (a query, or a detection).

    Rows are matched by box (and label), so near-tied scores that the two runtimes order differently
    (or that swap a query at a top-k boundary) do not count as errors; a wrong graph agrees on almost nothing.
    """
    if importlib.util.find_spec("onnxruntime") is None:
        step("not comparing with ONNX Runtime (not installed)")
        return
    import onnxruntime as ort

    step("comparing ONNX Runtime with PyTorch")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        got = session.run(None, {INPUT_NAME: images})
    except Exception as e:  # noqa: BLE001 -- ORT reports graph problems as its own exception types
        raise ExportError(f"ONNX Runtime cannot run the exported graph: {e}") from e
    key = slice(_width(expected[0]), None)  # what identifies a row: its box (TOPK: and label), not its score
    agree = np.mean([_agreeing_rows(a, b, key) for a, b in zip(_rows(got), _rows(expected))])
    if agree < VERIFY_MIN_AGREEMENT:
        raise ExportError(
            f"ONNX Runtime and PyTorch agree (within {VERIFY_ATOL:g}) on only {agree:.0%} of the outputs on a "
            f"random input. A freshly built, untrained model scores all positions alike and the runtimes pick "
            f"different queries: export it with verify=False (--no-verify). Otherwise try --no-simplify or "
            f"another --opset, and please report it")


def _width(output: np.ndarray) -> int:
    return int(np.prod(output.shape[2:], dtype=np.int64))


def _rows(outputs: list[np.ndarray]) -> np.ndarray:
    """[B, N, F]: per image one row per query (RAW: logits, box) or detection (TOPK: score, label, box)."""
    return np.concatenate([o.reshape(*o.shape[:2], _width(o)).astype(np.float32) for o in outputs], axis=-1)


def _agreeing_rows(got: np.ndarray, expected: np.ndarray, key: slice) -> float:
    """The fraction of one image's rows [N, F] whose nearest expected row (by the `key` columns)
    matches within VERIFY_ATOL."""
    nearest = np.abs(got[:, None, key] - expected[None, :, key]).max(-1).argmin(1)
    return float(np.mean(np.abs(got - expected[nearest]).max(-1) <= VERIFY_ATOL))
