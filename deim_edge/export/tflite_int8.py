"""INT8 for the `tflite-int8` target: onnx2tf's float conversion, then INT8 only where the caller allows it.

What was measured on deimv2-atto @320 (held-out AP, FP32 .tflite 0.4252; 1 thread, XNNPACK, x86 AVX2):
- onnx2tf's own integer quantization (-oiqt: every op INT8, float input/output) is unusable: the scores
  reach TopK as int8 (1/256 steps, ties everywhere) and the label arithmetic after it runs in int8 (labels
  out of range), and it is 1.44x slower than FP32.
- "mixed" (this file): INT8 activations and weights only for the TFLite ops that compute the ONNX nodes in
  `quantize_nodes` (backbone + encoder but the first conv), float everywhere else (decoder, top-k):
  AP -0.006 to -0.007, but 1.25-1.41x slower than FP32 on x86 (XNNPACK's int8 kernels gain nothing over
  its f32 ones at Atto's channel counts without VNNI; each float/int8 boundary costs a (de)quantize).
- "dynamic-range" (this file): int8 weights (per channel), float activations, for the convolutions and
  matmuls of `quantize_nodes` only: AP -0.0003, 1.41 MB instead of 2.25, 1.21-1.24x slower than FP32 (the
  hybrid kernels are LiteRT's own, not XNNPACK's): as accurate as FP32 and less slow than mixed here.
The target's default is mixed, the INT8 that phones and boards accelerate (XNNPACK's int8 kernels on ARM,
NPU delegates); `--option mode=dynamic-range` gives the smaller float-activation model.

The ONNX node names do not survive onnx2tf (its ops are named after Keras layers, tf.nn.convolution_12...),
so the TFLite ops are matched to ONNX nodes by their values: one image goes through ONNX Runtime (every
intermediate tensor) and the float .tflite (every tensor kept); an op computes a node when its output holds
the same values (compared sorted, so NCHW vs NHWC and reshapes do not matter).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping

import numpy as np
import onnx

from ..calibration.hooks import Int8Hooks
from ..errors import ConfigError, ExportError
from ..metadata import ArtifactMetadata
from ..progress import step
from ..formats.tflite import FILE_IDENTIFIER, schema
from .tflite import convert_onnx, name_tensors, pad_grid_samples

MODES = ("mixed", "dynamic-range")
# builtin operator codes (tflite schema BuiltinOperator)
ADD, CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, DEQUANTIZE, QUANTIZE = 0, 3, 4, 9, 6, 114
WEIGHT_OPS = (CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED)
MIN_WEIGHTS = 1024  # smaller weight tensors stay float (as TFLite's own dynamic-range quantizer does)
INT8, FLOAT32 = 9, 0  # tflite TensorType
XNNPACK_ADD_SCALES = (2.0 ** -10, 2.0 ** 8)  # XNNPACK runs an int8 ADD whose input/output scale ratios lie here
MATCH_RTOL, MATCH_ATOL = 1e-3, 1e-3  # TF and ONNX Runtime float results differ by ~1e-5
INT8_HOOKS = Int8Hooks()  # the shared search on the QDQ graph; the converter quantizes the chosen layers


def export_tflite_int8(model: Any, metadata: ArtifactMetadata, out_path: Path, options: Mapping[str, Any]) -> Path:
    """The tflite-int8 target: the plan of calibration.int8 (options["int8"]) in options["mode"] (dynamic-range:
    int8 weights; mixed: int8 weights and activations), the mode used recorded in the metadata."""
    if metadata.batch is None:
        raise ConfigError("TFLite models have a fixed batch size: export with batch=N (--batch N)")
    plan = options["int8"]
    with tempfile.TemporaryDirectory(prefix="deim-edge-tflite-int8-") as folder:
        data, mode = convert_int8(pad_grid_samples(plan.fp32_onnx), Path(folder), plan.calibration.nhwc(),
                                  plan.plan.nodes, options["mode"])
    step(f"TFLite INT8 mode: {mode}")
    metadata = metadata.with_(extra={**metadata.extra, "int8": {**metadata.extra["int8"], "tflite_mode": mode}})
    out_path.write_bytes(name_tensors(data, metadata))
    return out_path


def convert_int8(proto: onnx.ModelProto, folder: Path, calibration_nhwc: np.ndarray,
                 quantize_nodes: Collection[str], mode: str) -> tuple[bytes, str]:
    """(.tflite bytes, the mode used) of `proto` (already through pad_grid_samples) with INT8 only for the
    ONNX nodes named in `quantize_nodes`, working in `folder`.

    calibration_nhwc: [N, H, W, 3] float32 images preprocessed exactly as the runtime feeds them (mixed
    calibrates its activation ranges on them; both modes match ops to nodes on the first). mode: "mixed"
    (int8 activations and weights there) or "dynamic-range" (int8 weights there, float activations). When
    mixed cannot be made, dynamic-range is used instead; the returned mode says which.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown TFLite INT8 mode {mode!r}; use one of {', '.join(MODES)}")
    images = _check_calibration(calibration_nhwc, proto)
    wanted = set(quantize_nodes) & {n.name for n in proto.graph.node}
    if not wanted:
        raise ConfigError("none of the nodes to quantize is in the ONNX graph; nothing would be INT8")
    float_model = convert_onnx(proto, folder)["fp32"]  # also leaves the SavedModel in folder / "tf"
    reference = _onnx_values(proto, images[:_batch(proto)])
    if mode == "mixed":
        try:
            return _mixed(folder / "tf", proto, images, wanted, reference), "mixed"
        except ExportError as e:
            step(f"mixed INT8 failed ({e}); using dynamic-range INT8 instead")
    return _dynamic_range(float_model, images[:_batch(proto)], wanted, reference), "dynamic-range"


