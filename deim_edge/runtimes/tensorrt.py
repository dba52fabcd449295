"""TensorRT on a CUDA GPU (Jetson, T4, ...): deim-edge engines (metadata in their header), raw engines with
a metadata.json beside them, and, built once per machine and cached, deim-edge ONNX files
(backend="tensorrt") and TensorRT bundles (<name>.trt/ folders).

Needs tensorrt and a CUDA GPU; device memory and the stream come from cuda-python, or from torch when
cuda-python is missing and torch has CUDA. One CUDA stream per runtime; buffers are allocated once, for
the largest batch.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, CudaUnavailableError, MissingDependencyError, ModelFileError
from ..metadata import OUTPUT_NAMES, ArtifactMetadata
from .tensorrt_engine import (METADATA_FILE, BuildOptions, DeviceInfo, build_engine,
                              check_version, engine_cache_key, header_metadata, import_tensorrt, onnx_metadata,
                              read_bundle, read_engine_file, write_engine_file)

CUDA_INSTALL = ("pip install 'deim-edge[tensorrt]' (it installs cuda-python; on Jetson pick the version of "
                "JetPack's CUDA, e.g. pip install 'cuda-python==12.6.*')")


def cache_dir() -> Path:
    """Where engines built from ONNX files are kept: $DEIM_EDGE_CACHE/engines, else
    ~/.cache/deim-edge/engines (or $XDG_CACHE_HOME/deim-edge/engines)."""
    root = os.environ.get("DEIM_EDGE_CACHE")
    if root:
        return Path(root).expanduser() / "engines"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "deim-edge" / "engines"


# ---------------------------------------------------------------------------------------------- CUDA

def _import_cudart():
    """cuda-python's runtime module (cuda.bindings.runtime from 12.8 on, cuda.cudart before), or None."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            return None
    return cudart


class _CudaPython:
    """Device memory, copies and one stream through cuda-python's runtime API."""

    def __init__(self, cudart, device: int) -> None:  # noqa: ANN001
        self.rt = cudart
        self._stream, self._allocations = None, []
        try:
            err, count = cudart.cudaGetDeviceCount()
        except Exception as e:  # noqa: BLE001 -- cuda-python without a CUDA runtime library to load
            raise CudaUnavailableError(f"cuda-python cannot reach CUDA ({type(e).__name__}: {e})") from e
        if err != cudart.cudaError_t.cudaSuccess or count == 0:
            raise CudaUnavailableError(f"no CUDA GPU found ({self._message(err)}); TensorRT engines run on an NVIDIA "
                                       f"GPU with its driver (Jetson, T4, ...). Without one use the .onnx with "
                                       f"ONNX Runtime, or build the engine on the device")
        if not 0 <= device < count:
            raise CudaUnavailableError(f"CUDA device {device} does not exist; this machine has {count} "
                                       f"(0 to {count - 1})")
        self._check(cudart.cudaSetDevice(device), "cudaSetDevice")
        props = self._check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        self.info = DeviceInfo(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}", device)
        self._stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.stream = int(self._stream)

    def _message(self, err) -> str:  # noqa: ANN001
        try:
            return self.rt.cudaGetErrorString(err)[1].decode()
        except Exception:  # noqa: BLE001
            return str(err)

    def _check(self, result, what: str):  # noqa: ANN001
        err, *rest = result
        if err != self.rt.cudaError_t.cudaSuccess:
            raise CudaUnavailableError(f"{what} failed: {self._message(err)}")
        return rest[0] if len(rest) == 1 else rest

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._check(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self._allocations.append(ptr)
        return ptr

    def upload(self, ptr: int, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, kind, self._stream), "cudaMemcpy")

    def download(self, array: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(array.ctypes.data, ptr, array.nbytes, kind, self._stream), "cudaMemcpy")

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for ptr in self._allocations:
            self.rt.cudaFree(ptr)
        self._allocations.clear()
        if self._stream is not None:
            self.rt.cudaStreamDestroy(self._stream)
            self._stream = None


