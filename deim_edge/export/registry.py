"""The export targets: one record per artifact kind, looked up by name. No torch import.

A target names its format (deim_edge.formats: suffix, runtime, metadata, check, INT8 hooks) and precision,
the pip extra it needs, the modules that extra provides, the options it accepts (with defaults) and the
function that writes the artifact. The function is given as "module:function" and imported only when an
export runs, so listing the targets needs none of their dependencies.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..errors import ConfigError, ExportError, MissingDependencyError
from ..formats import Format, get_format
from ..metadata import ArtifactMetadata

if TYPE_CHECKING:
    from ..calibration.hooks import Int8Hooks

# export(model, metadata, out_path, options) -> the path written; model is a deployed DEIMv2
ExportFn = Callable[[Any, ArtifactMetadata, Path, Mapping[str, Any]], Path]


def _integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


# option -> (what it takes, the test of a value); None passes where the option's default is None
OPTION_VALUES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "opset": ("an integer, e.g. opset=17", _integer),
    "simplify": ("true or false", lambda v: isinstance(v, bool)),
    "verify": ("true or false", lambda v: isinstance(v, bool)),
    "workspace_gb": ("a positive number, e.g. workspace_gb=2",
                     lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0),
    "dla_core": ("an integer >= 0, e.g. dla_core=0", lambda v: _integer(v) and v >= 0),
    "max_batch": ("an integer >= 1, e.g. max_batch=8", lambda v: _integer(v) and v >= 1),
}


@dataclass(frozen=True)
class Target:
    """One kind of artifact that `deim_edge.export` can write: a format (deim_edge.formats) at one precision."""

    name: str
    format: str  # the record in deim_edge.formats: file suffix, runtime, metadata, check, INT8 hooks
    extra: str  # pip install 'deim-edge[<extra>]' provides `requires`
    requires: tuple[str, ...]  # importable modules the export needs (torch included)
    entry: str  # "module:function" of the ExportFn
    options: Mapping[str, Any] = field(default_factory=dict)  # target-specific options and their defaults
    precision: str = "fp32"  # of the artifact's weights and compute, recorded in its metadata
    description: str = ""
    profile: str | None = None  # the model profile (DEIMv2.set_ops) the target converts; None: the user's choice
    # "module:function"(resolved options) -> options: finds a toolchain outside deim-edge's environment before any
    # export work (MissingDependencyError saying how to set it up) and completes the options with it
    toolchain: str | None = None
    # only the process that builds the artifact runs it here (RKNN's simulator): the export function checks it,
    # calibrates (INT8) and measures it itself, given options["quantize"] (the QuantizeSettings) and
    # options["progress"], and writes the gate's figures into the metadata
    measured_in_build: bool = False

    @property
    def record(self) -> Format:
        return get_format(self.format)

    @property
    def suffix(self) -> str:
        """Of the file written, e.g. ".onnx"."""
        return self.record.suffixes[0]

    def int8_hooks(self) -> Int8Hooks:
        """The format's INT8 hooks (imported on use: they need the export's dependencies)."""
        module, name = self.record.int8.split(":")
        return getattr(importlib.import_module(module), name)

    def missing(self) -> list[str]:
        """The required modules that are not installed."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults updated by `options` (and completed by the target's toolchain); ExportError for an option
        this target does not take, ConfigError for a value of the wrong kind (before any export work)."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise ExportError(f"target {self.name!r} does not take option(s) {', '.join(unknown)}; "
                              f"its options are: {allowed}")
        for key, value in options.items():
            if key in OPTION_VALUES and not (value is None and self.options[key] is None):
                takes, valid = OPTION_VALUES[key]
                if not valid(value):
                    raise ConfigError(f"option {key} of target {self.name!r} takes {takes}, got {value!r}")
        resolved = {**self.options, **options}
        if self.toolchain is not None:
            module, function = self.toolchain.split(":")
            resolved = getattr(importlib.import_module(module), function)(resolved)
        return resolved

    def require(self) -> None:
        """MissingDependencyError, naming the extra to install, unless every required module is installed."""
        missing = self.missing()
        if missing:
            extras = ",".join((["torch"] if "torch" in missing else []) + [self.extra])
            raise MissingDependencyError(f"exporting to {self.name} needs {', '.join(missing)}: "
                                         f"pip install 'deim-edge[{extras}]'")

    def export(self, model: Any, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
        """Write the artifact of a deployed `model` to `out_path` (inside a staging folder, see
        fileio.staged_output); returns what was written: out_path, or another name in its folder
        (the TensorRT bundle written where no engine can be built)."""
        self.require()
        module, function = self.entry.split(":")
        fn: ExportFn = getattr(importlib.import_module(module), function)
        return fn(model, metadata, out_path, options)


_TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    """Add a target (later targets plug in here); a name can be registered once."""
    if target.name in _TARGETS:
        raise ExportError(f"an export target named {target.name!r} is already registered")
    _TARGETS[target.name] = target
    return target


def get_target(name: str) -> Target:
    """The target called `name`; ExportError listing the valid names otherwise."""
    key = str(name).strip().lower()
    if key not in _TARGETS:
        raise ExportError(f"unknown export target {name!r}; choose one of: {', '.join(_TARGETS)}")
    return _TARGETS[key]


def targets() -> tuple[Target, ...]:
    """Every registered target, in registration order."""
    return tuple(_TARGETS.values())


register(Target(
    name="onnx", format="onnx", extra="onnx", requires=("torch", "onnx"),
    entry="deim_edge.export.onnx:export_onnx", options={"opset": 17, "simplify": True, "verify": True},
    description="ONNX, float32 (ONNX Runtime, and the input of the TensorRT, OpenVINO and TFLite targets)",
))

ONNX_OPTIONS = {"opset": 17, "simplify": True, "verify": True}  # of the ONNX graph the converters below start from
for _precision, _suffix in (("fp32", ""), ("fp16", "-fp16")):
    register(Target(
        name=f"openvino{_suffix}", format="openvino", extra="openvino", requires=("torch", "onnx", "openvino"),
        entry="deim_edge.export.openvino:export_openvino", options=ONNX_OPTIONS, precision=_precision,
        description=f"OpenVINO IR (.xml + .bin), {_precision} weights (Intel CPU, GPU, NPU)",
    ))
for _precision, _suffix in (("fp32", ""), ("fp16", "-fp16")):
    register(Target(
        name=f"tflite{_suffix}", format="tflite", extra="tflite", requires=("torch", "onnx", "onnx2tf", "tensorflow"),
        entry="deim_edge.export.tflite:export_tflite", options=ONNX_OPTIONS, precision=_precision,
        description=f"TFLite / LiteRT flatbuffer, {_precision} (Android, Raspberry Pi, microcontrollers)",
    ))
for _precision, _suffix in (("fp16", ""), ("fp32", "-fp32")):
    register(Target(
        name=f"coreml{_suffix}", format="coreml", extra="coreml", requires=("torch", "coremltools"),
        entry="deim_edge.export.coreml:export_coreml", options={"verify": True, "minimum_deployment_target": "iOS16"},
        precision=_precision,
        description=f"CoreML ML program (.mlpackage), {_precision} (iPhone, iPad, Mac)",
    ))
for _precision in ("fp32", "fp16"):
    register(Target(
        name=f"trt-{_precision}", format="tensorrt", extra="tensorrt", requires=("torch", "onnx"),
        entry="deim_edge.export.tensorrt:export_tensorrt",
        options={**ONNX_OPTIONS, "workspace_gb": 4.0, "dla_core": None, "max_batch": None, "timing_cache": None},
        precision=_precision,
        description=f"TensorRT engine, {_precision} (Jetson, T4); without tensorrt + a CUDA GPU, a bundle "
                    f"to build it on the device",
    ))

register(Target(
    name="executorch", format="executorch", extra="executorch", requires=("torch", "executorch"),
    entry="deim_edge.export.executorch:export_executorch", options={"verify": True}, precision="fp32",
    description="ExecuTorch program (.pte), XNNPACK delegate, fp32 (Android, iOS, embedded Linux)",
))
register(Target(
    name="executorch-int8", format="executorch", extra="executorch",
    requires=("torch", "onnx", "onnxruntime", "executorch"),
    entry="deim_edge.export.executorch:export_executorch_int8", options=ONNX_OPTIONS, precision="int8",
    description="ExecuTorch program (.pte), XNNPACK, PT2E INT8 on the searched layers (backbone, encoder), "
                "float decoder",
))

# Rockchip NPUs: rknn-toolkit2 runs in its own Python environment (export/rknn_toolkit.py) and builds from the npu
# profile's graph; the models are checked and measured in its simulator while they are built. INT8: the toolkit
# quantizes the backbone and encoder on --calib-data, the decoder is a second, FP16 model (export/rknn.py)
RKNN_OPTIONS = {**ONNX_OPTIONS, "platform": "rk3588", "rknn_python": None}
RKNN_INT8 = "INT8 backbone and encoder + FP16 decoder (two files, run in turn)"
for _precision, _suffix, _what in (("fp16", "", "fp16"), ("int8", "-int8", RKNN_INT8)):
    register(Target(
        name=f"rknn{_suffix}", format="rknn", extra="onnx", requires=("torch", "onnx"),
        entry="deim_edge.export.rknn:export_rknn", options=RKNN_OPTIONS, precision=_precision, profile="npu",
        toolchain="deim_edge.export.rknn_toolkit:find_toolkit", measured_in_build=True,
        description=f"Rockchip RKNN (.rknn), {_what}; platform=rk3588 (or rk3566, rk3568, rk3576, ...); "
                    f"needs rknn-toolkit2's own Python (rknn_python=PATH)",
    ))

# INT8: calibrated on the user's images (--calib-data), layers chosen by calibration.int8 with the format's
# INT8 hooks, measured by the gate
register(Target(
    name="onnx-int8", format="onnx", extra="onnx", requires=("torch", "onnx", "onnxruntime"),
    entry="deim_edge.export.onnx:export_onnx_int8", options=ONNX_OPTIONS, precision="int8",
    description="ONNX with INT8 QDQ: backbone and encoder INT8, decoder float (ONNX Runtime CPU)",
))
register(Target(
    name="openvino-int8", format="openvino", extra="openvino", requires=("torch", "onnx", "onnxruntime", "openvino", "nncf"),
    entry="deim_edge.export.openvino_int8:export_openvino_int8", options=ONNX_OPTIONS, precision="int8",
    description="OpenVINO IR quantized by NNCF on the same layers (Intel CPU, GPU, NPU)",
))
register(Target(
    name="tflite-int8", format="tflite", extra="tflite", requires=("torch", "onnx", "onnxruntime", "onnx2tf", "tensorflow"),
    entry="deim_edge.export.tflite_int8:export_tflite_int8", options={**ONNX_OPTIONS, "mode": "mixed"},
    precision="int8",
    description="TFLite / LiteRT, INT8 backbone and encoder (mode mixed: int8 weights and activations; or dynamic-range: int8 weights), float decoder",
))
register(Target(
    name="coreml-int8", format="coreml", extra="coreml", requires=("torch", "onnx", "onnxruntime", "coremltools"),
    entry="deim_edge.export.coreml:export_coreml",
    options={"verify": True, "minimum_deployment_target": "iOS16", "opset": 17, "simplify": True},
    precision="int8", description="CoreML ML program with INT8 weights on the chosen layers (iPhone, iPad, Mac)",
))
register(Target(
    name="trt-int8", format="tensorrt", extra="tensorrt", requires=("torch", "onnx", "onnxruntime"),
    entry="deim_edge.export.tensorrt:export_tensorrt",
    options={**ONNX_OPTIONS, "workspace_gb": 4.0, "dla_core": None, "max_batch": None, "timing_cache": None},
    precision="int8",
    description="TensorRT explicit-precision INT8 engine from a calibrated QDQ ONNX; without tensorrt + a CUDA "
                "GPU, a bundle to build it on the device",
))
