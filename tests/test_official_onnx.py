"""Official DEIMv2 ONNX files, made the way the public export script makes them, are recognized by their
structure: the right variant and normalization, without a warning; a file of another structure warns."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from deim_edge import Detector
from deim_edge.metadata import OFFICIAL
from deim_edge.models import build_model
from deim_edge.variants import get_variant

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# the public script's outputs: as exported, and simplified by its --simplify (onnxsim; onnxsim 0.8 fails on our
# S graph, whose If nodes the public code's graph lacks, so onnxslim, the project's simplifier, stands in there)
CASES = [(name, simplifier) for name in ("deimv2-atto", "deimv2-femto", "deimv2-pico", "deimv2-n")
         for simplifier in (None, "onnxsim")] + [("deimv2-s", None), ("deimv2-s", "onnxslim")]


class PostProcessor(nn.Module):
    """The public postprocessor in deploy mode: sigmoid scores, top-k over queries x classes, label =
    index mod classes, the query's cx,cy,w,h box as x1,y1,x2,y2 scaled by orig_target_sizes (w, h)."""

    def __init__(self, num_classes: int, num_top_queries: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_top_queries = num_top_queries

    def forward(self, outputs: dict[str, Tensor], orig_target_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]  # [N,Q,C], [N,Q,4]
        cx, cy, w, h = boxes.unbind(-1)
        xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)
        xyxy = xyxy * orig_target_sizes.repeat(1, 2).unsqueeze(1)
        scores, index = torch.topk(logits.sigmoid().flatten(1), self.num_top_queries, dim=-1)  # [N,K]
        labels = index - index // self.num_classes * self.num_classes
        query = index // self.num_classes
        return labels, xyxy.gather(1, query.unsqueeze(-1).repeat(1, 1, 4)), scores


class ExportModel(nn.Module):
    """The public script's wrapper: the deployed model, then the postprocessor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.deploy()
        self.postprocessor = PostProcessor(model.variant.num_classes, model.variant.num_top_queries)

    def forward(self, images: Tensor, orig_target_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return self.postprocessor(self.model(images), orig_target_sizes)


def official_export(name: str, out: Path) -> Path:
    """The steps of the public tools/deployment/export_onnx.py for a fresh model (no checkpoint: its
    default init) at the variant's eval size, with a batch of 1 where the script traces 32."""
    torch.manual_seed(0)
    model = ExportModel(build_model(name))
    size = get_variant(name).input_size
    images, sizes = torch.rand(1, 3, size, size), torch.tensor([[size, size]])
    model(images, sizes)
    torch.onnx.export(model, (images, sizes), str(out), input_names=["images", "orig_target_sizes"],
                      output_names=["labels", "boxes", "scores"],
                      dynamic_axes={"images": {0: "N"}, "orig_target_sizes": {0: "N"}}, opset_version=17,
                      verbose=False, do_constant_folding=True, dynamo=False)
    return out


def simplified(path: Path, size: int, simplifier: str | None, out: Path) -> Path:
    """`path` as it is, or simplified as the script does (onnxsim with the traced shapes) or by onnxslim."""
    if simplifier is None:
        return path
    if simplifier == "onnxsim":
        onnxsim = pytest.importorskip("onnxsim")
        model, ok = onnxsim.simplify(str(path), test_input_shapes={"images": [1, 3, size, size],
                                                                   "orig_target_sizes": [1, 2]})
        assert ok
    else:
        model = pytest.importorskip("onnxslim").slim(str(path))
    onnx.save(model, out)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> that variant's official export, made once."""
    folder, made = tmp_path_factory.mktemp("official"), {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = official_export(name, folder / f"{name}.onnx")
        return made[name]

    return get


@pytest.mark.parametrize(("name", "simplifier"), CASES, ids=[f"{n}-{s or 'exported'}" for n, s in CASES])
def test_official_exports_are_recognized_without_a_warning(exported, name, simplifier, tmp_path: Path):
    variant = get_variant(name)
    path = simplified(exported(name), variant.input_size, simplifier, tmp_path / f"{name}-{simplifier}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metadata = Detector(path).metadata
    assert (metadata.variant, metadata.output, metadata.input_size) == (name, OFFICIAL, (variant.input_size,) * 2)
    assert (metadata.mean, metadata.std) == (variant.mean, variant.std)  # x/255 for Atto-N, ImageNet for S-X


def official_interface(path: Path, weights: dict[str, tuple[int, ...]]) -> Path:
    """A small file with the official export's inputs and outputs whose weights (name -> shape, random
    values) feed a chain of MatMuls: patch_embedding (a 16x16 stride-16 Conv) first when given."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    shapes = dict(weights)
    nodes, x = [], "images"
    if "patch_embedding" in shapes:
        nodes.append(helper.make_node("Conv", [x, "patch_embedding"], ["tokens"], strides=[16, 16]))
        x = "tokens"
    nodes.append(helper.make_node("ReduceMean", [x], ["pooled"], axes=[2, 3], keepdims=0))
    x = "pooled"
    for name, shape in shapes.items():
        if len(shape) == 2:
            nodes.append(helper.make_node("MatMul", [x, name], [f"{name}_out"]))
            x = f"{name}_out"
    nodes += [helper.make_node("Sigmoid", [x], ["scores"]),
              helper.make_node("ArgMax", [x], ["arg"], axis=-1),
              helper.make_node("Mul", ["arg", "orig_target_sizes"], ["labels"]),
              helper.make_node("Reshape", ["scores", "box_shape"], ["boxes"])]
    initializers = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in shapes.items()]
    initializers.append(numpy_helper.from_array(np.array([0, -1, 4], dtype=np.int64), "box_shape"))
    graph = helper.make_graph(
        nodes, "official-interface",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 64, 64]),
         helper.make_tensor_value_info("orig_target_sizes", TensorProto.INT64, ["N", 2])],
        [helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", "K"]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", "K", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", "K"])],
        initializers)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


# X's decoder (hidden 256: its box-distribution head, SwiGLU FFN in and out), as the DEIMv2 code's unpublished
# HGNetv2-based configs build it too: only with a ViT's patch embedding is it X
X_DECODER = {"embed": (3, 256), "ffn_in": (256, 2048), "ffn_halve": (2048, 1024), "ffn_out": (1024, 256),
             "head": (256, 132)}


def test_a_structure_of_no_variant_keeps_the_warning(tmp_path: Path):
    path = official_interface(tmp_path / "hgnetv2-l-like.onnx", X_DECODER)
    with pytest.warns(UserWarning, match="could not tell which DEIMv2 variant"):
        metadata = Detector(path).metadata
    assert (metadata.variant, metadata.mean, metadata.std) == (None, None, None)
    with_vit = official_interface(tmp_path / "x-like.onnx",
                                  {"patch_embedding": (384, 3, 16, 16), **X_DECODER, "embed": (384, 256)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Detector(with_vit).metadata.variant == "deimv2-x"
