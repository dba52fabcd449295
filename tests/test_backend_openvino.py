"""OpenVINO: IR export (fp32 and fp16 weights, metadata in rt_info, nothing left from staging), raw
outputs equal to ONNX Runtime, fp16 keeping the top detections, Detector on photographs, ONNX
files opened with OpenVINO, asynchronous stream == run, and clear errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DATA, assert_same_detections, assert_same_queries

from deim_edge import Detector
from deim_edge.decode import decode
from deim_edge.errors import ConfigError, ExportError, MissingDependencyError, ModelFileError
from deim_edge.fileio import staged_output
from deim_edge.metadata import RAW, TOPK, ArtifactMetadata

VARIANT, SIZE = "deimv2-atto", 320
PHOTOS = sorted((DATA / "images").glob("*.jpg"))
NO_OPENVINO = "no openvino: pip install 'deim-edge[openvino]'"


def needs_engines():
    """torch, onnx and ONNX Runtime to make and check artifacts, openvino to convert and run them."""
    for module in ("torch", "onnx", "onnxruntime"):
        pytest.importorskip(module, reason=f"no {module}: the export needs it")
    return pytest.importorskip("openvino", reason=NO_OPENVINO)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """One random-weights Atto as RAW ONNX and the fp32 IR converted from that very graph."""
    needs_engines()
    import onnx

    from deim_edge.export.onnx import build_onnx
    from deim_edge.export.openvino import convert_onnx
    from deim_edge.export.weights import random_model

    folder = tmp_path_factory.mktemp("openvino-raw")
    metadata = ArtifactMetadata.for_variant(VARIANT, input_size=SIZE, output=RAW)
    proto = build_onnx(random_model(VARIANT, input_size=SIZE).deploy(), metadata)
    onnx.save(proto, str(folder / "atto.onnx"))
    (folder / "ir").mkdir()
    xml = convert_onnx(proto, metadata, folder / "ir" / "atto.xml")
    return {"proto": proto, "metadata": metadata, "onnx": folder / "atto.onnx", "xml": xml}


@pytest.fixture(scope="module")
def fp16(tmp_path_factory):
    """The same model through export(): target openvino-fp16, top-k in the graph."""
    needs_engines()
    from deim_edge.export import ExportWarning, export

    folder = tmp_path_factory.mktemp("openvino-fp16")
    with pytest.warns(ExportWarning, match="RANDOM weights"):
        path = export(None, "openvino-fp16", variant=VARIANT, imgsz=SIZE, out=folder / "atto-fp16.xml")
    return path


def photo_batches(detector: Detector) -> list[np.ndarray]:
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in PHOTOS]
    return [detector.preprocess([image])[0].copy() for image in images]


def onnx_runtime(path: Path):
    from deim_edge.runtimes.onnxruntime import OnnxRuntime

    return OnnxRuntime(path, threads=1)


def test_export_writes_xml_and_bin_with_metadata(raw, fp16):
    import openvino as ov

    from deim_edge.runtimes.openvino import OpenVinoRuntime

    assert sorted(p.name for p in raw["xml"].parent.iterdir()) == ["atto.bin", "atto.xml"]
    assert sorted(p.name for p in fp16.parent.iterdir()) == ["atto-fp16.bin", "atto-fp16.xml"]  # no staging left

    fp32_meta = OpenVinoRuntime(raw["xml"], threads=1).metadata
    assert fp32_meta == raw["metadata"] and fp32_meta.precision == "fp32"
    fp16_meta = OpenVinoRuntime(fp16, threads=1).metadata
    assert (fp16_meta.variant, fp16_meta.input_size, fp16_meta.output, fp16_meta.precision, fp16_meta.batch) == (
        VARIANT, (SIZE, SIZE), TOPK, "fp16", 1)

    def constant_types(path: Path) -> set[str]:
        return {op.get_output_element_type(0).get_type_name() for op in ov.Core().read_model(path).get_ops()
                if op.get_type_name() == "Constant"}

    assert "f16" not in constant_types(raw["xml"])
    assert "f16" in constant_types(fp16)
    fp32_bin, fp16_bin = raw["xml"].with_suffix(".bin").stat().st_size, fp16.with_suffix(".bin").stat().st_size
    assert 0.45 < fp16_bin / fp32_bin < 0.55


def test_raw_outputs_equal_onnx_runtime(raw):
    import torch

    from deim_edge.runtimes.openvino import OpenVinoRuntime

    ours = OpenVinoRuntime(raw["xml"], threads=1)
    assert ours.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"  # fp32 default on CPU
    assert ours.float_precision == "f32"
    ref = onnx_runtime(raw["onnx"])
    rng = np.random.default_rng(0)
    inputs = photo_batches(Detector(raw["onnx"])) + [rng.uniform(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32)]
    for images in inputs:
        got, expected = ours.run(images), ref.run(images)
        assert {k: (v.dtype, v.shape) for k, v in got.items()} == {k: (v.dtype, v.shape) for k, v in expected.items()}
        assert_same_queries({"pred_logits": torch.from_numpy(got["logits"]),
                             "pred_boxes": torch.from_numpy(got["boxes"])},
                            expected["logits"], expected["boxes"], atol=1e-4)


def test_fp16_keeps_the_top_detections(raw, fp16):
    from deim_edge.compare import output_agreement
    from deim_edge.runtimes.openvino import OpenVinoRuntime

    import openvino as ov

    ours = OpenVinoRuntime(fp16, threads=1)  # the CPU's fastest float precision, OpenVINO's default
    assert ours.float_precision == ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    assert OpenVinoRuntime(fp16, threads=1, precision="f32").float_precision == "f32"
    ref = onnx_runtime(raw["onnx"])
    for images in photo_batches(Detector(raw["onnx"])):
        got = ours.run(images)
        assert got["labels"].dtype == np.int64 and got["scores"].dtype == np.float32
        outputs = ref.run(images)
        expected = dict(zip(("scores", "labels", "boxes"), decode(outputs["logits"], outputs["boxes"], 300)))
        assert output_agreement(expected, got, TOPK, top=100, min_iou=0.9).share >= 0.95


def test_detector_on_photos(raw, fp16):
    ours, ref = Detector(raw["xml"], conf=0.0, threads=1), Detector(raw["onnx"], conf=0.0, threads=1)
    assert ours.runtime.name == "openvino" and ours.metadata == ref.metadata
    half = Detector(fp16, conf=0.0, threads=1)
    for photo in PHOTOS:
        assert_same_detections(ours(str(photo))[:100], ref(str(photo))[:100], box_atol=0.01)
        dets = half(str(photo))
        assert len(dets) == 300 and dets.labels.dtype == np.int64 and dets.names == ref.names
    batched = ours([str(p) for p in PHOTOS])  # static batch 1: the Detector feeds one at a time
    for photo, dets in zip(PHOTOS, batched):
        assert_same_detections(dets, ours(str(photo)), box_atol=1e-3)


def test_runtime_needs_no_torch(raw):
    code = f"""
