"""The artifact formats: one record per kind of file deim-edge writes or runs. No torch, no engine imported here.

A record names the file suffixes, the runtime that runs the file (its name for `backend=`, its class, the
modules and pip extra it needs, where it can run), the module that reads and writes the metadata inside the file,
how closely a written file must reproduce the PyTorch model (per precision), and the export side's INT8 hooks.
Runtimes, export targets, the demo and the bench all read this table; a new format is one record here plus its
modules (runtime, metadata, export).
"""

from __future__ import annotations

import importlib
import importlib.util
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import ModelFileError
from ..metadata import ArtifactMetadata


SYSTEM_NAMES = {"Darwin": "macOS"}  # platform.system() -> what users call it


@dataclass(frozen=True)
class Check:
    """How closely a written artifact must reproduce the PyTorch model on a random input: the share of the
    model's top detections it finds again (same label, IoU >= min_iou) and, where set, the largest score or box
    difference of those pairs."""

    min_share: float
    max_diff: float | None = None
    top: int = 100
    min_iou: float = 0.9


@dataclass(frozen=True)
class Format:
    """One kind of artifact file and the runtime that runs it."""

    name: str
    suffixes: tuple[str, ...]  # the first is the one exports write
    runtime: str  # the runtime's name: backend=, bench tables
    runtime_class: str  # "module:Class", imported when an artifact is opened
    requires: tuple[str, ...]  # modules the runtime needs
    extra: str  # pip install 'deim-edge[<extra>]' provides them
    metadata: str | None = None  # module with read_metadata(path) and write_metadata(path, metadata)
    aliases: tuple[str, ...] = ()  # other names for the runtime in backend=
    checks: Mapping[str, Check] = field(default_factory=dict)  # precision -> the export's check; others: the gate's
    check_options: Mapping[str, Any] = field(default_factory=dict)  # runtime options of checks (1 thread, f32)
    int8: str | None = None  # "module:NAME" of the export's INT8 hooks (calibration.hooks.Int8Hooks)
    # "module:function" giving the runtime options that run float ops in this machine's half precision (None
    # where it has none): INT8 artifacts are also measured so, and allowed it when within their budget
    half: str | None = None
    system: str | None = None  # the only OS whose runtime runs it (platform.system())
    needs_gpu: bool = False  # an NVIDIA GPU

    @property
    def names(self) -> tuple[str, ...]:
        """What backend= may call its runtime: the runtime's name, the format's, the aliases."""
        return tuple(dict.fromkeys((self.runtime, self.name, *self.aliases)))

    def unavailable(self) -> str | None:
        """Why this machine cannot run the format's artifacts, or None when it can."""
        host = " on a Jetson or CUDA host" if self.needs_gpu else ""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            gpu = " and an NVIDIA GPU" if self.needs_gpu else ""
            return f"needs {', '.join(missing)}{gpu}: pip install 'deim-edge[{self.extra}]'{host}"
        if importlib.util.find_spec(self.runtime_class.split(":")[0]) is None:
            return f"this deim-edge build has no {self.runtime} runtime"
        if self.system is not None and platform.system() != self.system:
            system = SYSTEM_NAMES.get(self.system, self.system)
            return f"{self.runtime} runs only on {system} (this is {platform.system()})"
        if self.needs_gpu and not (shutil.which("nvidia-smi") or Path("/dev/nvidia0").exists()
                                   or Path("/etc/nv_tegra_release").exists()):
            return "no NVIDIA GPU here"
        return None

    def half_options(self) -> dict[str, Any] | None:
        """The runtime options for float ops in this machine's half precision, or None (see `half`)."""
        if self.half is None:
            return None
        module, function = self.half.split(":")
        return getattr(importlib.import_module(module), function)()

    def open(self, path: str | Path, **options: Any):
        """The runtime of this format for the artifact at `path` (runtimes.Runtime)."""
        module, cls = self.runtime_class.split(":")
        return getattr(importlib.import_module(module), cls)(Path(path), **options)

    def read_metadata(self, path: str | Path) -> ArtifactMetadata:
        """The deim-edge metadata inside the artifact at `path`, read without running it."""
        return self._metadata_module().read_metadata(Path(path))

    def write_metadata(self, path: str | Path, metadata: ArtifactMetadata) -> None:
        """Replace the deim-edge metadata inside the artifact at `path`."""
        self._metadata_module().write_metadata(Path(path), metadata)

    def _metadata_module(self):
        if self.metadata is None:
            raise ModelFileError(f"{self.name} files carry no deim-edge metadata")
        return importlib.import_module(self.metadata)


