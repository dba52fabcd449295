"""ONNX Runtime static quantization of a deim-edge ONNX graph into QDQ form (QuantizeLinear/DequantizeLinear
pairs around the INT8 nodes), calibrated once and quantized as often as the sensitivity analysis asks.

Two styles of the same graph:
- "ort" for ONNX Runtime and OpenVINO on CPUs: uint8 asymmetric activations, int8 per-channel weights
  (what x86 without VNNI runs fastest);
- "trt" for TensorRT's explicit-precision INT8: int8 symmetric activations and per-channel symmetric weights,
  Q/DQ only around convolutions and matrix products, which TensorRT fuses.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx

from ..errors import ConfigError, MissingDependencyError
from ..progress import Progress, step
from .recipe import TRT_OP_TYPES
from .settings import METHODS

STYLES = ("ort", "trt")
INPUT_NAME = "images"


def _ort_quantization():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise MissingDependencyError("INT8 ONNX export needs onnxruntime: pip install 'deim-edge[onnx]'") from None
    if "calibration_cache_path" not in inspect.signature(quantization.quantize_static).parameters:
        import onnxruntime

        raise MissingDependencyError(f"INT8 export needs onnxruntime >= 1.31 (calibration cache); this is "
                                     f"{onnxruntime.__version__}: pip install -U onnxruntime")
    return quantization


class QdqQuantizer:
    """Calibrates `proto` on `batches` once, on the first `quantize` (activation ranges cached), then
    `quantize(nodes)` returns the QDQ graph with just those nodes in INT8, in seconds. Use as a context manager
    (it owns a temporary folder)."""

    def __init__(self, proto: onnx.ModelProto, batches: Sequence[np.ndarray], op_types: Sequence[str],
                 method: str = "minmax", style: str = "ort", progress: bool = True) -> None:
        if method not in METHODS:
            raise ConfigError(f"unknown calibration method {method!r}; choose one of: {', '.join(METHODS)}")
        if style not in STYLES:
            raise ConfigError(f"unknown QDQ style {style!r}; choose one of: {', '.join(STYLES)}")
        self.q = _ort_quantization()
        self.method, self.style, self.progress = method, style, progress
        self.op_types = [t for t in op_types if style == "ort" or t in TRT_OP_TYPES]
        self._folder = tempfile.TemporaryDirectory(prefix="deim-edge-qdq-")
        folder = Path(self._folder.name)
        self.model_path, self.cache = folder / "fp32.onnx", folder / "ranges.json"
        onnx.save(proto, str(self.model_path))
        self.metadata_props = list(proto.metadata_props)
        self.batches, self._calibrated = batches, False

    def __enter__(self) -> QdqQuantizer:
        return self

    def __exit__(self, *exc) -> None:
        self._folder.cleanup()

    def quantize(self, nodes: Sequence[str]) -> onnx.ModelProto:
        """The QDQ graph with `nodes` (names) in INT8 and the rest float, the input's metadata kept."""
        if not nodes:
            raise ConfigError("nothing to quantize: every layer is kept float")
        if not self._calibrated:
            step(f"calibrating ({self.method}, {len(self.batches)} images)")
            self._run(self.op_types, _Reader(self.batches, self.progress))
            self._calibrated = True
        out = Path(self._folder.name) / "int8.onnx"
        self._run(self.op_types, None, out, list(nodes))
        proto = onnx.load(str(out))
        del proto.metadata_props[:]
        proto.metadata_props.extend(self.metadata_props)
        return proto

    def _run(self, op_types: list[str], reader, out: Path | None = None, nodes: list[str] | None = None) -> None:
        q = self.q
        symmetric = self.style == "trt"
        with _quiet_ort_logging():
            q.quantize_static(
                str(self.model_path), str(out or Path(self._folder.name) / "calibrated.onnx"), reader,
                quant_format=q.QuantFormat.QDQ, op_types_to_quantize=op_types, per_channel=True,
                activation_type=q.QuantType.QInt8 if symmetric else q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8, nodes_to_quantize=nodes,
                calibrate_method={"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                                  "percentile": q.CalibrationMethod.Percentile}[self.method],
                extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True},
                calibration_cache_path=str(self.cache))


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over preprocessed batches, with a progress counter."""

    def __init__(self, batches: Sequence[np.ndarray], progress: bool) -> None:
        self.batches, self.index = batches, 0
        self.bar = Progress(len(batches), "calibration pass") if progress else None

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        if self.bar is not None:
            self.bar.update()
        return {INPUT_NAME: self.batches[self.index - 1]}

    def __len__(self) -> int:
        return len(self.batches)


@contextlib.contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    """ONNX Runtime's quantizer logs advice ("consider pre-processing") at WARNING on the root logger."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
