"""What the harness times: a deim-edge artifact through Detector (preprocess, inference, decode), or any
other ONNX model (a YOLO, say) through ONNX Runtime alone, fed random inputs of its own shapes."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..errors import ConfigError, ModelFileError
from ..formats import FORMATS, format_of, get_format
from ..preprocess import load_image
from ..runtimes import runtime_for, runtime_options

OURS, FOREIGN = "deim-edge", "foreign"
# seconds of (preprocess, inference, decode) of one call; None where a candidate has no such stage
Timing = tuple[float | None, float, float | None]
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class ArtifactSpec:
    """One artifact named on the command line: `path`, or `path@backend` to choose its runtime."""

    path: Path
    backend: str | None = None

    @property
    def name(self) -> str:
        return self.path.name + (f"@{self.backend}" if self.backend else "")

    @classmethod
    def parse(cls, text: str | os.PathLike) -> ArtifactSpec:
        """ModelFileError for a file type no runtime reads (the runtime is checked here, before any timing)."""
        text = os.fspath(text)
        head, sep, tail = text.rpartition("@")
        backend = None
        if sep and any(tail.lower() in f.names for f in FORMATS):
            text, backend = head, tail
        if backend is None:
            try:
                format_of(text)
            except ModelFileError as e:
                raise ModelFileError(f"{e}; the benchmark also takes PATH@BACKEND, a backend one of: "
                                     f"{', '.join(f.runtime for f in FORMATS)}") from e
        return cls(Path(text), backend)


class Candidate(Protocol):
    """A loaded model the harness can call: `prepare(batch)` returns a function that runs one call and
    returns its Timing."""

    kind: str
    runtime: str
    fixed_batch: int | None  # the only batch size the model takes, or None for any
    notes: list[str]

    def describe(self) -> dict[str, Any]: ...

    def prepare(self, batch: int) -> Callable[[], Timing]: ...


class DetectorCandidate:
    """A deim-edge artifact: each call turns BGR images into Detections, timed per stage."""

    kind = OURS

    def __init__(self, spec: ArtifactSpec, threads: int | None, images: list[np.ndarray], conf: float) -> None:
        from ..detector import Detector

        self.notes: list[str] = []
        options = thread_option(runtime_for(spec.path, spec.backend), threads, self.notes)
        self.detector = Detector(spec.path, backend=spec.backend, conf=conf, **options)
        self.runtime = self.detector.runtime.name
        # what the runtime runs float ops in, where it says (OpenVINO: bf16 for fp16 and int8 IRs on bf16 CPUs)
        self.float_precision = getattr(self.detector.runtime, "float_precision", None)
        self.fixed_batch = self.detector.metadata.batch
        self.images = images

    def describe(self) -> dict[str, Any]:
        return asdict(self.detector.metadata)

    def prepare(self, batch: int) -> Callable[[], Timing]:
        images = [self.images[i % len(self.images)] for i in range(batch)]
        det = self.detector

        def call() -> Timing:
            t0 = time.perf_counter()
            inputs, transforms = det.preprocess([load_image(image) for image in images])
            t1 = time.perf_counter()
            outputs = det.infer(inputs)
            t2 = time.perf_counter()
            det.postprocess(outputs, transforms)
            return t1 - t0, t2 - t1, time.perf_counter() - t2

        return call


class ForeignOnnxCandidate:
    """An ONNX model without deim-edge metadata: its raw session.run on random inputs of its input shapes
    (symbolic batch dimensions take the batch size, other symbolic dimensions `imgsz`)."""

    kind = FOREIGN
    runtime = "onnxruntime"

    def __init__(self, spec: ArtifactSpec, threads: int | None, imgsz: int) -> None:
        from ..runtimes.onnxruntime import ort_session

        self.session = ort_session(spec.path, threads)  # ModelFileError when it cannot load
        self.inputs = self.session.get_inputs()
        self.imgsz = imgsz
        self.notes = ["no deim-edge metadata: raw inference on random inputs"]
        first_dims = {i.shape[0] if i.shape else None for i in self.inputs}
        first = first_dims.pop() if len(first_dims) == 1 else None
        self.fixed_batch = first if isinstance(first, int) and first > 0 else None

    def describe(self) -> dict[str, Any]:
        return {"inputs": {i.name: {"shape": [d if isinstance(d, int) else str(d) for d in i.shape], "type": i.type}
                           for i in self.inputs},
                "outputs": [o.name for o in self.session.get_outputs()]}

    def prepare(self, batch: int) -> Callable[[], Timing]:
        rng = np.random.default_rng(0)
        feed = {}
        for i in self.inputs:
            if i.type not in ORT_TYPES:
                raise ConfigError(f"input {i.name!r} has type {i.type}, which the benchmark cannot feed")
            shape = [d if isinstance(d, int) and d > 0 else (batch if axis == 0 else self.imgsz)
                     for axis, d in enumerate(i.shape)]
            dtype = ORT_TYPES[i.type]
            if np.issubdtype(dtype, np.floating):
                feed[i.name] = rng.random(shape, dtype=np.float32).astype(dtype)
            else:  # sizes, counts: the image size is the likeliest meaningful value
                feed[i.name] = np.full(shape, self.imgsz, dtype)
        session = self.session

        def call() -> Timing:
            t0 = time.perf_counter()
            session.run(None, feed)
            return None, time.perf_counter() - t0, None

        return call


def load_candidate(spec: ArtifactSpec, threads: int | None, images: list[np.ndarray], conf: float,
                   imgsz: int) -> Candidate:
    """The artifact as a Candidate; an ONNX file without deim-edge metadata becomes a ForeignOnnxCandidate."""
    try:
        return DetectorCandidate(spec, threads, images, conf)
    except ModelFileError as ours:
        if runtime_for(spec.path, spec.backend) != "onnxruntime" or not spec.path.is_file():
            raise
        try:
            return ForeignOnnxCandidate(spec, threads, imgsz)
        except ModelFileError:
            raise ours from None


def thread_option(runtime: str, threads: int | None, notes: list[str]) -> dict[str, Any]:
    """{"threads": threads} when the runtime takes a thread count; else {} and a note saying so."""
    if threads is None:
        return {}
    if "threads" in runtime_options(get_format(runtime)):
        return {"threads": threads}
    notes.append(f"{runtime} takes no thread count: runtime default")
    return {}