def _check_calibration(images: np.ndarray, proto: onnx.ModelProto) -> np.ndarray:
    """`images` as float32 after checking it is [N, H, W, 3] at the graph's input size."""
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]  # [B, 3, H, W]
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or len(images) == 0 or list(images.shape[1:3]) != dims[2:4]:
        raise ConfigError(f"calibration images must be [N, {dims[2]}, {dims[3]}, 3] (NHWC, preprocessed), "
                          f"got {list(images.shape)}")
    return images.astype(np.float32, copy=False)


def _batch(proto: onnx.ModelProto) -> int:
    return max(1, proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value)


def _batches(images: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    """`images` in the model's fixed batch size, the last batch filled up from the first images."""
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.resize(images, (batch - len(chunk), *images.shape[1:]))])
        yield chunk


# ---- which TFLite ops compute the ONNX nodes to quantize

def _onnx_values(proto: onnx.ModelProto, images_nhwc: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """{ONNX tensor: (its node, its values sorted)} for every float tensor of `proto` on `images_nhwc`."""
    from ..runtimes.onnxruntime import ort_session  # MissingDependencyError naming the extra without onnxruntime

    graph = onnx.ModelProto.FromString(proto.SerializeToString())
    inferred = onnx.shape_inference.infer_shapes(graph).graph
    infos = {v.name: v for v in [*inferred.value_info, *inferred.output]}
    producer = {}
    del graph.graph.output[:]
    for node in graph.graph.node:
        for name in node.output:
            info = infos.get(name)
            if info is not None and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
                producer[name] = node.name
                graph.graph.output.append(info)
    session = ort_session(graph.SerializeToString())
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: images_nhwc.transpose(0, 3, 1, 2).copy()})
    return {name: (producer[name], np.sort(value, axis=None)) for name, value in zip(names, values)}


def _ops_to_quantize(model: bytes, images_nhwc: np.ndarray, wanted: set[str],
                     reference: dict[str, tuple[str, np.ndarray]]) -> set[int]:
    """Indices of the ops of `model` (a float .tflite) that compute ONNX nodes in `wanted`.

    An op computes the nodes whose outputs hold the values of its first float output. Where those nodes
    are on both sides (a reshape of an encoder output that the decoder also reshapes), the op follows its
    input. Ops matching nothing (pads onnx2tf adds) and ops between two quantized ones are quantized when
    all their float inputs and all their consumers are.
    """
    from ..runtimes.tflite import import_interpreter

    Interpreter, OpResolverType = import_interpreter()
    interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images_nhwc)
    interpreter.invoke()
    floats = {t["index"] for t in interpreter.get_tensor_details() if t["dtype"] == np.float32}
    ops = interpreter._get_ops_details()  # noqa: SLF001 (LiteRT has no public per-op listing)
    by_size: dict[int, list[tuple[str, np.ndarray]]] = {}
    for node, values in reference.values():
        by_size.setdefault(values.size, []).append((node, values))
    made_by = {t: op["index"] for op in ops for t in op["outputs"]}
    consumers: dict[int, list[int]] = {}
    for op in ops:
        for t in op["inputs"]:
            if t in made_by:
                consumers.setdefault(made_by[t], []).append(op["index"])

    def inputs(op: dict) -> list[int]:
        return [made_by[t] for t in op["inputs"] if t in made_by and t in floats]

    chosen: dict[int, bool] = {}
    matched = set()
    for op in ops:  # in execution order: an op's inputs are decided before it
        outputs = [t for t in op["outputs"] if t in floats]
        if not outputs:
            continue
        values = np.sort(interpreter.get_tensor(outputs[0]), axis=None).astype(np.float32)
        scale = max(1.0, float(np.abs(values).max(initial=0.0)))
        sides = {node in wanted for node, ref in by_size.get(values.size, [])
                 if np.allclose(values, ref, rtol=MATCH_RTOL, atol=MATCH_ATOL * scale)}
        if sides:
            matched.add(op["index"])
            chosen[op["index"]] = (sides.pop() if len(sides) == 1
                                   else bool(inputs(op)) and all(chosen.get(i, False) for i in inputs(op)))
    for _ in range(8):  # settles in a few passes (chains of unmatched ops)
        for op in ops:
            i, before, after = op["index"], inputs(op), consumers.get(op["index"], [])
            between = (bool(before) and bool(after) and all(chosen.get(j, False) for j in before)
                       and all(chosen.get(j, True) for j in after))
            chosen[i] = between or (i in matched and chosen[i])
    return {i for i, q in chosen.items() if q}