FP32_EXACT = Check(min_share=0.9, max_diff=1e-3)  # float32 everywhere: the same detections, to rounding
FORMATS: tuple[Format, ...] = (
    Format("onnx", (".onnx",), "onnxruntime", "deim_edge.runtimes.onnxruntime:OnnxRuntime", ("onnxruntime",), "onnx",
           metadata="deim_edge.formats.onnx", aliases=("ort",), checks={"fp32": FP32_EXACT},
           check_options={"threads": 1}, int8="deim_edge.export.onnx:INT8_HOOKS"),
    Format("openvino", (".xml",), "openvino", "deim_edge.runtimes.openvino:OpenVinoRuntime", ("openvino",),
           "openvino", metadata="deim_edge.formats.openvino", aliases=("ov",),
           # fp16 weights move scores a little; a broken file agrees on almost nothing
           # measured in the float precision the runtime picks on this CPU (fp16 IRs: bf16 where it has it)
           checks={"fp32": FP32_EXACT, "fp16": Check(min_share=0.8)}, check_options={"threads": 1},
           int8="deim_edge.export.openvino_int8:INT8_HOOKS", half="deim_edge.runtimes.openvino:half_precision_options"),
    Format("tflite", (".tflite",), "tflite", "deim_edge.runtimes.tflite:TfliteRuntime", (), "tflite",
           metadata="deim_edge.formats.tflite", aliases=("litert",),
           checks={"fp32": FP32_EXACT, "fp16": Check(min_share=0.8)}, check_options={"threads": 1},
           int8="deim_edge.export.tflite_int8:INT8_HOOKS"),
    # FP16 reorders near-tied scores (PyTorch FP16 keeps 90-95% of FP32's top 100 on a random input)
    Format("coreml", (".mlpackage", ".mlmodel"), "coreml", "deim_edge.runtimes.coreml:CoremlRuntime",
           ("coremltools",), "coreml", metadata="deim_edge.formats.coreml",
           checks={"fp32": Check(min_share=0.9), "fp16": Check(min_share=0.7)},
           int8="deim_edge.export.coreml_int8:INT8_HOOKS", system="Darwin"),
    Format("tensorrt", (".engine", ".plan", ".trt"), "tensorrt", "deim_edge.tensorrt.runtime:TensorrtRuntime",
           ("tensorrt",), "tensorrt", metadata="deim_edge.formats.tensorrt", aliases=("trt",),
           checks={"fp32": FP32_EXACT, "fp16": Check(min_share=0.5), "int8": Check(min_share=0.3)},
           int8="deim_edge.export.tensorrt:INT8_HOOKS", needs_gpu=True),
    Format("executorch", (".pte",), "executorch", "deim_edge.runtimes.executorch:ExecutorchRuntime",
           ("executorch", "torch"), "executorch", metadata="deim_edge.formats.executorch", aliases=("et", "pte"),
           checks={"fp32": FP32_EXACT}, int8="deim_edge.export.executorch:INT8_HOOKS"),
    # Rockchip NPU models run on the board by rknn-toolkit-lite2; here only in rknn-toolkit2's simulator, by the export
    # that builds them (export/rknn.py). FP16 reorders near-tied scores of a random input
    Format("rknn", (".rknn",), "rknn", "deim_edge.runtimes.rknn:RknnRuntime", ("rknnlite",), "rknn-lite",
           metadata="deim_edge.formats.rknn", aliases=("rockchip",), checks={"fp16": Check(min_share=0.8)},
           int8="deim_edge.export.rknn:INT8_HOOKS", system="Linux"),
    # .safetensors and a folder holding model.safetensors: the Hugging Face Hub layout of the official weights
    Format("torch", (".pth", ".pt", ".safetensors"), "torch", "deim_edge.runtimes.torch:TorchRuntime", ("torch",),
           "torch",
           aliases=("pytorch", "pth")),
)


def get_format(name: str) -> Format:
    """The format whose runtime is called `name` (or one of its aliases); ModelFileError listing them otherwise."""
    key = str(name).strip().lower()
    for fmt in FORMATS:
        if key in fmt.names:
            return fmt
    raise ModelFileError(f"unknown backend {name!r}; choose one of: {', '.join(f.runtime for f in FORMATS)}")


def format_of(path: str | Path) -> Format:
    """The format of an artifact, by its file suffix (a Hub-layout folder: torch); ModelFileError listing the known
    suffixes otherwise."""
    if (Path(path) / "model.safetensors").is_file():
        return get_format("torch")
    suffix = Path(path).suffix.lower()
    for fmt in FORMATS:
        if suffix in fmt.suffixes:
            return fmt
    known = ", ".join(s for f in FORMATS for s in f.suffixes)
    raise ModelFileError(f"cannot tell which runtime runs {str(path)!r} (file type {suffix or 'none'}); "
                         f"known suffixes: {known}, or pass backend=")


def read_metadata(path: str | Path) -> ArtifactMetadata:
    """The deim-edge metadata inside any artifact, by its suffix, read without running it."""
    return format_of(path).read_metadata(path)
