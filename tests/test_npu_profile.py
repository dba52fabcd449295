"""export --profile npu: a graph without GridSample or TopK that ONNX Runtime runs to the same outputs as the
default graph, its ops checked against Rockchip RKNN's list."""
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from deim_edge import Detector, get_variant  # noqa: E402
from deim_edge.errors import ConfigError, ExportError  # noqa: E402
from deim_edge.export import export  # noqa: E402
from deim_edge.export.op_support import RKNN_ONNX_OPS, check_ops, unsupported_ops  # noqa: E402
from deim_edge.models import build_model  # noqa: E402

BUNDLED = Path(__file__).parent.parent / "deim_edge" / "assets" / "deimv2-atto-synthetic.pth"
PHOTOS = sorted((Path(__file__).parent / "data" / "images").glob("*.jpg"))[:3]


def _pico():
    """Pico with seeded random weights, perturbed so that the encoder's scores differ (fresh heads tie them)."""
    torch.manual_seed(0)
    model = build_model(get_variant("deimv2-pico"), num_classes=80)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


@pytest.fixture(scope="module", params=["atto", "pico"])
def graphs(request, tmp_path_factory):
    """(default graph, npu graph) of Atto @320 (the bundled trained weights) or Pico @640, both decoded on
    the host."""
    folder = tmp_path_factory.mktemp(f"npu-{request.param}")
    source = BUNDLED if request.param == "atto" else _pico()
    kwargs = {"verify": False} if request.param == "pico" else {}  # random weights: no agreement to verify
    default = export(source, "onnx", out=folder / "default.onnx", decode="host", **kwargs)
    npu = export(source, "onnx", out=folder / "npu.onnx", profile="npu", **kwargs)
    return default, npu


def test_the_npu_graph_has_no_gridsample_or_topk_and_passes_rknns_list(graphs):
    default, npu = (onnx.load(str(p)) for p in graphs)
    ops = {n.op_type for n in npu.graph.node}
    assert not ops & {"GridSample", "TopK"}
    assert not unsupported_ops(npu, RKNN_ONNX_OPS)
    assert {"GridSample", "TopK"} <= {n.op_type for n in default.graph.node}
    with pytest.raises(ExportError, match=r"GridSample \(\d+ nodes\).*TopK"):
        check_ops(default, "rknn")


def test_the_npu_graph_gives_the_default_graphs_outputs_on_photos(graphs):
    default, npu = (Detector(p, conf=0.0, max_det=100) for p in graphs)
    assert npu.metadata.extra["profile"] == "npu" and npu.metadata.batch == 1
    for photo in PHOTOS:
        image = cv2.imread(str(photo))
        batch, _ = default.preprocess([cv2.cvtColor(image, cv2.COLOR_BGR2RGB)])
        raw_default, raw_npu = default.infer(batch.copy()), npu.infer(batch.copy())
        for key in ("logits", "boxes"):
            np.testing.assert_allclose(raw_npu[key], raw_default[key], atol=1e-4, rtol=0)
        a, b = default(image), npu(image)
        assert len(a) == len(b) == 100
        # the same top-100 (detections of equal score may come in another order)
        same = ((a.labels[:, None] == b.labels[None]) & (np.abs(a.scores[:, None] - b.scores[None]) <= 1e-4)
                & (np.abs(a.xyxy[:, None] - b.xyxy[None]).max(-1) <= 1e-2))  # pixels
        assert same.any(1).all() and same.any(0).all()


def test_the_npu_profile_refuses_what_npus_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="decodes on the host"):
        export(BUNDLED, "onnx", out=tmp_path / "x.onnx", profile="npu", decode="graph")
    with pytest.raises(ConfigError, match="fixed batch"):
        export(BUNDLED, "onnx", out=tmp_path / "x.onnx", profile="npu", dynamic_batch=True)
    with pytest.raises(ConfigError, match="default, npu"):
        export(BUNDLED, "onnx", out=tmp_path / "x.onnx", profile="gpu")
    assert not list(tmp_path.iterdir())


def test_the_check_names_an_opset_too_new():
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    with pytest.raises(ExportError, match="opset 21"):
        check_ops(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 21)]), "rknn")
