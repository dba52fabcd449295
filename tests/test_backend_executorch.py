"""ExecuTorch: the executorch target writes a .pte (XNNPACK, fp32) with its metadata inside, and Detector runs it
through ExecuTorch's Python runtime to ONNX Runtime's detections."""
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("executorch", reason="needs ExecuTorch: pip install 'deim-edge[executorch]'")
pytest.importorskip("onnxruntime")

from deim_edge import Detector  # noqa: E402
from deim_edge.errors import ModelFileError  # noqa: E402
from deim_edge.export import export  # noqa: E402
from deim_edge.formats import format_of, read_metadata  # noqa: E402

BUNDLED = Path(__file__).parent.parent / "deim_edge" / "assets" / "deimv2-atto-synthetic.pth"
PHOTOS = sorted((Path(__file__).parent / "data" / "images").glob("*.jpg"))[:3]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """(.pte, .onnx) of the bundled Atto, top-k decoded in the graph (the .pte lowering takes ~2 minutes)."""
    folder = tmp_path_factory.mktemp("executorch")
    return (export(BUNDLED, "executorch", out=folder / "atto.pte", max_det=100),
            export(BUNDLED, "onnx", out=folder / "atto.onnx", max_det=100))


def test_the_pte_carries_its_metadata(artifacts):
    pte, _ = artifacts
    assert format_of(pte).runtime == "executorch"
    meta = read_metadata(pte)
    assert meta.variant == "deimv2-atto" and meta.class_names == ("circle", "square", "triangle", "ring")
    assert meta.batch == 1 and meta.max_det == 100


def test_executorch_gives_onnx_runtimes_top_100(artifacts):
    pte, onnx = (Detector(p, conf=0.0) for p in artifacts)
    assert pte.runtime.name == "executorch"
    for photo in PHOTOS:
        image = cv2.imread(str(photo))
        a, b = onnx(image), pte(image)
        assert len(a) == len(b) == 100
        assert np.array_equal(a.labels, b.labels)
        np.testing.assert_allclose(b.scores, a.scores, atol=1e-4)
        np.testing.assert_allclose(b.xyxy, a.xyxy, atol=1e-2)  # pixels


def test_the_gate_writes_its_figures_into_the_pte(artifacts, tmp_path):
    from deim_edge.formats.executorch import write_metadata

    pte = tmp_path / "copy.pte"
    pte.write_bytes(artifacts[0].read_bytes())
    meta = read_metadata(pte)
    write_metadata(pte, meta.with_(extra={"accuracy": {"drop": 0.1}}))
    assert read_metadata(pte).extra == {"accuracy": {"drop": 0.1}}
    image = cv2.imread(str(PHOTOS[0]))
    np.testing.assert_array_equal(Detector(pte, conf=0.0)(image).scores, Detector(artifacts[0], conf=0.0)(image).scores)


def test_a_file_that_is_no_program_is_a_model_file_error(tmp_path):
    bad = tmp_path / "bad.pte"
    bad.write_bytes(b"not a program" * 100)
    with pytest.raises(ModelFileError, match="not an ExecuTorch program"):
        Detector(bad)


def test_executorch_int8_passes_the_gate_on_the_synthetic_validation_set(tmp_path):
    import json
    import warnings

    from deim_edge.training.data import make_synthetic_coco

    from deim_edge.bench.device import cpu_facts

    val = tmp_path / "heldout"
    make_synthetic_coco(val, num_images=150, image_size=320, seed=1, split_val=0.2)  # 30 held-out images
    # measured drop: 0.52 AP points on AVX512-VNNI (the same plan as a QDQ graph in ONNX Runtime: 0.45), 1.98 on
    # an AVX2-only CPU (XNNPACK's int8 kernels differ by instruction set)
    max_drop = 1.0 if "avx512_vnni" in cpu_facts()["isa"] else 2.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(BUNDLED, "executorch-int8", out=tmp_path / "atto-int8.pte", calib_data="synthetic",
                      calib_size=48, val_data=val, max_drop=max_drop)
    meta = read_metadata(path)
    acc = meta.extra["accuracy"]
    assert meta.precision == "int8" and acc["metric"] == "AP" and acc["drop"] <= max_drop and acc["images"] == 30
    assert acc["measured"] == ".pte artifact" and acc["reference_AP"] > 0.3
    assert meta.extra["int8"]["int8_nodes"] > 50
    assert Detector(path, threads=1)(cv2.imread(str(PHOTOS[0]))).scores.size
    assert json.loads((tmp_path / "atto-int8.pte.accuracy.json").read_text())["target"] == "executorch-int8"