import sys
sys.modules["torch"] = None  # importing torch now fails
from deim_edge import Detector
dets = Detector({str(raw['xml'])!r}, conf=0.0, threads=1)({str(PHOTOS[0])!r})
assert "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
print(len(dets))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "300"


def test_onnx_file_opened_with_openvino(raw):
    ours = Detector(raw["onnx"], backend="openvino", conf=0.0, threads=1)
    ref = Detector(raw["onnx"], conf=0.0, threads=1)
    assert ours.runtime.name == "openvino" and ours.metadata == ref.metadata
    for photo in PHOTOS:
        assert_same_detections(ours(str(photo))[:100], ref(str(photo))[:100], box_atol=0.01)


def test_stream_gives_what_run_gives_in_order(raw):
    det = Detector(raw["xml"], conf=0.0, hint="throughput", threads=1)
    runtime = det.runtime
    frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in PHOTOS] * 3
    expected = [runtime.run(det.preprocess([f])[0]) for f in frames]

    def items():
        for i, frame in enumerate(frames):
            batch, transforms = det.preprocess([frame])  # the same buffer each time: stream copies at submit
            yield batch, (i, transforms)

    results = list(runtime.stream(items(), requests=3))
    assert [i for _, (i, _) in results] == list(range(len(frames)))
    for (outputs, _), ref in zip(results, expected):
        assert outputs.keys() == ref.keys()
        for name in ref:
            np.testing.assert_allclose(outputs[name], ref[name], rtol=0, atol=1e-6)
    outputs, (i, transforms) = results[0]
    assert_same_detections(det.postprocess(outputs, transforms)[0], det(frames[0], color="RGB"), box_atol=1e-3)

    for outputs, _ in runtime.stream(items()):  # stopping early waits for what is in flight
        break
    assert runtime.num_requests >= 1
    np.testing.assert_allclose(runtime.run(det.preprocess([frames[0]])[0])["logits"], expected[0]["logits"],
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_an_ir_that_disagrees_fails_the_export_check_and_leaves_nothing(raw, tmp_path: Path, monkeypatch, precision):
    import deim_edge.runtimes.openvino as runtime
    from deim_edge.export.openvino import convert_onnx
    from deim_edge.export.verify import verify_artifact
    from deim_edge.export.weights import random_model
    from deim_edge.formats import get_format

    class Shifted(runtime.OpenVinoRuntime):  # an IR whose boxes came out wrong
        def run(self, images):
            outputs = super().run(images)
            outputs["boxes"] = outputs["boxes"] + 0.2
            return outputs

    monkeypatch.setattr(runtime, "OpenVinoRuntime", Shifted)
    metadata = raw["metadata"].with_(precision=precision)
    with pytest.raises(ExportError, match="disagrees with PyTorch on a random input"):
        with staged_output(tmp_path / "atto.xml") as out:
            convert_onnx(raw["proto"], metadata, out)
            verify_artifact(out, random_model(VARIANT, input_size=SIZE).deploy(), metadata, get_format("openvino"))
    assert list(tmp_path.iterdir()) == []


def test_bad_model_files(raw, tmp_path: Path):
    import openvino as ov

    from deim_edge.runtimes.openvino import OpenVinoRuntime

    with pytest.raises(ModelFileError, match="not found"):
        Detector(tmp_path / "absent.xml")
    with pytest.raises(ModelFileError, match="not found"):
        OpenVinoRuntime(tmp_path / "absent.xml")
    image = ov.opset13.parameter([1, 3, 32, 32], np.float32, name="images")
    ov.save_model(ov.Model([ov.opset13.relu(image)], [image], "not-deim"), str(tmp_path / "other.xml"))
    with pytest.raises(ModelFileError, match="no deim-edge metadata.*--target openvino"):
        Detector(tmp_path / "other.xml")
    (tmp_path / "notes.xml").write_text("<notes>hello</notes>")
    with pytest.raises(ModelFileError, match="not an OpenVINO IR"):
        Detector(tmp_path / "notes.xml")
    (tmp_path / "lonely.xml").write_bytes(raw["xml"].read_bytes())
    with pytest.raises(ModelFileError, match="lonely.bin beside it"):
        Detector(tmp_path / "lonely.xml")
    (tmp_path / "cut.xml").write_bytes(raw["xml"].read_bytes())
    (tmp_path / "cut.bin").write_bytes(raw["xml"].with_suffix(".bin").read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="not a loadable OpenVINO model"):
        Detector(tmp_path / "cut.xml")


def test_bad_options(raw):
    from deim_edge.runtimes.openvino import OpenVinoRuntime

    with pytest.raises(ConfigError, match="hint must be one of latency, throughput"):
        OpenVinoRuntime(raw["xml"], hint="fast")
    with pytest.raises(ConfigError, match="precision must be one of f32, f16, bf16"):
        OpenVinoRuntime(raw["xml"], precision="int8")
    with pytest.raises(ConfigError, match="'TPU'.*devices here: CPU"):
        OpenVinoRuntime(raw["xml"], device="TPU")


def test_missing_openvino_names_the_extra(monkeypatch, tmp_path: Path):
    from deim_edge.runtimes.openvino import OpenVinoRuntime

    monkeypatch.setitem(sys.modules, "openvino", None)  # importing openvino now fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'deim-edge\[openvino\]'"):
        OpenVinoRuntime(tmp_path / "atto.xml")
