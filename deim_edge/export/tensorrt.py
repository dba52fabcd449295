"""The `trt-fp32`, `trt-fp16` and `trt-int8` targets: a TensorRT engine for Jetson (JetPack 6, TensorRT 10) and T4.

The graph is build_onnx's (opset 17, static height and width) made TensorRT-ready: top-k indices and the index
arithmetic after them run in int32, so the labels output is int32 (the runtime returns int64). Where tensorrt and
a CUDA GPU are present the engine is built here (deim_edge.tensorrt.build) and written with its metadata;
elsewhere the export writes the bundle folder `<name>.trt/` (deim_edge.formats.tensorrt) beside the requested
`<name>.engine`, which `python -m deim_edge.export --build-engine <name>.trt` turns into it on the device.
"""

from __future__ import annotations

import importlib.util
import shlex
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..calibration.hooks import Int8Hooks
from ..errors import ExportError
from ..formats.onnx import embed
from ..formats.tensorrt import BUNDLE_SUFFIX, BuildOptions, write_bundle_record
from ..metadata import ArtifactMetadata
from ..progress import step, warn
from ..runtimes.onnxruntime import ort_session
from ..tensorrt.build import build_engine_file, check_version, cuda_status, import_tensorrt
from ..tensorrt.fp32 import FP32_RULES, fp32_reason
from .onnx import INPUT_NAME, build_onnx

ONNX_OPSET = 17
INDEX_PRODUCERS = {"TopK": 1, "ArgMax": 0, "ArgMin": 0}  # op -> its int64 index output
INDEX_INPUTS = {"Gather": 1, "GatherElements": 1, "GatherND": 1}  # op -> the input that takes indices
SHAPE_OPS = {"Unsqueeze", "Squeeze", "Reshape", "Expand", "Tile", "Flatten", "Transpose", "Identity", "Slice"}
INT_ARITHMETIC = {"Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Min", "Max", "Concat"}
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


