"""TensorRT on a CUDA GPU (Jetson, T4, ...): the runtime of deim-edge engines, raw engines with a metadata.json
beside them, and deim-edge ONNX files and bundles, whose engines are built on first use and cached per machine."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelFileError
from ..formats.onnx import read_onnx_metadata
from ..formats.tensorrt import (FORMAT, BuildOptions, engine_metadata, read_bundle, read_engine_file,
                                write_engine_file)
from ..metadata import OUTPUT_NAMES, ArtifactMetadata
from .build import build_engine, check_version, import_tensorrt
from .cuda import DeviceInfo, open_cuda
from .fp32 import FP32_RULES_VERSION


class TensorrtRuntime:
    """A TensorRT engine on CUDA device `device`, with its metadata.

    path: a deim-edge .engine; a raw engine with metadata.json (or <name>.json) beside it; a deim-edge
    .onnx (with backend="tensorrt") or a <name>.trt bundle, whose engine is built once and cached in
    cache_dir (default: $DEIM_EDGE_CACHE/engines or ~/.cache/deim-edge/engines), keyed on the TensorRT
    version, GPU, precision and ONNX bytes. precision, workspace_gb, max_batch, dla_core: how to build
    those (default: the bundle's options; for an ONNX file its metadata's precision, fp32 for plain exports).
    """

    name = "tensorrt"

    def __init__(self, path: Path, device: int = 0, precision: str | None = None, workspace_gb: float | None = None,
                 max_batch: int | None = None, dla_core: int | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        path = Path(path)
        build = {k: v for k, v in {"precision": precision, "workspace_gb": workspace_gb, "max_batch": max_batch,
                                   "dla_core": dla_core}.items() if v is not None}
        source = _read_source(path, build)  # no tensorrt needed: file errors come first
        trt = import_tensorrt()
        check_version(trt.__version__, source.options.precision if source.options else source.metadata.precision)
        self.cuda = open_cuda(device)
        try:
            if source.onnx is not None:  # an ONNX file or a bundle: the cached engine for this machine
                path = cached_engine(*source.onnx, source.metadata, source.options, self.cuda.info, trt.__version__,
                                     Path(cache_dir) if cache_dir is not None else None)
                source = _read_source(path, {})
            if source.header is not None:
                _check_built_here(source.header, path, trt.__version__, self.cuda.info)
            self.metadata, self.path = source.metadata, path
            self._load(trt, source.engine, path)
        except BaseException:
            self.close()
            raise

    def _load(self, trt, engine: bytes, path: Path) -> None:  # noqa: ANN001
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise ModelFileError(f"TensorRT {trt.__version__} cannot load {path}: engines run only with the TensorRT "
                                 f"version and GPU model that built them (see the messages above); rebuild it here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if self.metadata.output not in OUTPUT_NAMES:
            raise ModelFileError(f"{path}: output layout {self.metadata.output!r} is not one a TensorRT engine of "
                                 f"deim-edge has ({', '.join(OUTPUT_NAMES)})")
        expected = OUTPUT_NAMES[self.metadata.output]
        if len(inputs) != 1 or not set(expected) <= set(outputs):
            raise ModelFileError(f"{path}: the engine's inputs {inputs} and outputs {outputs} are not a deim-edge "
                                 f"{self.metadata.output} model's (one input; outputs {', '.join(expected)})")
        self.input_name, self.output_names = inputs[0], list(expected)
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.dynamic = shape[0] == -1
        if self.dynamic:
            self.max_batch = int(tuple(self.engine.get_tensor_profile_shape(self.input_name, 0)[2])[0])
            self.context.set_input_shape(self.input_name, (self.max_batch, *shape[1:]))
        else:
            self.max_batch = int(shape[0])
        # buffers for the largest batch, bound once
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in [self.input_name, *outputs]}
        self._device = {}
        for name in [self.input_name, *outputs]:
            size = int(np.prod(tuple(self.context.get_tensor_shape(name)))) * self._dtypes[name].itemsize
            self._device[name] = self.cuda.alloc(size)
            self.context.set_tensor_address(name, self._device[name])
        self._input_shape = shape[1:]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        images = np.ascontiguousarray(images, dtype=self._dtypes[self.input_name])
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self._input_shape):
            raise ConfigError(f"this engine takes images of shape [B, {', '.join(map(str, self._input_shape))}], "
                              f"got {list(images.shape)}")
        if not self.dynamic:
            if images.shape[0] != self.max_batch:
                raise ConfigError(f"this engine takes batches of exactly {self.max_batch} images, "
                                  f"got {images.shape[0]}")
            return self._run(images)
        chunks = [self._run(images[i:i + self.max_batch]) for i in range(0, images.shape[0], self.max_batch)]
        return chunks[0] if len(chunks) == 1 else {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def _run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self.dynamic and not self.context.set_input_shape(self.input_name, images.shape):
            raise ConfigError(f"the engine cannot take a batch of shape {list(images.shape)} (its profile: batch 1 "
                              f"to {self.max_batch})")
        self.cuda.upload(self._device[self.input_name], images)
        if not self.context.execute_async_v3(self.cuda.stream):
            raise ModelFileError("TensorRT failed to run the engine (execute_async_v3 returned False)")
        outputs = {}
        for name in self.output_names:
            outputs[name] = np.empty(tuple(self.context.get_tensor_shape(name)), self._dtypes[name])
            self.cuda.download(outputs[name], self._device[name])
        self.cuda.synchronize()
        return {name: (a.astype(np.int64) if name == "labels" else a.astype(np.float32, copy=False))
                for name, a in outputs.items()}

    def close(self) -> None:
        """Free the GPU buffers and the stream (also done when the runtime is garbage collected)."""
        for attr in ("context", "engine"):
            self.__dict__.pop(attr, None)
        cuda = self.__dict__.pop("cuda", None)
        if cuda is not None:
            cuda.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass


@dataclass
class _Source:
    """What a path holds: a built engine (with its header, or a raw one with metadata from a file beside
    it), or the ONNX bytes of an engine to build (from an .onnx file or a bundle) with its build options."""

    metadata: ArtifactMetadata
    engine: bytes | None = None
    header: dict[str, Any] | None = None
    onnx: tuple[Path, bytes] | None = None
    options: BuildOptions | None = None


def _read_source(path: Path, build: dict[str, Any]) -> _Source:
    """The _Source at `path`; ModelFileError for anything that is not a TensorRT engine, bundle or deim-edge ONNX."""
    if path.is_dir():
        bundle = read_bundle(path)
        return _Source(bundle.metadata, onnx=(bundle.onnx, bundle.onnx.read_bytes()),
                       options=dataclasses.replace(bundle.options, **build))
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if path.suffix.lower() == ".onnx":
        onnx = path.read_bytes()
        try:
            metadata = read_onnx_metadata(onnx)
        except ModelFileError as e:
            raise ModelFileError(f"{path}: {e}") from None
        if metadata is None:
            raise ModelFileError(f"{path} has no deim-edge metadata; export it with python -m deim_edge.export "
                                 f"(official DEIMv2 ONNX files take a second input that deim-edge engines do not)")
        return _Source(metadata, onnx=(path, onnx), options=BuildOptions(**{"precision": metadata.precision, **build}))
    if build:
        raise ConfigError(f"{', '.join(build)} apply when building an engine (from an .onnx or a .trt bundle); "
                          f"{path.name} is built already")
    header, engine = read_engine_file(path)
    return _Source(engine_metadata(path, header), engine, header)


def _check_built_here(header: dict[str, Any], path: Path, trt_version: str, device: DeviceInfo) -> None:
    """ModelFileError when an engine's header says it was built for another TensorRT or GPU."""
    built_trt, built = header.get("tensorrt"), header.get("device") or {}
    cc = built.get("compute_capability")
    if built_trt != trt_version or (cc is not None and cc != device.compute_capability):
        raise ModelFileError(
            f"{path} was built with TensorRT {built_trt} for {built.get('name')} (compute {cc}); this machine has "
            f"TensorRT {trt_version} and {device.name} (compute {device.compute_capability}). Engines run only where "
            f"they were built: rebuild it here (python -m deim_edge.export --build-engine BUNDLE, or "
            f"Detector('model.onnx', backend='tensorrt'))")


