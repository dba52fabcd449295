"""The `tflite` and `tflite-fp16` targets: a LiteRT flatbuffer with the metadata inside it.

The ONNX graph of build_onnx, its GridSamples reading zero-padded maps (pad_grid_samples: exact
and fast in onnx2tf), goes through onnx2tf (run as a subprocess in a temporary folder, offline),
which writes float32 and float16 .tflite files with NHWC images; the one the target's precision asks
for gets the ArtifactMetadata JSON as the Model.metadata entry METADATA_KEY and its outputs named as
the layout names them.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx
from torch import nn

from ..errors import ConfigError, ExportError, ModelFileError
from ..formats.tflite import embed
from ..metadata import ArtifactMetadata
from ..progress import step
from .onnx import INPUT_NAME, build_onnx

# onnx2tf loads this file from its working folder (else downloads it) to feed sample images through the
# graph while converting, whenever the input looks like a batch of images (see its download_test_image_data)
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SAMPLE_SHAPE = (20, 128, 128, 3)
OUTPUT_FILES = {"fp32": "model_float32.tflite", "fp16": "model_float16.tflite"}
KEEP_BYTES = 128 * 2**20  # of recent onnx2tf results kept in memory (a Pico's pair is ~10 MB)
_CONVERSIONS: dict[str, dict[str, bytes]] = {}  # graph hash -> onnx2tf's files, oldest first
# onnx2tf's progress lines (-v info) shown as steps; everything else it prints is kept for error messages
MILESTONES = {
    "Model optimizing started": "onnx2tf: simplifying the graph (onnxsim)",
    "Model conversion started": "onnx2tf: converting to TensorFlow, op by op",
    "saved_model output started": "onnx2tf: writing the SavedModel",
    "Float32 tflite output complete": "onnx2tf: float32 .tflite written",
    "Float16 tflite output complete": "onnx2tf: float16 .tflite written",
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def export_tflite(model: nn.Module, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
    """Write `model` (deployed) to `out_path` as a .tflite of metadata.precision (fp32 or fp16) with
    `metadata` inside; options: opset, simplify (of the intermediate ONNX graph)."""
    if metadata.batch is None:
        raise ConfigError("TFLite models have a fixed batch size: export with batch=N (--batch N), "
                          "not a dynamic batch")
    if metadata.precision not in OUTPUT_FILES:
        raise ExportError(f"no TFLite conversion for precision {metadata.precision!r}; "
                          f"use one of {', '.join(OUTPUT_FILES)}")
    padded = pad_grid_samples(build_onnx(model, metadata, int(options["opset"]), bool(options["simplify"])))
    converted = _float_conversions(padded)[metadata.precision]
    step(f"embedding the metadata ({metadata.precision}, {len(converted) / 1e6:.1f} MB)")
    out_path.write_bytes(name_tensors(converted, metadata))
    return out_path


def _float_conversions(proto: onnx.ModelProto) -> dict[str, bytes]:
    """{precision: .tflite bytes} of one onnx2tf run on `proto`. onnx2tf writes the float32 and float16 files in
    one run, so recent runs are kept (by graph, up to KEEP_BYTES): the tflite and tflite-fp16 exports of a model
    convert once."""
    key = hashlib.sha256(proto.graph.SerializeToString() + repr(list(proto.opset_import)).encode()).hexdigest()
    if key in _CONVERSIONS:
        step("reusing onnx2tf's conversion of this graph (one run writes the float32 and float16 files)")
        _CONVERSIONS[key] = _CONVERSIONS.pop(key)  # the most recent last
        return _CONVERSIONS[key]
    with tempfile.TemporaryDirectory(prefix="deim-edge-tflite-") as folder:
        converted = convert_onnx(proto, Path(folder))
    _CONVERSIONS[key] = converted
    while _CONVERSIONS and sum(len(b) for files in _CONVERSIONS.values() for b in files.values()) > KEEP_BYTES:
        del _CONVERSIONS[next(iter(_CONVERSIONS))]  # the oldest first (a pair over the limit is not kept)
    return converted


def convert_onnx(proto: onnx.ModelProto, folder: Path) -> dict[str, bytes]:
    """{precision: .tflite bytes} of the float32 and float16 files onnx2tf makes of `proto`, working in `folder`
    (the SavedModel stays in folder / "tf")."""
    onnx.save(proto, str(folder / "model.onnx"))
    batch = max(1, proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value)
    samples = np.random.default_rng(0).uniform(0, 1, (max(SAMPLE_SHAPE[0], batch), *SAMPLE_SHAPE[1:]))
    np.save(folder / SAMPLE_FILE, samples.astype(np.float32))  # keeps onnx2tf offline
    command = [sys.executable, "-m", "onnx2tf", "-i", "model.onnx", "-o", "tf", "-v", "info"]
    bins = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    env = {**os.environ, "PATH": os.pathsep.join([*dict.fromkeys(bins), os.environ.get("PATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    step(f"converting with onnx2tf ({len(proto.graph.node)} ONNX nodes; minutes on a small CPU)")
    start = time.perf_counter()
    log: list[str] = []
    with subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, errors="replace") as process:
        try:
            for line in process.stdout:
                line = ANSI.sub("", line).rstrip()
                for start_of_line, message in MILESTONES.items():
                    if line.startswith(start_of_line):
                        step(message)
                if line and "TensorSpec(" not in line:  # the SavedModel signature dump: hundreds of lines
                    log.append(line)
        except BaseException:
            process.kill()
            raise
    results = {precision: folder / "tf" / name for precision, name in OUTPUT_FILES.items()}
    if process.returncode != 0 or not all(r.is_file() for r in results.values()):
        tail = "\n".join(log[-20:])
        raise ExportError(f"onnx2tf failed (exit status {process.returncode}); its last lines:\n{tail}")
    step(f"onnx2tf done in {time.perf_counter() - start:.0f} s")
    return {precision: result.read_bytes() for precision, result in results.items()}


def pad_grid_samples(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph, each bilinear zeros-padded GridSample (align_corners 0) reading a map padded with one
    pixel of zeros instead, its grid scaled to match, so no sampling point falls partly outside the map.

    onnx2tf's fast GridSample returns 0 for any point outside the pixel centres (x < 0 or x > W - 1), where
    ONNX blends the border pixel with zero: wrong for points within a pixel of the border. On the padded map
    those points are inside and the points it zeroes are truly all-zero, so the fast kernel becomes exact
    (x' = x + 1 needs grid' = grid * W / (W + 2)). Its accurate kernel costs ~70% more time on Atto.
    """
    from onnx import helper, numpy_helper

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(proto)
    infos = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in infos}
    shapes.update({t.name: list(t.dims) for t in proto.graph.initializer})
    nodes = []
    for n, node in enumerate(proto.graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape = shapes.get(node.input[0], [])
        if (node.op_type == "GridSample" and attrs.get("mode", b"bilinear") in (b"bilinear", b"linear")
                and attrs.get("padding_mode", b"zeros") == b"zeros" and not attrs.get("align_corners", 0)
                and len(shape) == 4 and all(s > 0 for s in shape)):
            h, w = shape[2:]
            pads, scale = f"deim_edge_pads_{n}", f"deim_edge_grid_scale_{n}"
            proto.graph.initializer.extend([
                numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), pads),
                numpy_helper.from_array(np.array([w / (w + 2), h / (h + 2)], np.float32), scale)])
            padded, scaled = f"{node.input[0]}_padded_{n}", f"{node.input[1]}_scaled_{n}"
            nodes += [helper.make_node("Pad", [node.input[0], pads], [padded], name=f"{node.name}_pad"),
                      helper.make_node("Mul", [node.input[1], scale], [scaled], name=f"{node.name}_grid_scale")]
            node.input[0], node.input[1] = padded, scaled
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def name_tensors(data: bytes, metadata: ArtifactMetadata) -> bytes:
    """`data` (onnx2tf's .tflite) with `metadata` inside, its input named "images" and its outputs named as
    metadata.output names them (onnx2tf calls them Identity, Identity_1...)."""
    from ..runtimes.tflite import import_interpreter, map_outputs

    Interpreter, _ = import_interpreter()
    interpreter = Interpreter(model_content=data)
    try:
        outputs = map_outputs(interpreter.get_output_details(), metadata, Path("onnx2tf's model"))
    except (ModelFileError, ValueError) as e:
        raise ExportError(f"the converted model is not usable: {e}") from e
    renames = {index: name for name, index in outputs.items()}
    renames[interpreter.get_input_details()[0]["index"]] = INPUT_NAME
    return embed(data, metadata, renames)
