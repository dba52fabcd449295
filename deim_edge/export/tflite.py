"""The `tflite` and `tflite-fp16` targets: a LiteRT flatbuffer with the metadata inside it.

The ONNX graph of build_onnx, its GridSamples reading zero-padded maps (pad_grid_samples: exact
and fast in onnx2tf), goes through onnx2tf (run as a subprocess in a temporary folder, offline),
which writes float32 and float16 .tflite files with NHWC images; the one the target's precision asks
for gets the ArtifactMetadata JSON as the Model.metadata entry METADATA_KEY and its outputs named as
the layout names them. The written file is then run through TfliteRuntime and compared with the
ONNX graph in ONNX Runtime on one input: ExportError when they disagree.
"""

from __future__ import annotations

import importlib.util
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
from ..metadata import METADATA_KEY, ArtifactMetadata
from ..progress import step
from ..tflite_metadata import FILE_IDENTIFIER
from .onnx import INPUT_NAME, build_onnx
from ..decode import box_iou, top_detections

# onnx2tf loads this file from its working folder (else downloads it) to feed sample images through the
# graph while converting, whenever the input looks like a batch of images (see its download_test_image_data)
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SAMPLE_SHAPE = (20, 128, 128, 3)
OUTPUT_FILES = {"fp32": "model_float32.tflite", "fp16": "model_float16.tflite"}
# onnx2tf's progress lines (-v info) shown as steps; everything else it prints is kept for error messages
MILESTONES = {
    "Model optimizing started": "onnx2tf: simplifying the graph (onnxsim)",
    "Model conversion started": "onnx2tf: converting to TensorFlow, op by op",
    "saved_model output started": "onnx2tf: writing the SavedModel",
    "Float32 tflite output complete": "onnx2tf: float32 .tflite written",
    "Float16 tflite output complete": "onnx2tf: float16 .tflite written",
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")
CHECK_TOP = 100  # detections compared with ONNX Runtime
MIN_KEPT = {"fp32": 0.9, "fp16": 0.8}  # of them found again (same label, IoU >= 0.9): a wrong graph keeps ~none
MAX_DIFF = {"fp32": 1e-3}  # on the scores and boxes of those found (fp16 weights move them by ~1e-3)


def export_tflite(model: nn.Module, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
    """Write `model` (deployed) to `out_path` as a .tflite of metadata.precision (fp32 or fp16) with
    `metadata` inside; options: opset, simplify (of the intermediate ONNX graph), verify (ONNX vs PyTorch)."""
    if metadata.batch is None:
        raise ConfigError("TFLite models have a fixed batch size: export with batch=N (--batch N), "
                          "not a dynamic batch")
    if metadata.precision not in OUTPUT_FILES:
        raise ExportError(f"no TFLite conversion for precision {metadata.precision!r}; "
                          f"use one of {', '.join(OUTPUT_FILES)}")
    proto = build_onnx(model, metadata, int(options["opset"]), bool(options["simplify"]),
                       bool(options["verify"]))
    with tempfile.TemporaryDirectory(prefix="deim-edge-tflite-") as folder:
        converted = convert_onnx(pad_grid_samples(proto), Path(folder), metadata.precision)
        step(f"embedding the metadata ({metadata.precision}, {len(converted) / 1e6:.1f} MB)")
        out_path.write_bytes(embed_metadata(converted, metadata))
    if options["verify"]:
        check_against_onnxruntime(out_path, proto, metadata)
    return out_path


def convert_onnx(proto: onnx.ModelProto, folder: Path, precision: str) -> bytes:
    """The .tflite bytes onnx2tf makes of `proto` (float32 or float16 weights), working in `folder`."""
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
    result = folder / "tf" / OUTPUT_FILES[precision]
    if process.returncode != 0 or not result.is_file():
        tail = "\n".join(log[-20:])
        raise ExportError(f"onnx2tf failed (exit status {process.returncode}); its last lines:\n{tail}")
    step(f"onnx2tf done in {time.perf_counter() - start:.0f} s")
    return result.read_bytes()


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


def _schema():
    """The TFLite flatbuffer schema's Python classes (LiteRT's copy, else TensorFlow's)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def embed_metadata(data: bytes, metadata: ArtifactMetadata) -> bytes:
    """`data` (a .tflite) with the metadata JSON as Model.metadata entry METADATA_KEY (replacing one there)
    and the graph's outputs named as metadata.output names them (onnx2tf calls them Identity, Identity_1...)."""
    import flatbuffers

    from ..runtimes.tflite import _import_interpreter, _map_outputs

    schema = _schema()
    Interpreter, _ = _import_interpreter()
    try:
        outputs = _map_outputs(Interpreter(model_content=data).get_output_details(), metadata, Path("onnx2tf's model"))
    except (ModelFileError, ValueError) as e:
        raise ExportError(f"the converted model is not usable: {e}") from e
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    for name, index in outputs.items():
        graph.tensors[index].name = name
    graph.tensors[graph.inputs[0]].name = INPUT_NAME

    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata.to_json().encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if _text(m.name) != METADATA_KEY]
    model.metadata = [*kept, entry]

    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _text(value: str | bytes | None) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value or "")


