"""The exact graph rewrites of export/fold.py: same outputs, fewer ops, and nothing folded that must not be."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from deim_edge.export.fold import fold_affine_scales

ort = pytest.importorskip("onnxruntime")


def conv_relu_affine(scale: float, bias: float = 0.25, second_reader: bool = False) -> onnx.ModelProto:
    """x -> Conv(W, B) -> Relu -> Mul(scale) -> Add(bias) -> y (and Relu -> z when second_reader)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "B"),
             numpy_helper.from_array(np.array([scale], np.float32), "s"),
             numpy_helper.from_array(np.array([bias], np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Mul", ["r", "s"], ["m"], name="lab/Mul"),
             helper.make_node("Add", ["m", "b"], ["y"], name="lab/Add")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])]
    if second_reader:
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4, 8, 8]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(proto: onnx.ModelProto) -> np.ndarray:
    x = np.random.default_rng(1).normal(size=(1, 3, 8, 8)).astype(np.float32)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


def test_positive_scale_moves_into_the_conv() -> None:
    proto = conv_relu_affine(1.7)
    before = run(proto)
    assert fold_affine_scales(proto) == 1
    onnx.checker.check_model(proto)
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Relu", "Add"]
    assert "s" not in {t.name for t in proto.graph.initializer}  # the folded scale is gone
    np.testing.assert_allclose(run(proto), before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("scale", [-0.5, 0.0])
def test_a_scale_that_does_not_commute_with_relu_stays(scale: float) -> None:
    proto = conv_relu_affine(scale)
    assert fold_affine_scales(proto) == 0
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Relu", "Mul", "Add"]


def test_a_relu_output_read_elsewhere_stays() -> None:
    proto = conv_relu_affine(1.7, second_reader=True)
    assert fold_affine_scales(proto) == 0


@pytest.mark.parametrize("shift", [-0.3, 0.0])
def test_a_non_positive_shift_becomes_a_clip_of_the_shifted_conv(shift: float) -> None:
    from deim_edge.export.fold import clip_negative_shifts

    proto = conv_relu_affine(1.7, bias=shift)
    before = run(proto)
    assert fold_affine_scales(proto) == 1 and clip_negative_shifts(proto) == 1
    onnx.checker.check_model(proto)
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Clip"]
    np.testing.assert_allclose(run(proto), before, rtol=1e-6, atol=1e-5)  # the shift is added before the clamp
    assert run(proto).min() == pytest.approx(shift)  # the clamp sits at the shift


def test_a_positive_shift_stays_an_add() -> None:
    from deim_edge.export.fold import clip_negative_shifts

    proto = conv_relu_affine(1.7, bias=0.25)
    assert clip_negative_shifts(proto) == 0
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Relu", "Mul", "Add"]
