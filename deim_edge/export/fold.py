"""Exact rewrites of the traced ONNX graph that leave fewer ops for the backends.

HGNetv2's learnable affine follows a ReLU: `scale * relu(conv(x)) + bias` with scalar scale and bias. For
scale > 0, `scale * relu(z) == relu(scale * z)`, so the scale moves into the conv's weights and bias and the
Mul disappears (20 of them in Atto's backbone). What is left, ReLU then a scalar Add, is what the INT8 backends
fuse best: ONNX Runtime runs QLinearConv with the ReLU inside, and no QLinearMul pass over the activations
(measured 0.74 ms of 11.4 in Atto's INT8 graph at 320, 1 thread). The float result is the same within rounding.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper


def fold_affine_scales(proto: onnx.ModelProto) -> int:
    """Fold every `Mul(Relu(Conv(x, W, B)), s)` with a positive scalar initializer s into Conv(x, s W, s B),
    in place; returns how many were folded."""
    graph = proto.graph
    matches = _after_relu_conv(graph, "Mul", lambda s: s > 0)
    for mul, s, relu, conv, initializers in matches:
        for name in conv.input[1:]:
            values = numpy_helper.to_array(initializers[name])
            initializers[name].CopyFrom(numpy_helper.from_array((values * s).astype(values.dtype), name))
        relu.output[0] = mul.output[0]  # the Mul's readers now read the ReLU
    _remove(graph, [m[0] for m in matches])
    return len(matches)


def clip_negative_shifts(proto: onnx.ModelProto) -> int:
    """Rewrite every `Add(Relu(Conv(x, W, B)), b)` with a scalar initializer b <= 0 as Clip(Conv(x, W, B + b), min=b),
    in place; returns how many. relu(z) + b == max(z + b, b), so the float result is the same within rounding.

    For ONNX Runtime (FP32 and INT8): its FP32 kernels fuse the Clip into the convolution (no Add pass over the
    activations), and its INT8 quantizer drops the Clip into the convolution's output quantization (range
    [b, max]: the clamp at b is the uint8 zero), so QLinearConv writes the shifted activations with no QLinearAdd
    requantizing them. A shift b > 0 stays an Add: ONNX Runtime's quantization ranges always include 0, so the
    clamp at b > 0 would be lost. Not for LiteRT: XNNPACK has no int8 kernel for the Maximum a Clip becomes."""
    graph = proto.graph
    matches = _after_relu_conv(graph, "Add", lambda b: b <= 0)
    for add, b, relu, conv, initializers in matches:
        bias = conv.input[2]
        values = numpy_helper.to_array(initializers[bias])
        initializers[bias].CopyFrom(numpy_helper.from_array((values + b).astype(values.dtype), bias))
        lower = f"{add.name}/min"
        graph.initializer.append(numpy_helper.from_array(np.asarray(b, dtype=values.dtype), lower))  # a scalar
        relu.CopyFrom(onnx.helper.make_node("Clip", [relu.input[0], lower], [add.output[0]],
                                            name=relu.name.rsplit("/", 1)[0] + "/Clip"))
    _remove(graph, [m[0] for m in matches])
    return len(matches)


def _after_relu_conv(graph: onnx.GraphProto, op_type: str, accept: Callable[[float], bool]) -> list[tuple]:
    """(node, value, relu, conv, initializers) for every `op_type(Relu(Conv(x, W, B)), c)` whose c is a one-value
    initializer with accept(c), where the Conv's W and B are initializers and W, B, the Conv's and the ReLU's
    outputs have no other reader (so rewriting them changes nothing else)."""
    initializers = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = defaultdict(int)
    for name in [i for node in graph.node for i in node.input] + [o.name for o in graph.output]:
        readers[name] += 1
    matches = []
    for node in graph.node:
        if node.op_type != op_type or len(node.input) != 2:
            continue
        const = next((i for i in node.input if i in initializers), None)
        data = next((i for i in node.input if i != const), None)
        if const is None or data is None:
            continue
        value = numpy_helper.to_array(initializers[const])
        if value.size != 1 or not np.isfinite(value).all() or not accept(float(value.reshape(-1)[0])):
            continue
        relu = producer.get(data)
        if relu is None or relu.op_type != "Relu" or readers[data] != 1:
            continue
        conv = producer.get(relu.input[0])
        if conv is None or conv.op_type != "Conv" or readers[relu.input[0]] != 1 or len(conv.input) != 3:
            continue
        if not all(w in initializers and readers[w] == 1 for w in conv.input[1:]):
            continue
        matches.append((node, float(value.reshape(-1)[0]), relu, conv, initializers))
    return matches


def _remove(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Drop `nodes` and the initializers only they read."""
    for node in nodes:
        graph.node.remove(node)
    still_read = {name for node in graph.node for name in node.input}
    for t in [t for t in graph.initializer if t.name in {i for n in nodes for i in n.input} - still_read]:
        graph.initializer.remove(t)
