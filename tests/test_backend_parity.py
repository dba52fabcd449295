"""The same detections everywhere: every installed backend against ONNX Runtime on real photographs,
for deimv2-atto at 320 and deimv2-pico at 640.

FP32 artifacts (OpenVINO with FP32 inference precision, TFLite) give raw outputs within 1e-4 of ONNX
Runtime and the same top-100 detections; FP16 artifacts keep at least 95% of the top-100 (same label,
IoU >= 0.9). Backends that cannot run here are skipped with the reason: CoreML predicts on macOS only,
TensorRT needs tensorrt and a CUDA GPU.
"""
from pathlib import Path

import pytest

from deim_edge import Detector
from deim_edge.compare import agreement
from deim_edge.demo import unavailable
from deim_edge.export import export
from deim_edge.export.registry import get_target
from deim_edge.preprocess import load_image
from deim_edge.variants import get_variant

from conftest import assert_same_detections, assert_same_queries

torch = pytest.importorskip("torch", reason="exporting needs torch")
pytest.importorskip("onnxruntime", reason="ONNX Runtime is the reference")

PHOTOS = sorted((Path(__file__).parent / "data" / "images").glob("*.jpg"))
CASES = [("deimv2-atto", 320), ("deimv2-pico", 640)]
TOP = 100
# target -> (runtime options for an exact comparison, whether it is FP32)
TARGETS = {
    "openvino": ({"precision": "f32", "threads": 1}, True),
    "openvino-fp16": ({"threads": 1}, False),
    "tflite": ({"threads": 1}, True),
    "tflite-fp16": ({"threads": 1}, False),
    "coreml-fp32": ({"compute_units": "CPU_ONLY"}, True),
    "coreml": ({"compute_units": "CPU_ONLY"}, False),
    "trt-fp32": ({}, True),
    "trt-fp16": ({}, False),
}
@pytest.fixture(scope="module", params=CASES, ids=[f"{v}-{s}" for v, s in CASES])
def case(request, tmp_path_factory):
    """A model (random weights, BatchNorm statistics from images) and its raw-output ONNX reference."""
    from deim_edge.export.weights import random_model

    name, size = request.param
    model = random_model(get_variant(name), input_size=(size, size))
    folder = tmp_path_factory.mktemp(f"{name}-{size}")
    onnx = export(model, "onnx", out=folder / "model.onnx", decode="host", verify=False)
    return model, folder, Detector(onnx, conf=0.0, max_det=TOP, threads=1)


@pytest.mark.parametrize("target", list(TARGETS))
def test_backend_matches_onnxruntime(case, target):
    reason = unavailable(get_target(target))
    if reason:
        pytest.skip(reason)
    model, folder, reference = case
    options, fp32 = TARGETS[target]
    out = folder / f"model-{target}{get_target(target).suffix}"
    artifact = export(model, target, out=out, decode="host", verify=False)
    detector = Detector(artifact, conf=0.0, max_det=TOP, **options)
    assert detector.metadata.precision == ("fp32" if fp32 else "fp16")
    for photo in PHOTOS:
        batch, transforms = reference.preprocess([load_image(photo)])
        expected, got = reference.infer(batch), detector.infer(batch)
        ref_dets = reference.postprocess(expected, transforms)[0]
        dets = detector.postprocess(got, transforms)[0]
        if fp32:  # queries come sorted by encoder score: near-ties may trade places, nothing else may differ
            assert_same_queries({"pred_logits": torch.from_numpy(got["logits"]),
                                 "pred_boxes": torch.from_numpy(got["boxes"])}, expected["logits"], expected["boxes"],
                                atol=1e-4)
            assert_same_detections(dets, ref_dets, box_atol=0.05, score_atol=1e-4)
        else:
            assert agreement([ref_dets], [dets], min_iou=0.9).share >= 0.95, photo.name