# ---- mixed: int8 activations and weights inside the region, float outside

def _mixed(saved_model: Path, proto: onnx.ModelProto, images: np.ndarray, wanted: set[str],
           reference: dict[str, tuple[str, np.ndarray]]) -> bytes:
    """The SavedModel calibrated on `images`, then quantized with every op outside `wanted` kept float."""
    try:
        import tensorflow as tf
        from tensorflow.lite.python import convert
    except ImportError as e:
        raise ExportError(f"mixed TFLite INT8 needs tensorflow: {e}") from e
    from ..runtimes.tflite import import_interpreter

    batch = _batch(proto)
    step(f"calibrating the activation ranges on {len(images)} images")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([b] for b in _batches(images, batch))
    converter.experimental_mlir_quantizer = True
    converter._experimental_calibrate_only = True  # noqa: SLF001 (as tf.lite.experimental.QuantizationDebugger)
    try:
        calibrated = converter.convert()
    except Exception as e:  # the converter raises ConverterError and plain RuntimeErrors
        raise ExportError(f"TFLite calibration failed: {str(e).splitlines()[0] if str(e) else e!r}") from e

    step("matching TFLite ops with the ONNX nodes to quantize")
    chosen = _ops_to_quantize(calibrated, images[:batch], wanted, reference)
    if not chosen:
        raise ExportError("no TFLite op computes the nodes to quantize")
    Interpreter, _ = import_interpreter()
    interpreter = Interpreter(model_content=calibrated)
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # noqa: SLF001
    keep_float = [names[t] for op in ops if op["index"] not in chosen for t in op["outputs"] if t in names]
    # op kinds never inside the region stay float by kind too: the quantizer misses some multi-output ops
    # by name (TopK, Split) and would run them in int8
    inside = {op["op_name"] for op in ops if op["index"] in chosen}
    float_kinds = sorted({op["op_name"] for op in ops} - inside)
    step(f"quantizing {len(chosen)} of {len(ops)} TFLite ops to INT8")
    try:
        quantized = convert.mlir_quantize(calibrated, denylisted_ops=float_kinds, denylisted_nodes=keep_float)
    except Exception as e:
        raise ExportError(f"TFLite quantization failed: {str(e).splitlines()[0] if str(e) else e!r}") from e
    return _requantize_add_constants(_drop_fake_quant(quantized))


