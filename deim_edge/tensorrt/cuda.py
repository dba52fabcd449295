"""One CUDA device for TensorRT: device memory, host copies and one stream, through cuda-python's runtime API,
or through torch's CUDA when cuda-python is missing and torch has CUDA. Neither is imported until a device is
opened."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CudaUnavailableError, MissingDependencyError

CUDA_INSTALL = ("pip install 'deim-edge[tensorrt]' (it installs cuda-python; on Jetson pick the version of "
                "JetPack's CUDA, e.g. pip install 'cuda-python==12.6.*')")
NO_GPU = "TensorRT engines run on an NVIDIA GPU with its driver (Jetson, T4, ...)"


@dataclass(frozen=True)
class DeviceInfo:
    """The CUDA device an engine is built for: engines run only where TensorRT and GPU match."""

    name: str
    compute_capability: str  # "8.7"


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


def _check_index(device: int, count: int) -> None:
    if not 0 <= device < count:
        raise CudaUnavailableError(f"CUDA device {device} does not exist; this machine has {count} (0 to {count - 1})")


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
            raise CudaUnavailableError(f"no CUDA GPU found ({self._message(err)}); {NO_GPU}. Without one use the "
                                       f".onnx with ONNX Runtime, or build the engine on the device")
        _check_index(device, count)
        self._check(cudart.cudaSetDevice(device), "cudaSetDevice")
        props = self._check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        self.info = DeviceInfo(name.rstrip("\x00").strip(), f"{props.major}.{props.minor}")
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
            raise CudaUnavailableError(f"no CUDA GPU found (torch.cuda.is_available() is False); {NO_GPU}")
        _check_index(device, torch.cuda.device_count())
        self.torch = torch
        self.device = torch.device("cuda", device)
        torch.cuda.set_device(self.device)
        major, minor = torch.cuda.get_device_capability(self.device)
        self.info = DeviceInfo(torch.cuda.get_device_name(self.device), f"{major}.{minor}")
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
