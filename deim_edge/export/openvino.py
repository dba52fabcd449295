"""The `openvino` and `openvino-fp16` targets: OpenVINO IR (.xml + .bin) converted from the ONNX graph,
with the metadata in the model's rt_info under "deim_edge".

The weights are stored as float32, or as float16 (half the file; OpenVINO decompresses them or
computes in f16 where the device does).
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import onnx

from ..errors import ExportError
from ..formats.openvino import embed, import_openvino
from ..metadata import ArtifactMetadata
from ..progress import step
from .onnx import build_onnx

if TYPE_CHECKING:
    import openvino

COMPRESS = {"fp32": False, "fp16": True}  # metadata.precision -> save_model(compress_to_fp16=)


def export_openvino(model: Any, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
    """Write `model` (deployed) to `out_path` (.xml, its .bin beside it) with `metadata` in its rt_info;
    options: opset, simplify (of the ONNX graph converted)."""
    proto = build_onnx(model, metadata, int(options["opset"]), bool(options["simplify"]))
    return convert_onnx(proto, metadata, out_path)


def convert_onnx(proto: onnx.ModelProto, metadata: ArtifactMetadata, out_path: Path) -> Path:
    """Convert a deim-edge ONNX graph (build_onnx) to IR at `out_path`, weights stored at metadata.precision."""
    if metadata.precision not in COMPRESS:
        raise ExportError(f"OpenVINO IR stores fp32 or fp16 weights, not {metadata.precision}")
    step(f"converting to OpenVINO IR ({len(proto.graph.node)} ONNX nodes)")
    ov_model = onnx_to_openvino(proto)
    embed(ov_model, metadata)
    step(f"writing IR, {metadata.precision} weights")
    try:
        import_openvino().save_model(ov_model, str(out_path), compress_to_fp16=COMPRESS[metadata.precision])
    except RuntimeError as e:  # OpenVINO reports write failures as RuntimeError, not OSError
        raise ExportError(f"OpenVINO cannot write {Path(out_path).name}: {e}") from e
    return Path(out_path)


def onnx_to_openvino(proto: onnx.ModelProto) -> openvino.Model:
    """An ONNX graph converted by OpenVINO (its telemetry off); ExportError where it cannot be."""
    ov = import_openvino()
    try:
        with no_telemetry():
            return ov.convert_model(io.BytesIO(proto.SerializeToString()))
    except Exception as e:  # noqa: BLE001 -- the converter reports unsupported ops as its own error types
        raise ExportError(f"OpenVINO cannot convert the ONNX graph: {type(e).__name__}: {e}") from e


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """OpenVINO's converter and NNCF send usage telemetry, each event from a child process of its own (which
    prints a traceback when Ctrl-C reaches it). openvino_telemetry sends nothing where CI=true (both ask it to:
    disable_in_ci=True); set for the duration of deim-edge's calls, then put back as it was."""
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = before
