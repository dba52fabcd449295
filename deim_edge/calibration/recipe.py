"""Quantization recipes: which nodes of a deim-edge ONNX graph may be INT8, grouped into layers.

ONNX node names keep the PyTorch module scope (/model/backbone/stem/stem1/conv/Conv), so a node's layer is its
module: the name without the op and without the leaf submodules a conv unit is made of (conv, act, lab, ...).

- "detr" (the default): INT8 for the backbone and the hybrid encoder (convolutions with their activations,
  affine blocks, adds, concatenations, pooling, resizes); float for the whole decoder, where the field found
  DETRs break (sampling offsets, attention weights, softmax, the box distributions and their integral, score
  heads, top-k). The sensitivity analysis then moves the layers that still cost accuracy back to float.
- "naive": every node of every quantizable op type anywhere, the quantize-everything baseline.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import onnx

from ..errors import ConfigError
from .settings import RECIPES

# op types quantized in backbone and encoder (ONNX Runtime keeps chains of these in int8 between convolutions)
DETR_OP_TYPES = ("Conv", "Relu", "Clip", "Add", "Mul", "Concat", "MaxPool", "AveragePool", "Resize", "Sigmoid",
                 "Split", "Pad", "MatMul", "Gemm")
INT8_SCOPES = ("/model/backbone/", "/model/encoder/")
# the naive baseline adds what a quantize-everything run touches in the decoder and the decode
NAIVE_OP_TYPES = (*DETR_OP_TYPES, "Softmax", "GridSample", "Gather", "GatherElements", "Transpose", "Reshape",
                  "Squeeze", "Unsqueeze", "Slice", "TopK", "Sub", "Div", "Clip", "ReduceMean", "Tile", "Expand")
LEAF_MODULES = {"conv", "act", "lab", "bn", "norm", "conv_bn_fused"}  # parts of one conv unit
# scopes that are one layer: HGNetv2's stem (stem1 -> pad -> pool | stem2a -> stem2b -> concat -> stem3 -> stem4) moves
# to float as a whole; a float stem1 alone leaves ONNX Runtime a float MaxPool outside its fast NCHWc path between
# INT8 convolutions (measured on Atto: stem1 alone float 1.02x FP32 speed, the stem float 1.20x, both within 0.7 AP)
UNIT_SCOPES = ("/model/backbone/stem",)
TRT_OP_TYPES = ("Conv", "MatMul", "Gemm")  # TensorRT fuses Q/DQ into these; it picks int8 for the rest itself
# matrix products the detr recipe quantizes only with a weight (a constant input) for backends that ask so (ONNX
# Runtime; the others, unmeasured, keep them): between two activations (a ViT backbone's q @ k and attn @ v) ONNX Runtime also fuses the softmax between
# them into QLinearSoftmax, 7x slower than its float softmax (deimv2-s: 258 vs 35 ms; onnx-int8 was slower than
# FP32, 626 vs 575 ms), while OpenVINO runs them well in int8 (deimv2-s: 303 ms with them, 386 without)
PRODUCTS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class Plan:
    """The layers a recipe makes INT8 (each: its node names), in graph order, minus those kept float."""

    recipe: str
    layers: dict[str, tuple[str, ...]]  # layer -> node names
    op_types: tuple[str, ...]
    float_layers: tuple[str, ...] = ()

    @property
    def nodes(self) -> list[str]:
        """The node names to quantize."""
        kept = set(self.float_layers)
        return [n for layer, names in self.layers.items() if layer not in kept for n in names]

    def keep_float(self, *layers: str) -> Plan:
        """The same plan with `layers` moved back to float."""
        return Plan(self.recipe, self.layers, self.op_types, (*self.float_layers, *layers))

    def summary(self) -> dict:
        return {"recipe": self.recipe, "int8_layers": len(self.layers) - len(set(self.float_layers)),
                "int8_nodes": len(self.nodes), "float_layers": list(self.float_layers)}


def layer_of(node_name: str) -> str:
    """/model/encoder/fpn_block/cv1/conv_bn_fused/Conv -> /model/encoder/fpn_block/cv1; a node in a UNIT_SCOPE
    belongs to that scope."""
    unit = next((u for u in UNIT_SCOPES if node_name.startswith(u + "/")), None)
    if unit is not None:
        return unit
    parts = [p for p in node_name.split("/") if p][:-1]
    while parts and parts[-1] in LEAF_MODULES:
        parts.pop()
    return "/" + "/".join(parts)


def make_plan(proto: onnx.ModelProto, recipe: str = "detr", op_types: tuple[str, ...] | None = None,
              activation_products: bool = True) -> Plan:
    """The INT8 layers of `recipe` in `proto`; op_types narrows the op types (e.g. TRT_OP_TYPES);
    activation_products=False: the detr recipe quantizes matrix products only with a weight (see PRODUCTS)."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown quantization recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    allowed = DETR_OP_TYPES if recipe == "detr" else NAIVE_OP_TYPES
    types = tuple(t for t in allowed if op_types is None or t in op_types)
    constants = {t.name for t in proto.graph.initializer} | {
        out for node in proto.graph.node if node.op_type == "Constant" for out in node.output}
    layers: dict[str, list[str]] = defaultdict(list)
    for node in proto.graph.node:
        if node.op_type not in types or not (recipe == "naive" or node.name.startswith(INT8_SCOPES)):
            continue
        if (recipe == "detr" and not activation_products and node.op_type in PRODUCTS
                and not constants.intersection(node.input)):
            continue  # attention's activation x activation products: see PRODUCTS
        layers[layer_of(node.name)].append(node.name)
    if not layers:
        raise ConfigError(f"the {recipe} recipe finds nothing to quantize in this graph (no {', '.join(types)} "
                          f"nodes under {', '.join(INT8_SCOPES)}); is it a deim-edge export?")
    return Plan(recipe, {k: tuple(v) for k, v in layers.items()}, types)
