"""OpenVINO: deim-edge IR files (.xml + .bin, metadata in the model's rt_info) and deim-edge ONNX files,
on a CPU, Intel GPU or NPU; synchronous `run` and, for video, in-order asynchronous `stream`."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ..errors import ConfigError, ModelFileError
from ..formats.openvino import import_openvino, metadata_of
from ..metadata import HALF_FLOAT_OPS, OUTPUT_NAMES
from . import check_count, model_file

T = TypeVar("T")
HINTS = ("latency", "throughput")
PRECISIONS = ("f32", "f16", "bf16")


class OpenVinoRuntime:
    """A deim-edge OpenVINO IR (.xml beside its .bin) or ONNX file, compiled for one device.

    device: "CPU", "GPU", "NPU", "AUTO", ... (see openvino.Core().available_devices); hint:
    "latency" (one image at a time) or "throughput" (several requests in flight, see `stream`);
    precision: the precision of the float ops, "f32", "f16" or "bf16". Default on a CPU: for fp16 IRs the
    fastest the CPU has, OpenVINO's own choice (bf16 with AVX512-BF16 or AMX, f16 on ARM with fp16 arithmetic,
    else f32); the same for int8 IRs whose export measured it within their accuracy budget (metadata
    extra["half_float_ops"]); f32 otherwise, so fp32 detections equal the other backends'. `float_precision`
    says which ran;
    threads: CPU inference threads; streams: parallel execution streams (default: the hint's choice).
    """

    name = "openvino"

    def __init__(self, path: Path, device: str = "CPU", hint: str = "latency", precision: str | None = None,
                 threads: int | None = None, streams: int | None = None) -> None:
        ov = import_openvino()
        path = Path(path)
        if hint not in HINTS:
            raise ConfigError(f"hint must be one of {', '.join(HINTS)}, got {hint!r}")
        if precision is not None and precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)} (or None), got {precision!r}")
        threads, streams = check_count("threads", threads), check_count("streams", streams)
        core = ov.Core()
        model = _read_model(core, model_file(path))
        self.metadata = metadata_of(model, path)
        half_measured = self.metadata.precision == "int8" and HALF_FLOAT_OPS in self.metadata.extra
        if precision is None and device.upper() == "CPU" and self.metadata.precision != "fp16" and not half_measured:
            precision = "f32"  # a CPU with bf16 units would run an FP32 IR in bf16 (Atto @320: 0.3 AP lower)
        config: dict[str, Any] = {"PERFORMANCE_HINT": hint.upper()}
        if precision is not None:
            config["INFERENCE_PRECISION_HINT"] = precision
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if streams:
            config["NUM_STREAMS"] = streams
        try:
            self.compiled = core.compile_model(model, device, config)
        except RuntimeError as e:
            raise ConfigError(f"OpenVINO cannot compile {path.name} for {device!r} with {config}: "
                              f"{_reason(e)} (devices here: {', '.join(core.available_devices)})") from e
        names = [o.get_any_name() for o in self.compiled.outputs]
        if sorted(names) != sorted(OUTPUT_NAMES[self.metadata.output]):
            raise ModelFileError(f"{path} has outputs {names}, not the {self.metadata.output} outputs "
                                 f"{list(OUTPUT_NAMES[self.metadata.output])} its metadata names")
        self.output_names = names
        self.float_precision = _precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.request = self.compiled.create_infer_request()
        self._pool: list = []  # requests for `stream`, made on first use

    @property
    def num_requests(self) -> int:
        """How many requests `stream` keeps in flight by default: the device's optimum for the hint."""
        return int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images [B,3,H,W] float32 -> the metadata's outputs (float32, labels int64)."""
        self.request.infer({0: np.ascontiguousarray(images, dtype=np.float32)}, share_inputs=True)
        return self._outputs(self.request)

    def stream(self, items: Iterable[tuple[np.ndarray, T]], requests: int | None = None
               ) -> Iterator[tuple[dict[str, np.ndarray], T]]:
        """Asynchronous inference over (images, userdata) pairs, e.g. video frames with what the caller
        needs to use their detections; yields (outputs, userdata) in input order, as `run` would.

        Keeps `requests` inferences in flight (default: num_requests; open the runtime with
        hint="throughput" for more than one on a CPU). Images are copied when submitted, so a
        reused buffer (Detector.preprocess) may be refilled at once.
        """
        n = self.num_requests if requests is None else int(requests)
        if n < 1:
            raise ConfigError(f"requests must be at least 1, got {requests}")
        while len(self._pool) < n:
            self._pool.append(self.compiled.create_infer_request())
        pending: deque = deque()  # (request, userdata), oldest first; request i runs item i mod n
        try:
            for i, (images, userdata) in enumerate(items):
                if len(pending) == n:
                    yield self._finish(*pending.popleft())
                request = self._pool[i % n]
                request.start_async({0: np.ascontiguousarray(images, dtype=np.float32)}, share_inputs=False)
                pending.append((request, userdata))
            while pending:
                yield self._finish(*pending.popleft())
        finally:  # a consumer that stops early: let the requests still running finish
            for request, _ in pending:
                request.wait()

    def _finish(self, request, userdata: T) -> tuple[dict[str, np.ndarray], T]:
        request.wait()
        return self._outputs(request), userdata

    def _outputs(self, request) -> dict[str, np.ndarray]:
        outputs = {}
        for i, name in enumerate(self.output_names):
            data = request.get_output_tensor(i).data
            outputs[name] = data.astype(np.int64 if name == "labels" else np.float32)  # a copy: requests are reused
        return outputs


def _read_model(core, path: Path):
    if path.suffix.lower() == ".xml":
        with open(path, "rb") as f:
            if b"<net" not in f.read(4096):  # else OpenVINO tries every format it knows, noisily
                raise ModelFileError(f"{path} is not an OpenVINO IR (.xml); export one with "
                                     f"python -m deim_edge.export --target openvino")
        if not path.with_suffix(".bin").is_file():
            raise ModelFileError(f"{path} needs its weights file {path.with_suffix('.bin').name} beside it")
    try:
        return core.read_model(os.fspath(path))
    except RuntimeError as e:
        raise ModelFileError(f"{path} is not a loadable OpenVINO model (IR .xml + .bin, or .onnx): "
                             f"{_reason(e)}") from e


def half_precision_options() -> dict[str, str] | None:
    """The runtime options that run float ops in this CPU's half precision ({"precision": "bf16"} with AVX512-BF16
    or AMX, "f16" on ARM with fp16 arithmetic: what OpenVINO picks by itself), or None where it has none."""
    name = _precision_name(import_openvino().Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))
    return {"precision": name} if name in ("bf16", "f16") else None


def _precision_name(element_type) -> str | None:
    """OpenVINO's element type (Type.bf16, "f32", ...) as one of PRECISIONS; None for anything else."""
    name = str(getattr(element_type, "get_type_name", lambda: element_type)()).lower()
    return name if name in PRECISIONS else None


def _reason(error: Exception) -> str:
    """The message of an OpenVINO error without the source locations it is wrapped in."""
    lines = [ln.strip() for ln in str(error).splitlines()
             if ln.strip() and not ln.startswith(("Exception from ", "Check '"))]
    return lines[-1] if lines else str(error).strip() or type(error).__name__