class _TorchCuda:
    """The same through torch's CUDA tensors and stream, where cuda-python is missing."""

    def __init__(self, torch, device: int) -> None:  # noqa: ANN001
        if not torch.cuda.is_available():
            raise CudaUnavailableError("no CUDA GPU found (torch.cuda.is_available() is False); TensorRT engines run "
                                       "on an NVIDIA GPU with its driver (Jetson, T4, ...)")
        count = torch.cuda.device_count()
        if not 0 <= device < count:
            raise CudaUnavailableError(f"CUDA device {device} does not exist; this machine has {count} "
                                       f"(0 to {count - 1})")
        self.torch = torch
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        major, minor = torch.cuda.get_device_capability(self.device)
        self.info = DeviceInfo(torch.cuda.get_device_name(self.device), f"{major}.{minor}", device)
        self._stream = torch.cuda.Stream(self.device)
        self.stream = int(self._stream.cuda_stream)
        self._buffers: dict[int, Any] = {}

    def alloc(self, nbytes: int) -> int:
        buffer = self.torch.empty(max(int(nbytes), 1), dtype=self.torch.uint8, device=self.device)
        self._buffers[buffer.data_ptr()] = buffer
        return buffer.data_ptr()

    def upload(self, ptr: int, array: np.ndarray) -> None:
        with self.torch.cuda.stream(self._stream):
            self._buffers[ptr][: array.nbytes].copy_(self.torch.from_numpy(array.reshape(-1).view(np.uint8)))

    def download(self, array: np.ndarray, ptr: int) -> None:
        with self.torch.cuda.stream(self._stream):
            self.torch.from_numpy(array.reshape(-1).view(np.uint8)).copy_(self._buffers[ptr][: array.nbytes])

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        self._buffers.clear()


def open_cuda(device: int = 0):
    """The CUDA device `device` (made current) with one stream: through cuda-python, else torch.
    MissingDependencyError when neither is installed, CudaUnavailableError without a GPU."""
    cudart = _import_cudart()
    if cudart is not None:
        return _CudaPython(cudart, int(device))
    try:
        import torch
    except ImportError:
        raise MissingDependencyError(f"the TensorRT backend needs cuda-python for GPU memory: {CUDA_INSTALL}") from None
    return _TorchCuda(torch, int(device))


def cuda_status(device: int = 0) -> str | None:
    """None when tensorrt is installed and CUDA device `device` is usable; otherwise what is missing."""
    try:
        trt = import_tensorrt()
        cuda = open_cuda(device)
    except (MissingDependencyError, CudaUnavailableError) as e:
        return str(e)
    cuda.close()
    del trt
    return None


# ---------------------------------------------------------------------------------------------- building

def build_engine_file(onnx: bytes, metadata: ArtifactMetadata, options: BuildOptions, out: Path,
                      device: int = 0, gate: bool = True) -> Path:
    """Build the engine of ONNX bytes on CUDA device `device` and write it, header included, to `out`
    (gate: check the TensorRT version first, see build_engine)."""
    cuda = open_cuda(device)
    try:
        header, engine = build_engine(onnx, metadata, options, cuda.info, gate=gate)
    finally:
        cuda.close()
    return write_engine_file(out, header, engine)


def build_bundle(bundle: Path, out: Path | None = None, device: int = 0) -> Path:
    """Build the engine of a TensorRT bundle (`<name>.trt/`) on this machine, as its build.json says; writes
    `out`, by default `<name>.engine` beside the bundle. Returns the path written."""
    b = read_bundle(Path(bundle))
    import_tensorrt()
    out = Path(out) if out is not None else b.engine
    if out.suffix.lower() not in (".engine", ".plan"):
        raise ConfigError(f"the engine file {out} must end with .engine (runtimes are chosen by file suffix)")
    return build_engine_file(b.onnx.read_bytes(), b.metadata, b.options, out, device)


