"""TFLite / LiteRT: export through onnx2tf (fp32 with host decode, fp16 with in-graph top-k), the
metadata inside the flatbuffer, raw outputs against ONNX Runtime, Detector on photos, runtime options
and errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DATA, assert_same_queries

from deim_edge import Detector
from deim_edge.errors import ConfigError, MissingDependencyError, ModelFileError
from deim_edge.metadata import METADATA_KEY, RAW, TOPK, ArtifactMetadata
from deim_edge.formats.tflite import read_entries

pytest.importorskip("onnxruntime", reason="the checks compare with ONNX Runtime")
litert = pytest.importorskip("ai_edge_litert", reason="running .tflite files needs ai-edge-litert")

from deim_edge.runtimes.tflite import TfliteRuntime  # noqa: E402

VARIANT, SIZE = "deimv2-atto", 320
PHOTOS = sorted((DATA / "images").glob("*.jpg"))


def _export(folder: Path, target: str, decode: str, suffix: str) -> Path:
    pytest.importorskip("onnx2tf", reason="exporting to TFLite needs onnx2tf (pip install 'deim-edge[tflite]')")
    pytest.importorskip("tensorflow", reason="exporting to TFLite needs tensorflow (pip install 'deim-edge[tflite]')")
    from deim_edge.export import ExportWarning, export

    with pytest.warns(ExportWarning, match="RANDOM weights"):
        return export(None, target, variant=VARIANT, imgsz=SIZE, out=folder / f"atto{suffix}", decode=decode)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Path]:
    """ONNX exports of the same random-weight model (export(None, ...) builds it from seed 0)."""
    pytest.importorskip("onnx")
    from deim_edge.export import ExportWarning, export

    folder = tmp_path_factory.mktemp("onnx")
    with pytest.warns(ExportWarning, match="RANDOM weights"):
        return {decode: export(None, "onnx", variant=VARIANT, imgsz=SIZE, out=folder / f"atto-{decode}.onnx",
                               decode=decode, verify=False) for decode in ("host", "graph")}


@pytest.fixture(scope="module")
def fp32_raw(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("tflite"), "tflite", "host", ".tflite")


@pytest.fixture(scope="module")
def fp16_topk(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("tflite16"), "tflite-fp16", "graph", "-fp16.tflite")


def photo_batch(det: Detector, photo: Path) -> np.ndarray:
    batch, _ = det.preprocess([cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)])
    return batch.copy()


def inputs(det: Detector) -> list[np.ndarray]:
    """The photos, preprocessed, and one random image."""
    noise = np.random.default_rng(3).uniform(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32)
    return [photo_batch(det, p) for p in PHOTOS] + [noise]


def test_fp32_raw_outputs_match_onnxruntime(fp32_raw, reference):
    tfl, ort = Detector(fp32_raw, threads=1), Detector(reference["host"], threads=1)
    worst = 0.0
    for batch in inputs(tfl):
        got, ref = tfl.infer(batch), ort.infer(batch)
        assert_same_queries({"pred_logits": got["logits"], "pred_boxes": got["boxes"]}, ref["logits"], ref["boxes"])
        worst = max(worst, float(np.abs(got["boxes"] - ref["boxes"]).max()))
    print(f"fp32 boxes max |tflite - ort| = {worst:.2g}")


def test_fp16_keeps_the_top_detections(fp16_topk, reference):
    from deim_edge.compare import output_agreement

    tfl, ort = Detector(fp16_topk, threads=1), Detector(reference["graph"], threads=1)
    for batch in inputs(tfl):
        kept = output_agreement(ort.infer(batch), tfl.infer(batch), tfl.metadata.output, top=100).share
        assert kept >= 0.95, f"fp16 kept only {kept:.0%} of the top-100 detections"


def test_metadata_lives_inside_the_file(fp32_raw, fp16_topk, reference):
    for path, precision, layout in ((fp32_raw, "fp32", RAW), (fp16_topk, "fp16", TOPK)):
        entries = read_entries(path.read_bytes())
        meta = ArtifactMetadata.from_json(entries[METADATA_KEY])
        assert (meta.precision, meta.output, meta.variant) == (precision, layout, VARIANT)
        assert meta.input_size == (SIZE, SIZE)
        assert meta.batch == 1 and len(meta.class_names) == 80
        assert "min_runtime_version" in entries  # what the converter stored is kept
        assert TfliteRuntime(path, threads=1).metadata == meta
    onnx_meta = Detector(reference["host"]).metadata
    assert Detector(fp32_raw).metadata == onnx_meta  # same record, fp32 like the ONNX file


def test_outputs_are_named_and_typed_as_the_layout(fp32_raw, fp16_topk):
    raw = TfliteRuntime(fp32_raw, threads=1)
    assert raw.nhwc and raw.input_shape == (1, 3, SIZE, SIZE)
    out = raw.run(np.zeros((1, 3, SIZE, SIZE), np.float32))
    assert set(out) == {"logits", "boxes"} and out["logits"].shape == (1, 100, 80) and out["boxes"].shape == (1, 100, 4)
    assert all(v.dtype == np.float32 for v in out.values())
    top = TfliteRuntime(fp16_topk, threads=1).run(np.zeros((1, 3, SIZE, SIZE), np.float32))
    assert {k: (v.shape, v.dtype) for k, v in top.items()} == {
        "scores": ((1, 300), np.float32), "labels": ((1, 300), np.int64), "boxes": ((1, 300, 4), np.float32)}
    names = {d["name"] for d in raw.interpreter.get_output_details()}
    assert names == {"logits", "boxes"}  # renamed from onnx2tf's Identity, Identity_1


def test_detector_on_photos(fp32_raw, fp16_topk, reference):
    from deim_edge.decode import box_iou

    for path, onnx_path in ((fp32_raw, reference["host"]), (fp16_topk, reference["graph"])):
        det, ref = Detector(path, conf=0.0, threads=1), Detector(onnx_path, conf=0.0, threads=1)
        for photo in PHOTOS:
            a, b = det(str(photo))[:100], ref(str(photo))[:100]
            assert len(a) == len(b) == 100 and a.labels.dtype == np.int64 and a.names == b.names
            assert a.image_size == b.image_size
            iou = box_iou(b.xyxy, a.xyxy)
            iou[b.labels[:, None] != a.labels[None, :]] = 0
            assert (iou.max(1) >= 0.9).mean() >= 0.95
    # a batch of photos through the static batch of 1
    assert [len(d) for d in Detector(fp32_raw, conf=0.0)([str(p) for p in PHOTOS])] == [300] * len(PHOTOS)


def test_threads_and_xnnpack_options(fp32_raw):
    batch = np.random.default_rng(5).uniform(0, 1, (1, 3, SIZE, SIZE)).astype(np.float32)
    default = TfliteRuntime(fp32_raw).run(batch)
    for options in ({"threads": 1}, {"threads": 2}, {"threads": 1, "xnnpack": False}):
        runtime = TfliteRuntime(fp32_raw, **options)
        assert runtime.threads == options["threads"] and runtime.xnnpack == options.get("xnnpack", True)
        out = runtime.run(batch)  # other kernels: near-tied queries may trade places, so queries are matched
        assert_same_queries({"pred_logits": out["logits"], "pred_boxes": out["boxes"]}, default["logits"],
                            default["boxes"])
    det = Detector(fp32_raw, threads=1, xnnpack=False)
    assert det.runtime.xnnpack is False and det.runtime.threads == 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="threads"):
            TfliteRuntime(fp32_raw, threads=bad)
    with pytest.raises(ConfigError, match="fixed batch of 1"):
        TfliteRuntime(fp32_raw).run(np.zeros((2, 3, SIZE, SIZE), np.float32))
    with pytest.raises(ConfigError, match="expects images of shape"):
        TfliteRuntime(fp32_raw).run(np.zeros((1, 3, SIZE, SIZE + 32), np.float32))


def test_runtime_needs_no_torch(fp32_raw):
    code = f"""