def check_against_onnxruntime(path: Path, proto: onnx.ModelProto, metadata: ArtifactMetadata) -> None:
    """Run the written .tflite (through TfliteRuntime) and the ONNX graph (in ONNX Runtime) on one input:
    ExportError unless the top detections agree (same label, IoU >= 0.9; fp32: scores and boxes within 1e-3)."""
    if importlib.util.find_spec("onnxruntime") is None:
        step("not comparing with ONNX Runtime (not installed)")
        return
    import onnxruntime as ort

    from ..runtimes.tflite import TfliteRuntime

    step("comparing the .tflite with ONNX Runtime")
    h, w = metadata.input_size
    images = np.random.default_rng(0).uniform(0, 1, (metadata.batch, 3, h, w)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, {INPUT_NAME: images})))
    runtime = TfliteRuntime(path, threads=1)
    got = runtime.run(images)
    kept, diff = compare_detections(got, expected, metadata)
    limit = MAX_DIFF.get(metadata.precision)
    step(f"top-{CHECK_TOP} detections kept: {kept:.0%}, largest score/box difference {diff:.2g}")
    if kept < MIN_KEPT[metadata.precision] or (limit is not None and diff > limit):
        raise ExportError(
            f"the converted TFLite model disagrees with ONNX Runtime on a random input: {kept:.0%} of the top "
            f"{CHECK_TOP} detections kept (need {MIN_KEPT[metadata.precision]:.0%}), largest difference {diff:.2g}"
            + (f" (allowed {limit:g})" if limit is not None else "")
            + ". onnx2tf converted some op wrongly; try another --opset or --no-simplify, and please report it")


def compare_detections(got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                       metadata: ArtifactMetadata, k: int = CHECK_TOP) -> tuple[float, float]:
    """(fraction of the expected top-k detections found in `got` with the same label and IoU >= 0.9,
    largest score or box coordinate difference between those pairs)."""
    ours, ref = top_detections(got, metadata.output, k), top_detections(expected, metadata.output, k)
    found, total, diff = 0, 0, 0.0
    for b in range(len(ref[0])):
        iou = box_iou(ref[2][b], ours[2][b])  # [K_ref, K_ours]
        iou[ref[1][b][:, None] != ours[1][b][None, :]] = 0
        best = iou.argmax(1)
        ok = iou[np.arange(len(best)), best] >= 0.9
        found, total = found + int(ok.sum()), total + len(ok)
        if ok.any():
            diff = max(diff, float(np.abs(ref[0][b][ok] - ours[0][b][best[ok]]).max()),
                       float(np.abs(ref[2][b][ok] - ours[2][b][best[ok]]).max()))
    return found / max(total, 1), diff