def export_tensorrt(model: Any, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
    """Write the engine of `model` (deployed) to `out_path`, or, without tensorrt and a CUDA GPU, the bundle
    `<name>.trt/` beside it (returned). Options: workspace_gb, dla_core, max_batch, timing_cache (and opset and
    simplify, as the onnx target's, when given); trt-int8: int8, the plan whose QDQ graph is built."""
    build = BuildOptions.from_options(metadata.precision, options)
    build.batch_profile(metadata)  # option errors before the slow trace
    missing = cuda_status()
    if missing is None:  # version errors too
        check_version(import_tensorrt().__version__, build.precision)
    if "int8" in options:  # trt-int8: the QDQ graph calibration made of the TensorRT-ready graph (INT8_HOOKS)
        proto = options["int8"].qdq_onnx
        embed(proto, metadata)
    else:
        proto = build_onnx(model, metadata, int(options.get("opset", ONNX_OPSET)), bool(options.get("simplify", True)))
        proto = prepare_onnx(proto, metadata)
    if missing is None:
        return build_engine_file(proto.SerializeToString(), metadata, build, out_path, gate=False)
    bundle = write_bundle(proto, metadata, build, out_path.with_suffix(BUNDLE_SUFFIX))
    warn(f"no TensorRT engine built here: {missing.rstrip('.')}. Wrote the bundle {bundle.name} instead: copy it to "
         f"the device and run python -m deim_edge.export --build-engine {bundle.name} (see its README.txt)")
    return bundle


# ---------------------------------------------------------------------------------------------- the ONNX graph

def prepare_onnx(proto: onnx.ModelProto, metadata: ArtifactMetadata) -> onnx.ModelProto:
    """The graph with int32 indices (int32_indices), checked by onnx.checker and, when ONNX Runtime is
    installed, run against the graph as given: the same outputs or ExportError."""
    before = proto.SerializeToString()
    proto, cast = int32_indices(onnx.load_from_string(before))
    step(f"int32 top-k indices for TensorRT ({len(cast)} top-k)")
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the int32 rewrite of the ONNX graph is invalid: {e}; please report it") from e
    _check_same_outputs(before, proto, metadata)
    return proto


# trt-int8: the search quantizes the TensorRT-ready graph with symmetric Q/DQ (explicit precision), and the
# artifact is built from the QDQ graph it measured
INT8_HOOKS = Int8Hooks(qdq_style="trt", ships_qdq=True, prepare=prepare_onnx)


def int32_indices(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Cast the int64 indices of TopK/ArgMax to int32 right where they are made and carry int32 through the
    index arithmetic and reshapes after them, down to the gathers that use them and the graph outputs
    (labels). Shape inputs (Reshape, Expand, ...) keep int64, as ONNX requires; TensorRT takes those as
    int32 weights. Returns the graph (changed in place) and the names of the nodes whose indices were cast."""
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    used = Counter(x for n in graph.node for x in n.input) + Counter(o.name for o in graph.output)
    int32: set[str] = set()
    nodes: list[onnx.NodeProto] = []
    new_initializers: dict[str, onnx.TensorProto] = {}
    cast_nodes: list[str] = []

    def constant_int32(name: str) -> str | None:
        key = f"{name}_int32"
        if key not in new_initializers:
            tensor = initializers.get(name)
            if tensor is None:
                tensor = next(a.t for a in constants[name].attribute if a.name == "value")
            value = numpy_helper.to_array(tensor)
            if value.dtype != np.int64 or np.abs(value).max(initial=0) > np.iinfo(np.int32).max:
                return None
            new_initializers[key] = numpy_helper.from_array(value.astype(np.int32), key)
        return key

    def cast(name: str, to: int, suffix: str) -> str:
        out = f"{name}_{suffix}"
        nodes.append(helper.make_node("Cast", [name], [out], name=f"{out}_cast", to=to))
        return out

    for node in graph.node:
        op = node.op_type
        hits = [i for i, x in enumerate(node.input) if x in int32]
        if hits:
            if op in INDEX_INPUTS and hits == [INDEX_INPUTS[op]]:  # int32 indices are valid gather indices
                table = node.input[0]  # an int64 lookup table (the decode's query of each index) becomes int32
                known = constant_int32(table) if table in initializers or table in constants else None
                if known:
                    node.input[0] = known
                    int32.add(node.output[0])
            elif (op in SHAPE_OPS or op in INDEX_INPUTS) and hits == [0]:
                int32.add(node.output[0])  # the data moves, its type stays
            elif op == "Cast":
                to = next(a for a in node.attribute if a.name == "to")
                if to.i == TensorProto.INT64:
                    to.i = TensorProto.INT32
                    int32.add(node.output[0])
            elif op in INT_ARITHMETIC:
                for i, x in enumerate(node.input):
                    if x and x not in int32:
                        known = constant_int32(x) if x in initializers or x in constants else None
                        node.input[i] = known or cast(x, TensorProto.INT32, "int32")
                int32.add(node.output[0])
            else:  # anything else gets the int64 it was traced with
                for i in hits:
                    node.input[i] = cast(node.input[i], TensorProto.INT64, "int64")
        nodes.append(node)
        if op in INDEX_PRODUCERS and len(node.output) > INDEX_PRODUCERS[op]:
            k = INDEX_PRODUCERS[op]
            index = node.output[k]
            if index and used[index]:
                node.output[k] = f"{index}_int64"
                nodes.append(helper.make_node("Cast", [node.output[k]], [index], name=f"{index}_int32_cast",
                                              to=TensorProto.INT32))
                int32.add(index)
                cast_nodes.append(node.name)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(new_initializers.values())
    still_used = {x for n in graph.node for x in n.input}
    kept = [t for t in graph.initializer if t.name in still_used or t.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    stale = [v for v in graph.value_info if v.name not in int32]
    del graph.value_info[:]
    graph.value_info.extend(stale)
    for output in graph.output:
        if output.name in int32:
            output.type.tensor_type.elem_type = TensorProto.INT32
    return proto, cast_nodes


def _check_same_outputs(before: bytes, proto: onnx.ModelProto, metadata: ArtifactMetadata) -> None:
    """ExportError unless the rewritten graph gives exactly the outputs of the graph as traced, in ONNX Runtime
    (one runtime, one input: the same values in the same places)."""
    if importlib.util.find_spec("onnxruntime") is None:
        step("not comparing the int32 graph in ONNX Runtime (not installed)")
        return
    step("comparing the int32 graph with the original in ONNX Runtime")
    h, w = metadata.input_size
    images = np.random.default_rng(0).uniform(0, 1, (metadata.batch or 2, 3, h, w)).astype(np.float32)
    expected, got = (ort_session(g).run(None, {INPUT_NAME: images}) for g in (before, proto.SerializeToString()))
    for output, a, b in zip(proto.graph.output, expected, got):
        if a.shape != b.shape or not np.array_equal(a.astype(np.float64), b.astype(np.float64)):
            raise ExportError(f"the int32 rewrite for TensorRT changed the output {output.name!r}; please report it")


# ---------------------------------------------------------------------------------------------- the bundle

def fp32_layers(proto: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """The nodes of the graph that the FP32 rules keep in FP32 in FP16 engines: (every such node with a
    float output: for --layerPrecisions, those whose outputs are all float: for --layerOutputTypes)."""
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output, *graph.input]}
    precisions, output_types = [], []
    for node in graph.node:
        if node.op_type == "Constant" or fp32_reason(node.name) is None:
            continue
        floats = [types.get(o) in FLOAT_TYPES for o in node.output if o]
        if any(floats):
            precisions.append(node.name)
            if all(floats):
                output_types.append(node.name)
    return precisions, output_types


def write_bundle(proto: onnx.ModelProto, metadata: ArtifactMetadata, options: BuildOptions, path: Path) -> Path:
    """The bundle folder `path` (<name>.trt): <name>.onnx, metadata.json, build.json, build.sh, README.txt."""
    path.mkdir()
    onnx_name = f"{path.stem}.onnx"
    onnx.save(proto, str(path / onnx_name))
    write_bundle_record(path, onnx_name, options, metadata)
    layers, outputs = fp32_layers(proto) if options.precision in ("fp16", "int8") else ([], [])
    script = path / "build.sh"
    script.write_text(build_script(onnx_name, metadata, options, layers, outputs), encoding="utf-8")
    script.chmod(0o755)
    (path / "README.txt").write_text(readme(path.name, onnx_name, metadata, options, layers), encoding="utf-8")
    step(f"wrote the bundle {path.name}: {onnx_name} ({len(proto.graph.node)} nodes), build.sh"
         + (f" ({len(layers)} layers kept in FP32)" if layers else ""))
    return path


def trtexec_args(onnx_name: str, metadata: ArtifactMetadata, options: BuildOptions, layers: list[str],
                 outputs: list[str]) -> list[str]:
    """The trtexec arguments that build the raw engine `<name>.engine` beside `onnx_name`."""
    args = [f"--onnx={onnx_name}", f"--saveEngine={Path(onnx_name).stem}.engine",
            f"--memPoolSize=workspace:{round(options.workspace_gb * 1024)}"]
    if options.precision in ("fp16", "int8"):
        args += ["--fp16", "--int8"] if options.precision == "int8" else ["--fp16"]
        if layers:
            args += ["--precisionConstraints=obey", "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in layers)]
        if outputs:
            args.append("--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in outputs))
    else:
        args.append("--noTF32")  # fp32 means FP32: TF32 convolutions drift ~1e-3
    profile = options.batch_profile(metadata)
    if profile is not None:
        h, w = metadata.input_size
        for flag, batch in zip(("min", "opt", "max"), profile):
            args.append(f"--{flag}Shapes={INPUT_NAME}:{batch}x3x{h}x{w}")
    if options.dla_core is not None:
        args += [f"--useDLACore={options.dla_core}", "--allowGPUFallback"]
    if options.timing_cache is not None:
        args.append(f"--timingCacheFile={options.timing_cache}")
    return args + ["--skipInference"]


def build_script(onnx_name: str, metadata: ArtifactMetadata, options: BuildOptions, layers: list[str],
                 outputs: list[str]) -> str:
    """build.sh: the trtexec command, run from the bundle folder; the long layer lists go in variables."""
    args = trtexec_args(onnx_name, metadata, options, layers, outputs)
    variables, lines = [], []
    for arg in args:
        flag, _, value = arg.partition("=")
        if flag in ("--layerPrecisions", "--layerOutputTypes"):
            var = "FP32_LAYERS" if flag == "--layerPrecisions" else "FP32_OUTPUTS"
            variables.append(f"{var}={shlex.quote(value)}")
            lines.append(f'{flag}="${var}"')
        else:
            lines.append(shlex.quote(arg))
    engine = f"{Path(onnx_name).stem}.engine"
    head = [
        "#!/usr/bin/env bash",
        f"# Builds {engine} ({options.precision}) from {onnx_name} with trtexec, on the device that will run it",
        "# (Jetson with JetPack 6 / TensorRT 10, T4, ...). trtexec writes a raw engine without deim-edge's",
        "# metadata: Detector reads it with metadata.json beside it (keep it in this folder). Preferred:",
        "#     python -m deim_edge.export --build-engine <this folder>",
        f"# which writes ../{engine} with the metadata inside. Extra trtexec options: ./build.sh --verbose",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}"',
    ]
    if variables:
        head += ["", f"# {len(layers)} FP16-sensitive layers kept in FP32 (see README.txt)", *variables]
    command = ['"$TRTEXEC" \\'] + [f"    {line} \\" for line in lines] + ['    "$@"']
    return "\n".join([*head, "", *command]) + "\n"


def readme(bundle: str, onnx_name: str, metadata: ArtifactMetadata, options: BuildOptions, layers: list[str]) -> str:
    """README.txt of a bundle: what is in it and how to turn it into an engine."""
    stem = Path(onnx_name).stem
    h, w = metadata.input_size
    profile = options.batch_profile(metadata)
    batch = f"any batch from {profile[0]} to {profile[2]}" if profile else f"batches of {metadata.batch}"
    count = f"{len(layers)} in this graph" + ("" if options.precision != "fp32" else "; none: fp32 engine")
    reasons = Counter(fp32_reason(n) for n in layers)
    kept = "\n".join(f"    {reasons[reason]:4d}  {reason}" for reason, _ in FP32_RULES if reasons[reason])
    rules = "\n".join(f"    {pattern.pattern}" for _, pattern in FP32_RULES)
    return f"""TensorRT bundle of {metadata.variant} ({h}x{w}, {metadata.output} outputs, {batch}), {options.precision}
written by {metadata.producer} where no engine could be built (TensorRT or a CUDA GPU missing).
A TensorRT engine runs only with the TensorRT version and GPU model that built it: build it on the device.

Contents
    {onnx_name:<16} the model: ONNX opset {ONNX_OPSET}, fixed {h}x{w} input, int32 top-k indices (labels are int32),
                     deim-edge metadata embedded
    metadata.json    the same metadata, for an engine built by trtexec
    build.json       how deim-edge builds it: precision, workspace, DLA core, batch, timing cache
    build.sh         the same build with trtexec
    README.txt       this file

Build the engine (on the device)
  1. pip install 'deim-edge[tensorrt]'
     (on Jetson TensorRT comes with JetPack: use its Python package, in a venv made with
     --system-site-packages, and pip install deim-edge cuda-python)
     python -m deim_edge.export --build-engine {bundle}
     writes {stem}.engine beside this folder, metadata inside:
         from deim_edge import Detector; det = Detector("{stem}.engine")
  2. or, without deim-edge's builder: ./build.sh     (trtexec; TRTEXEC=/path/to/trtexec ./build.sh)
     writes {bundle}/{stem}.engine, a raw engine; Detector("{bundle}/{stem}.engine") reads it with
     metadata.json beside it.
  3. or let the runtime build and cache it on first use:
         Detector("{bundle}", backend="tensorrt")  or  Detector("{bundle}/{onnx_name}", backend="tensorrt")
     (cached in $DEIM_EDGE_CACHE/engines or ~/.cache/deim-edge/engines)

TensorRT versions
  - 8.6 or newer is needed (native GridSample); JetPack 6 has 8.6 (6.0) or 10.3 (6.1, 6.2).
  - FP16 engines built by TensorRT 10.4 are known to give wrong or empty detections for DEIMv2-like
    models; 10.3 and 10.6+ are fine. deim-edge keeps the FP16-sensitive layers in FP32 (below), the fix
    reported for it; if detections still look wrong, build trt-fp32 or use another TensorRT.

FP16-sensitive layers kept in FP32 ({count})
{kept or '    (none)'}
  chosen by ONNX node name (the same names are TensorRT's layer names):
{rules}
"""