import sys
sys.modules["torch"] = None  # importing torch now fails
from deim_edge import Detector
dets = Detector({str(fp32_raw)!r}, conf=0.0)({str(PHOTOS[0])!r})
assert len(dets) == 300 and not any(m.split(".")[0] in ("torch", "tensorflow", "onnx2tf") for m in sys.modules
                                     if sys.modules[m] is not None)
print(len(dets))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "300"


def test_metadata_reader_on_crafted_flatbuffers(tmp_path: Path):
    """A flatbuffer made with the TFLite schema: no metadata, then some entries (one outside the flatbuffer)."""
    flatbuffers = pytest.importorskip("flatbuffers")
    from ai_edge_litert import schema_py_generated as schema

    def build(entries: dict[str, bytes], external: bytes = b"") -> bytes:
        model = schema.ModelT()
        model.version = 3
        model.buffers = [schema.BufferT()]  # buffer 0 is the empty sentinel
        model.metadata = []
        for name, value in entries.items():
            buffer = schema.BufferT()
            buffer.data = list(value)
            model.buffers.append(buffer)
            entry = schema.MetadataT()
            entry.name, entry.buffer = name, len(model.buffers) - 1
            model.metadata.append(entry)
        model.metadata = model.metadata or None
        builder = flatbuffers.Builder(1024)
        builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())

    bare = build({})
    assert read_entries(bare) == {}
    (tmp_path / "bare.tflite").write_bytes(bare)
    with pytest.raises(ModelFileError, match="without deim-edge metadata"):
        TfliteRuntime(tmp_path / "bare.tflite")
    entries = {"a": b"one", METADATA_KEY: b'{"x": 1}', "empty": b""}
    assert read_entries(build(entries)) == entries
    with pytest.raises(ModelFileError, match="not a TFLite file"):
        read_entries(b"PK\x03\x04 not a flatbuffer")
    with pytest.raises(ModelFileError, match="not a valid TFLite file"):
        read_entries(build(entries)[:24])