def _drop_fake_quant(data: bytes) -> bytes:
    """`data` without quantize -> (requantize ->) dequantize chains that start from a float tensor: the
    quantizer leaves them after some float ops (sigmoid, softmax: fixed output ranges) in the float part,
    where they would only round the values; their readers read the float tensor instead."""
    import flatbuffers

    fb = schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]

    def code(op) -> int:
        c = model.operatorCodes[op.opcodeIndex]
        return max(c.builtinCode, c.deprecatedBuiltinCode)

    made_by = {t: op for op in graph.operators for t in op.outputs}
    replace = {}
    for op in graph.operators:
        if code(op) != DEQUANTIZE:
            continue
        source = op.inputs[0]
        while source in made_by and code(made_by[source]) == QUANTIZE:
            source = made_by[source].inputs[0]
            if graph.tensors[source].type == FLOAT32:
                replace[op.outputs[0]] = source
                break
    if not replace:
        return data
    for op in graph.operators:
        op.inputs = [replace.get(t, t) for t in op.inputs]
    graph.outputs = [replace.get(t, t) for t in graph.outputs]
    while True:  # drop the dequantizes and quantizes nobody reads any more
        read = {t for op in graph.operators for t in op.inputs} | set(graph.outputs)
        kept = [op for op in graph.operators
                if code(op) not in (QUANTIZE, DEQUANTIZE) or any(t in read for t in op.outputs)]
        if len(kept) == len(graph.operators):
            break
        graph.operators = kept
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _requantize_add_constants(data: bytes) -> bytes:
    """`data` with each int8 ADD of a one-value constant (HGNetv2's affine shift after a ReLU) quantized at the
    ADD's output scale. The converter gives a constant its own scale (|b| / 127: 1e-7 to 1e-4 for Atto's shifts),
    which XNNPACK refuses (input/output scale outside XNNPACK_ADD_SCALES): each such ADD ran in LiteRT's own
    kernel and cut XNNPACK's graph in two (10 of them in Atto). At the output's scale the constant is b rounded to
    that scale's step, the rounding the ADD's output gets anyway."""
    import flatbuffers

    fb = schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    changed = 0
    for op in graph.operators:
        c = model.operatorCodes[op.opcodeIndex]
        if max(c.builtinCode, c.deprecatedBuiltinCode) != ADD:
            continue
        out = graph.tensors[op.outputs[0]]
        for index in op.inputs:
            t = graph.tensors[index]
            values = model.buffers[t.buffer].data if t.buffer < len(model.buffers) else None
            if (t.type != INT8 or out.type != INT8 or values is None or len(values) != 1 or t.quantization is None
                    or out.quantization is None):
                continue
            scale, out_scale = float(t.quantization.scale[0]), float(out.quantization.scale[0])
            if XNNPACK_ADD_SCALES[0] <= scale / out_scale < XNNPACK_ADD_SCALES[1]:
                continue
            real = scale * (int(np.asarray(values).astype(np.uint8).view(np.int8)[0]) - int(t.quantization.zeroPoint[0]))
            t.quantization.scale, t.quantization.zeroPoint = [out_scale], [0]
            model.buffers[t.buffer].data = np.array([np.clip(round(real / out_scale), -128, 127)], np.int8).view(np.uint8)
            changed += 1
    if not changed:
        return data
    step(f"{changed} ADD constants requantized at their output's scale (XNNPACK runs those ADDs)")
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


# ---- dynamic-range: int8 weights inside the region, float activations everywhere

def _dynamic_range(model: bytes, images_nhwc: np.ndarray, wanted: set[str],
                   reference: dict[str, tuple[str, np.ndarray]]) -> bytes:
    """The float .tflite `model` with the weights of its convolutions and fully connected ops that compute
    nodes in `wanted` stored as per-channel symmetric int8 (LiteRT runs those ops as hybrid kernels:
    float activations, int8 weights), the way TFLite's dynamic-range quantizer writes them."""
    import flatbuffers

    step("matching TFLite ops with the ONNX nodes to quantize")
    chosen = _ops_to_quantize(model, images_nhwc, wanted, reference)
    fb = schema()
    flat = fb.ModelT.InitFromPackedBuf(bytearray(model), 0)
    graph = flat.subgraphs[0]
    readers: dict[int, int] = {}
    for op in graph.operators:
        for t in op.inputs:
            readers[t] = readers.get(t, 0) + 1
    done = 0
    for index, op in enumerate(graph.operators):
        c = flat.operatorCodes[op.opcodeIndex]
        kind = max(c.builtinCode, c.deprecatedBuiltinCode)
        if index not in chosen or kind not in WEIGHT_OPS or len(op.inputs) < 2:
            continue
        tensor = graph.tensors[op.inputs[1]]
        buffer = flat.buffers[tensor.buffer]
        if tensor.type != FLOAT32 or buffer.data is None or readers[op.inputs[1]] != 1:
            continue
        weights = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.float32).reshape(tensor.shape)
        if weights.size < MIN_WEIGHTS:
            continue
        axis = 3 if kind == DEPTHWISE_CONV_2D else 0  # the output channels
        others = tuple(a for a in range(weights.ndim) if a != axis)
        scale = np.abs(weights).max(axis=others) / 127.0
        scale[scale == 0] = 1.0
        shape = [1] * weights.ndim
        shape[axis] = -1
        q = np.clip(np.round(weights / scale.reshape(shape)), -127, 127).astype(np.int8)
        buffer.data = q.view(np.uint8).ravel()
        tensor.type = INT8
        tensor.quantization = fb.QuantizationParametersT()
        tensor.quantization.scale = scale.astype(np.float32).tolist()
        tensor.quantization.zeroPoint = [0] * len(scale)
        tensor.quantization.quantizedDimension = axis
        done += 1
    if not done:
        raise ExportError("no convolution or fully connected weights to quantize among the nodes given")
    step(f"int8 weights for {done} convolutions / fully connected ops")
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(flat.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())
