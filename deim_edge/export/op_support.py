"""Which ONNX operators an NPU toolchain converts, checked before a conversion starts, so an export names the op
that blocks it instead of failing deep inside a vendor's converter.

RKNN_ONNX_OPS: the operators rknn-toolkit2 lists as supported (doc/RKNNToolKit2_OP_Support-2.3.2.md of
airockchip/rknn-toolkit2; opset up to 19). Several carry limits there (Softmax, Slice, Tile: batch 1; Resize:
nearest and bilinear), which the npu profile's static batch of 1 meets. The npu profile (export --profile npu)
is checked against this list: it is the strictest of the NPU lists the project knows, and GridSample and TopK,
the two ops that kept DEIMv2 off NPUs, are missing from it as from Hailo's and Qualcomm's.
"""
from __future__ import annotations

from collections import Counter

import onnx

from ..errors import ExportError

RKNN_ONNX_OPS = frozenset("""
Add And ArgMax ArgMin AveragePool BatchNormalization Cast Clip Concat Constant ConstantOfShape Conv ConvTranspose
Cos DepthToSpace DequantizeLinear Div Dropout Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid HardSwish Identity If
InstanceNormalization LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization LRN LSTM MatMul
Max MaxPool MaxRoiPool MaxUnpool MeanVarianceNormalization Min Mish Mod Mul Pad Pow PRelu QuantizeLinear ReduceMax
ReduceMean ReduceMin ReduceSum Relu Reshape Resize ReverseSequence RoiAlign ScatterND Shape Sigmoid Sin Size Slice
Softmax Softplus SpaceToDepth Split Sqrt Squeeze Sub Tanh Tile Transpose Unsqueeze Where
""".split())
RKNN_MAX_OPSET = 19

TOOLCHAINS = {"rknn": ("Rockchip RKNN (rknn-toolkit2 2.3.2)", RKNN_ONNX_OPS, RKNN_MAX_OPSET)}


def unsupported_ops(proto: onnx.ModelProto, supported: frozenset[str]) -> Counter:
    """{op type: how many nodes} of the graph's default-domain ops outside `supported`."""
    return Counter(n.op_type for n in proto.graph.node if n.domain in ("", "ai.onnx") and n.op_type not in supported)


def check_ops(proto: onnx.ModelProto, toolchain: str = "rknn") -> None:
    """ExportError naming the ops (and the opset) of `proto` that `toolchain` cannot convert."""
    name, supported, max_opset = TOOLCHAINS[toolchain]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    problems = []
    if opset is not None and opset > max_opset:
        problems.append(f"opset {opset} (it reads up to {max_opset}: --opset {max_opset})")
    blocked = unsupported_ops(proto, supported)
    if blocked:
        problems.append("the op(s) " + ", ".join(f"{op} ({count} nodes)" for op, count in sorted(blocked.items())))
    if problems:
        raise ExportError(f"{name} cannot convert this graph: {'; '.join(problems)}. Export with --profile npu "
                          f"(no GridSample, no TopK, decode on the host), or report the op")