def test_embedding_again_replaces_the_entry(fp32_raw):
    pytest.importorskip("tensorflow", reason="embedding uses the TFLite schema the tflite extra installs")
    from deim_edge.formats.tflite import embed

    meta = TfliteRuntime(fp32_raw).metadata.with_(max_det=7)
    entries = read_entries(embed(fp32_raw.read_bytes(), meta))
    assert ArtifactMetadata.from_json(entries[METADATA_KEY]).max_det == 7
    assert sorted(entries) == sorted(read_entries(fp32_raw.read_bytes()))  # replaced, not added


def test_bad_files_are_model_file_errors(fp32_raw, reference, tmp_path: Path):
    cases = {"random.tflite": np.random.default_rng(0).bytes(5000), "onnx.tflite": reference["host"].read_bytes(),
             "truncated.tflite": fp32_raw.read_bytes()[:2000], "empty.tflite": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelFileError):
            Detector(tmp_path / name)
    with pytest.raises(ModelFileError, match="not found"):
        Detector(tmp_path / "absent.tflite")


def test_missing_litert_names_the_extra(fp32_raw, monkeypatch):
    for module in ("ai_edge_litert", "ai_edge_litert.interpreter", "tflite_runtime", "tflite_runtime.interpreter",
                   "tensorflow"):
        monkeypatch.setitem(sys.modules, module, None)  # importing them now fails
    with pytest.raises(MissingDependencyError, match=r"pip install 'deim-edge\[tflite\]' \(or just ai-edge-litert"):
        Detector(fp32_raw)


def test_dynamic_batch_is_refused(tmp_path: Path):
    pytest.importorskip("onnx2tf", reason="exporting to TFLite needs onnx2tf")
    from deim_edge.export import ExportWarning, export

    with pytest.raises(ConfigError, match="fixed batch"), pytest.warns(ExportWarning, match="RANDOM weights"):
        export(None, "tflite", variant=VARIANT, imgsz=SIZE, out=tmp_path / "x.tflite", dynamic_batch=True)
    assert not list(tmp_path.iterdir())


def test_padded_grid_sample_is_the_same_op():
    """pad_grid_samples (which makes onnx2tf's fast GridSample exact) changes no value, also for points
    partly or wholly outside the map; other padding modes are left alone."""
    onnx = pytest.importorskip("onnx")
    import onnxruntime

    from deim_edge.export.tflite import pad_grid_samples

    rng = np.random.default_rng(0)
    feed = {"v": rng.normal(size=(2, 3, 5, 7)).astype(np.float32),
            "g": rng.uniform(-1.5, 1.5, (2, 11, 13, 2)).astype(np.float32)}
    for padding, rewritten in (("zeros", True), ("border", False)):
        node = onnx.helper.make_node("GridSample", ["v", "g"], ["y"], mode="bilinear", padding_mode=padding)
        graph = onnx.helper.make_graph(
            [node], "grid_sample",
            [onnx.helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v.shape) for k, v in feed.items()],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3, 11, 13])])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
        padded = pad_grid_samples(model)
        assert [n.op_type for n in padded.graph.node] == (["Pad", "Mul", "GridSample"] if rewritten else ["GridSample"])
        a, b = (onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
                .run(None, feed)[0] for m in (model, padded))
        np.testing.assert_allclose(b, a, atol=1e-5)