# ---------------------------------------------------------------------------------------------- the engine cache

def cache_dir() -> Path:
    """Where engines built from ONNX files are kept: $DEIM_EDGE_CACHE/engines, else
    ~/.cache/deim-edge/engines (or $XDG_CACHE_HOME/deim-edge/engines)."""
    root = os.environ.get("DEIM_EDGE_CACHE")
    if root:
        return Path(root).expanduser() / "engines"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "deim-edge" / "engines"


def engine_cache_key(onnx_sha256: str, options: BuildOptions, tensorrt_version: str, device: DeviceInfo) -> str:
    """The key of a cached engine: it changes with the ONNX bytes, the precision and batch profile, the
    TensorRT version, the GPU (name and compute capability), and the FP32 rules."""
    record = {"onnx_sha256": onnx_sha256, "precision": options.precision, "dla_core": options.dla_core,
              "max_batch": options.max_batch, "tensorrt": tensorrt_version, "gpu": device.name,
              "compute_capability": device.compute_capability, "format": FORMAT, "fp32_rules": FP32_RULES_VERSION}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def cached_engine(onnx_path: Path, onnx: bytes, metadata: ArtifactMetadata, options: BuildOptions,
                  device: DeviceInfo, tensorrt_version: str, directory: Path | None = None) -> Path:
    """The cached engine of ONNX bytes for this TensorRT and GPU (the current CUDA device), built and cached
    on first use."""
    key = engine_cache_key(hashlib.sha256(onnx).hexdigest(), options, tensorrt_version, device)
    path = Path(directory or cache_dir()) / f"{onnx_path.stem}-{options.precision}-{key[:16]}.engine"
    if not path.is_file():
        warnings.warn(f"building a TensorRT {options.precision} engine for {onnx_path.name} on {device.name} "
                      f"(first use only, minutes on a Jetson); it is cached as {path}", stacklevel=3)
        write_engine_file(path, *build_engine(onnx, metadata, options, device, gate=False))
    return path
