"""Runtimes: one small protocol, one module per inference engine, chosen by file suffix or name.

A runtime loads an artifact, exposes its `metadata`, and maps a preprocessed batch
[B,3,H,W] float32 to outputs in the layout the metadata names (RAW or TOPK, see metadata.py).
Engines are imported only when their runtime is loaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import ModelFileError
from ..metadata import ArtifactMetadata


class Runtime(Protocol):
    """What Detector needs from an inference engine."""

    name: str
    metadata: ArtifactMetadata

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images [B,3,H,W] float32 -> RAW {'logits', 'boxes'} or TOPK {'scores', 'labels', 'boxes'}."""
        ...


# runtime name -> (module, class); the module imports its engine lazily and names its extra.
RUNTIMES = {
    "onnxruntime": ("deim_edge.runtimes.onnxruntime", "OnnxRuntime"),
    "openvino": ("deim_edge.runtimes.openvino", "OpenVinoRuntime"),
    "tflite": ("deim_edge.runtimes.tflite", "TfliteRuntime"),
    "coreml": ("deim_edge.runtimes.coreml", "CoremlRuntime"),
    "tensorrt": ("deim_edge.runtimes.tensorrt", "TensorrtRuntime"),
    "torch": ("deim_edge.runtimes.torch", "TorchRuntime"),
}
ALIASES = {"onnx": "onnxruntime", "ort": "onnxruntime", "ov": "openvino", "litert": "tflite", "trt": "tensorrt",
           "pytorch": "torch", "pth": "torch"}
SUFFIXES = {".onnx": "onnxruntime", ".xml": "openvino", ".tflite": "tflite", ".mlpackage": "coreml",
            ".mlmodel": "coreml", ".engine": "tensorrt", ".plan": "tensorrt",
            ".trt": "tensorrt", ".pth": "torch", ".pt": "torch"}


def runtime_for(path: str | Path, backend: str | None = None) -> str:
    """The runtime name for an artifact: `backend` when given, else by file suffix."""
    if backend is not None:
        name = ALIASES.get(backend.lower(), backend.lower())
        if name not in RUNTIMES:
            raise ModelFileError(f"unknown backend {backend!r}; choose one of: {', '.join(RUNTIMES)}")
        return name
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ModelFileError(f"cannot tell which runtime runs {str(path)!r} (suffix {suffix or 'none'}); "
                             f"known suffixes: {', '.join(SUFFIXES)}, or pass backend=")
    return SUFFIXES[suffix]


def load_runtime(path: str | Path, backend: str | None = None, **options) -> Runtime:
    """Open `path` with the runtime `backend` names or its suffix implies."""
    name = runtime_for(path, backend)
    if not Path(path).exists():
        raise ModelFileError(f"model file not found: {path}")
    module, cls = RUNTIMES[name]
    return getattr(importlib.import_module(module), cls)(Path(path), **options)