def cached_engine(onnx_path: Path, onnx: bytes, metadata: ArtifactMetadata, options: BuildOptions, cuda,
                  trt_version: str, directory: Path | None = None) -> Path:
    """The cached engine of ONNX bytes for this TensorRT and GPU, built (and cached) on first use."""
    key = engine_cache_key(hashlib.sha256(onnx).hexdigest(), options, trt_version, cuda.info)
    path = Path(directory or cache_dir()) / f"{onnx_path.stem}-{options.precision}-{key[:16]}.engine"
    if not path.is_file():
        warnings.warn(f"building a TensorRT {options.precision} engine for {onnx_path.name} on {cuda.info.name} "
                      f"(first use only, minutes on a Jetson); it is cached as {path}", stacklevel=2)
        header, engine = build_engine(onnx, metadata, options, cuda.info, gate=False)
        write_engine_file(path, header, engine)
    return path


# ---------------------------------------------------------------------------------------------- running

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
                path = cached_engine(*source.onnx, source.metadata, source.options, self.cuda, trt.__version__,
                                     Path(cache_dir) if cache_dir is not None else None)
                source = _read_source(path, {})
            self.metadata = (source.metadata if source.header is None
                             else _check_header(source.header, path, trt.__version__, self.cuda.info))
            self.path = path
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

    metadata: ArtifactMetadata | None = None
    engine: bytes | None = None
    header: dict[str, Any] | None = None
    onnx: tuple[Path, bytes] | None = None
    options: BuildOptions | None = None


def _read_source(path: Path, build: dict[str, Any]) -> _Source:
    """The _Source at `path`; ModelFileError for anything that is not a TensorRT engine, bundle or deim-edge ONNX."""
    if path.is_dir():
        bundle = read_bundle(path)
        options = BuildOptions(**{**bundle.options.to_json(), **build})
        return _Source(bundle.metadata, onnx=(bundle.onnx, bundle.onnx.read_bytes()), options=options)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if path.suffix.lower() == ".onnx":
        onnx = path.read_bytes()
        try:
            metadata = onnx_metadata(onnx)
        except ModelFileError as e:
            raise ModelFileError(f"{path}: {e}") from None
        if metadata is None:
            raise ModelFileError(f"{path} has no deim-edge metadata; export it with python -m deim_edge.export "
                                 f"(official DEIMv2 ONNX files take a second input that deim-edge engines do not)")
        options = BuildOptions(**{"precision": metadata.precision, **build})
        return _Source(metadata, onnx=(path, onnx), options=options)
    if build:
        raise ConfigError(f"{', '.join(build)} apply when building an engine (from an .onnx or a .trt bundle); "
                          f"{path.name} is built already")
    header, engine = read_engine_file(path)
    if header is not None:
        return _Source(header_metadata(header), engine, header)
    beside = [p for p in (path.with_suffix(".json"), path.parent / METADATA_FILE) if p.is_file()]
    if not beside:
        raise ModelFileError(f"{path} is not a deim-edge TensorRT engine (no deim-edge header) and has no "
                             f"{METADATA_FILE} beside it. Build engines with python -m deim_edge.export "
                             f"--build-engine BUNDLE, or put the bundle's {METADATA_FILE} beside a trtexec engine")
    try:
        metadata = ArtifactMetadata.from_json(beside[0].read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelFileError(f"cannot read {beside[0]}: {e}") from e
    return _Source(metadata, engine)


def _check_header(header: dict[str, Any], path: Path, trt_version: str, device: DeviceInfo) -> ArtifactMetadata:
    """The artifact metadata of an engine; ModelFileError when its header says it was built for another
    TensorRT or GPU."""
    built_trt, built = header.get("tensorrt"), header.get("device") or {}
    cc = built.get("compute_capability")
    if built_trt != trt_version or (cc is not None and cc != device.compute_capability):
        raise ModelFileError(
            f"{path} was built with TensorRT {built_trt} for {built.get('name')} (compute {cc}); this machine has "
            f"TensorRT {trt_version} and {device.name} (compute {device.compute_capability}). Engines run only where "
            f"they were built: rebuild it here (python -m deim_edge.export --build-engine BUNDLE, or "
            f"Detector('model.onnx', backend='tensorrt'))")
    return header_metadata(header)
