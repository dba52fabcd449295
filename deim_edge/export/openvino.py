"""The `openvino` and `openvino-fp16` targets: OpenVINO IR (.xml + .bin) converted from the ONNX graph,
with the metadata in the model's rt_info under "deim_edge".

The weights are stored as float32, or as float16 (half the file; OpenVINO decompresses them or
computes in f16 where the device does). The IR is read back and run once against the ONNX graph
in ONNX Runtime, at f32 inference precision, before the export counts as done.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import onnx

from ..errors import ExportError
from ..metadata import METADATA_KEY, OUTPUT_NAMES, ArtifactMetadata
from ..progress import step
from ..runtimes.openvino import OpenVinoRuntime, import_openvino
from .onnx import INPUT_NAME, VERIFY_ATOL, VERIFY_MIN_AGREEMENT, _agreeing_rows, _rows, _width, build_onnx
from ..decode import box_iou, top_detections

COMPRESS = {"fp32": False, "fp16": True}  # metadata.precision -> save_model(compress_to_fp16=)
FP16_TOP = 100  # fp16 weights move scores a little: the check compares the top detections instead
FP16_MIN_IOU = 0.9
FP16_MIN_AGREEMENT = 0.8  # the tests see >= 0.95 on photographs; a broken file agrees on almost none


def export_openvino(model: Any, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
    """Write `model` (deployed) to `out_path` (.xml, its .bin beside it) with `metadata` in its rt_info;
    options: opset, simplify (of the ONNX graph converted), verify (default True)."""
    verify = bool(options.get("verify", True))
    proto = build_onnx(model, metadata, int(options["opset"]), bool(options["simplify"]), verify)
    return convert_onnx(proto, metadata, out_path, verify)


def convert_onnx(proto: onnx.ModelProto, metadata: ArtifactMetadata, out_path: Path, verify: bool = True) -> Path:
    """Convert a deim-edge ONNX graph (build_onnx) to IR at `out_path`, weights stored at
    metadata.precision; verify: run the written IR against the graph in ONNX Runtime, ExportError
    if they disagree."""
    ov = import_openvino()
    if metadata.precision not in COMPRESS:
        raise ExportError(f"OpenVINO IR stores fp32 or fp16 weights, not {metadata.precision}")
    step(f"converting to OpenVINO IR ({len(proto.graph.node)} ONNX nodes)")
    try:
        ov_model = ov.convert_model(io.BytesIO(proto.SerializeToString()))
    except Exception as e:  # noqa: BLE001 -- the converter reports unsupported ops as its own error types
        raise ExportError(f"OpenVINO cannot convert the ONNX graph: {type(e).__name__}: {e}") from e
    ov_model.set_rt_info(metadata.to_json(), METADATA_KEY)
    step(f"writing IR, {metadata.precision} weights")
    try:
        ov.save_model(ov_model, str(out_path), compress_to_fp16=COMPRESS[metadata.precision])
    except RuntimeError as e:  # OpenVINO reports write failures as RuntimeError, not OSError
        raise ExportError(f"OpenVINO cannot write {Path(out_path).name}: {e}") from e
    if verify:
        _verify(proto, Path(out_path), metadata)
    return Path(out_path)


def _verify(proto: onnx.ModelProto, path: Path, metadata: ArtifactMetadata) -> None:
    """The written IR (at f32 inference precision) against the ONNX graph in ONNX Runtime, on one input.

    fp32: every output row within VERIFY_ATOL (rows matched as in the ONNX export's check, so near-ties
    may trade places). fp16: the top detections, which must keep their label and box (IoU).
    """
    if importlib.util.find_spec("onnxruntime") is None:
        step("not comparing with ONNX Runtime (not installed)")
        return
    import onnxruntime as ort

    step("comparing OpenVINO (f32 inference) with ONNX Runtime")
    h, w = metadata.input_size
    images = np.random.default_rng(0).uniform(0, 1, (metadata.batch or 1, 3, h, w)).astype(np.float32)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = OUTPUT_NAMES[metadata.output]
    expected = dict(zip(names, session.run(list(names), {INPUT_NAME: images})))
    try:
        runtime = OpenVinoRuntime(path, precision="f32", threads=1)
        got = runtime.run(images)
    except Exception as e:  # noqa: BLE001 -- anything that stops the written IR from running
        raise ExportError(f"OpenVINO cannot run the IR it wrote: {type(e).__name__}: {e}") from e
    if runtime.metadata != metadata:
        raise ExportError("the IR's metadata does not read back as written")
    if metadata.precision == "fp32":
        key = slice(_width(expected[names[0]]), None)
        agree = np.mean([_agreeing_rows(a, b, key) for a, b in zip(_rows([got[n] for n in names]),
                                                                   _rows([expected[n] for n in names]))])
        if agree < VERIFY_MIN_AGREEMENT:
            raise ExportError(f"OpenVINO and ONNX Runtime agree (within {VERIFY_ATOL:g}) on only {agree:.0%} of "
                              f"the outputs on a random input; please report it")
    else:
        agree = top_agreement(got, expected, metadata.output)
        if agree < FP16_MIN_AGREEMENT:
            raise ExportError(f"with fp16 weights only {agree:.0%} of the top {FP16_TOP} detections keep their "
                              f"label and box (IoU >= {FP16_MIN_IOU}) on a random input; export with "
                              f"--target openvino (fp32 weights)")


def top_agreement(got: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], layout: str,
                  top: int = FP16_TOP, min_iou: float = FP16_MIN_IOU) -> float:
    """The fraction of the expected top detections (per image) that `got` also has among its top:
    same label, box IoU >= min_iou. RAW outputs are decoded first."""
    a, b = top_detections(got, layout, top), top_detections(expected, layout, top)
    fractions = []
    for (_, labels, boxes), (_, ref_labels, ref_boxes) in zip(zip(*a), zip(*b)):
        iou = box_iou(ref_boxes, boxes)  # [top, top]
        fractions.append(np.mean(((ref_labels[:, None] == labels[None, :]) & (iou >= min_iou)).any(1)))
    return float(np.mean(fractions))
