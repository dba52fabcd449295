"""INT8: calibration sets, recipes, the accuracy gate, and the onnx-int8 / trt-int8 exports on the committed
trained Atto (the numbers of the issue's table come from benchmarks/int8_report.py)."""

from __future__ import annotations

import json
import warnings

import cv2
import numpy as np
import pytest

from deim_edge.calibration.data import coco_image_files, load_calibration
from deim_edge.calibration.gate import GateData, detection_agreement
from deim_edge.errors import AccuracyGateError, CalibrationError, ConfigError, ExportError
from deim_edge.metadata import ArtifactMetadata
from deim_edge.progress import ExportWarning
from deim_edge.results import Detections

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

META = ArtifactMetadata(input_size=(64, 96), class_names=("a", "b"))
CHECKPOINT_NAMES = ["circle", "square", "triangle", "ring"]


def _write_images(folder, n, size=(48, 64)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:03d}.jpg"), rng.integers(0, 255, (*size, 3), dtype=np.uint8))


def test_folder_is_searched_recursively_and_preprocessed_like_the_runtime(tmp_path):
    _write_images(tmp_path / "a", 3)
    _write_images(tmp_path / "b" / "c", 2)
    with pytest.warns(ExportWarning, match="fewer than 100"):
        cal = load_calibration(tmp_path, META, size=4, progress=False)
    assert cal.inputs.shape == (4, 3, 64, 96) and cal.inputs.dtype == np.float32
    assert len(cal.batches()) == 4 and cal.batches()[0].shape == (1, 3, 64, 96)
    assert cal.nhwc().shape == (4, 64, 96, 3)
    from deim_edge.preprocess import preprocess

    first = cv2.cvtColor(cv2.imread(cal.sources[0]), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(cal.inputs[0], preprocess([first], META.input_size)[0][0])


def test_fewer_images_than_asked_are_used_with_a_warning_and_unreadable_ones_are_counted(tmp_path):
    _write_images(tmp_path, 3)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = load_calibration(tmp_path, META, size=10, progress=False)
    messages = " ".join(str(w.message) for w in caught)
    assert len(cal) == 3 and len(cal.skipped) == 1
    assert "skipped 1 of 4" in messages and "only 3 readable images" in messages


@pytest.mark.parametrize("make, match", [
    (lambda p: p.mkdir(), "no images"),
    (lambda p: (p.mkdir(), (p / "x.jpg").write_bytes(b"junk")), "no readable images"),
    (lambda p: None, "not found"),
])
def test_unusable_calibration_data_is_a_clear_error(tmp_path, make, match):
    path = tmp_path / "calib"
    make(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CalibrationError, match=match):
            load_calibration(path, META, size=8, progress=False)


def test_size_below_one_is_refused(tmp_path):
    with pytest.raises(CalibrationError, match="at least 1"):
        load_calibration(tmp_path, META, size=0)


def test_coco_json_images_are_found_in_the_split_folder(tmp_path):
    _write_images(tmp_path / "val2017", 2)
    (tmp_path / "annotations").mkdir()
    ann = tmp_path / "annotations" / "instances_val2017.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "000.jpg"}, {"id": 2, "file_name": "001.jpg"}]}))
    assert [p.name for p in coco_image_files(ann)] == ["000.jpg", "001.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(load_calibration(ann, META, size=2, progress=False)) == 2
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "missing.jpg"}]}))
    with pytest.raises(CalibrationError, match="cannot find the images"):
        coco_image_files(ann)


def test_video_frames_are_spread_over_the_video(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(20):
        writer.write(np.full((48, 64, 3), i * 10, np.uint8))
    writer.release()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cal = load_calibration(path, META, size=5, progress=False)
    assert [s.rsplit("frame", 1)[1] for s in cal.sources] == ["0", "5", "10", "14", "19"]


def test_synthetic_calibration_is_deterministic():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = load_calibration("synthetic", META, size=3, progress=False)
        b = load_calibration("synthetic", META, size=3, progress=False)
    np.testing.assert_array_equal(a.inputs, b.inputs)


def test_agreement_counts_matches_iou_and_score_error():
    ref = Detections(np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 5, 5]], np.float32),
                     np.array([0.9, 0.8, 0.1]), np.array([0, 1, 0]))
    got = Detections(np.array([[0, 0, 10, 11], [20, 20, 30, 30]], np.float32), np.array([0.85, 0.8]),
                     np.array([0, 0]))  # the second has the wrong label
    a = detection_agreement([ref], [got])
    assert a["reference_detections"] == 2  # the 0.1 one is below REF_CONF
    assert a["matched"] == 0.5 and a["mean_iou"] == pytest.approx(100 / 110, abs=1e-4)
    assert a["score_error"] == pytest.approx(0.05, abs=1e-5)


def test_a_val_json_that_does_not_match_its_images_is_an_error(tmp_path):
    from deim_edge.calibration.gate import val_images

    _write_images(tmp_path / "val", 1)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "000.jpg", "height": 48, "width": 64},
                   {"id": 2, "file_name": "other.jpg", "height": 48, "width": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8], "area": 64, "iscrowd": 0}],
        "categories": [{"id": 1, "name": "a"}]}))
    data = GateData.find(tmp_path)
    pytest.importorskip("faster_coco_eval")
    with pytest.raises(ConfigError, match="1 of the 2 images .* does not match"):
        val_images(data.val)


# ---------------------------------------------------------------------------------- exports of the trained Atto

@pytest.fixture(scope="module")
def val_data(tmp_path_factory):
    from deim_edge.training.data import make_synthetic_coco

    root = tmp_path_factory.mktemp("heldout")
    make_synthetic_coco(root, num_images=150, image_size=320, seed=1, split_val=0.2)  # 30 held-out images
    return root


def _export(target, out, val_data, **kw):
    from deim_edge.demo import CHECKPOINT
    from deim_edge.export import export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export(CHECKPOINT, target, out=out, class_names=CHECKPOINT_NAMES, calib_data="synthetic",
                      calib_size=48, val_data=val_data, **kw)


def test_onnx_int8_keeps_ap_and_records_how(tmp_path, val_data):
    from deim_edge import Detector

    path = _export("onnx-int8", tmp_path / "atto-int8.onnx", val_data, max_drop=1.0)
    meta = Detector(path).metadata
    acc, int8 = meta.extra["accuracy"], meta.extra["int8"]
    assert meta.precision == "int8" and acc["metric"] == "AP" and acc["drop"] <= 1.0
    assert acc["reference_AP"] > 0.3 and acc["images"] == 30
    assert int8["recipe"] == "detr" and int8["int8_nodes"] > 100 and int8["calibration"]["images"] == 48
    assert not any(layer.startswith("/model/decoder") for layer in int8["float_layers"])
    import onnx

    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    report = json.loads((tmp_path / "atto-int8.onnx.accuracy.json").read_text())
    assert report["accuracy"]["drop"] == acc["drop"] and report["target"] == "onnx-int8"


def test_the_gate_fails_the_naive_recipe_and_writes_nothing(tmp_path, val_data):
    out = tmp_path / "naive.onnx"
    with pytest.raises(AccuracyGateError, match="fails the accuracy gate"):
        _export("onnx-int8", out, val_data, recipe="naive", max_drop=1.0)
    assert list(tmp_path.iterdir()) == []


def test_trt_int8_writes_an_explicit_precision_bundle_measured_in_onnx_runtime(tmp_path, val_data):
    pytest.importorskip("onnx")
    from deim_edge.tensorrt.build import cuda_status

    if cuda_status() is None:
        pytest.skip("a CUDA GPU with TensorRT is here: this test checks the bundle written without one")
    import onnx

    path = _export("trt-int8", tmp_path / "atto.engine", val_data, max_drop=3.0)  # the first plan: no search
    assert path.suffix == ".trt" and path.is_dir()
    graph = onnx.load(str(path / "atto.onnx"))
    zero_points = [onnx.numpy_helper.to_array(i) for i in graph.graph.initializer if i.name.endswith("_zero_point")]
    assert zero_points and not any(z.any() for z in zero_points)  # symmetric: what TensorRT's explicit precision needs
    assert {z.dtype for z in zero_points} <= {np.dtype(np.int8), np.dtype(np.int32)}  # int8 (int32: conv biases)
    assert "--int8" in (path / "build.sh").read_text()
    meta = json.loads((path / "metadata.json").read_text())
    assert meta["precision"] == "int8" and meta["extra"]["accuracy"]["measured"].startswith("QDQ ONNX")


def test_int8_without_calibration_data_is_refused_before_any_work(tmp_path):
    from deim_edge.export import export

    with pytest.raises(ConfigError, match="--calib-data"):
        export(None, "onnx-int8", variant="deimv2-atto", out=tmp_path / "x.onnx")
    with pytest.raises(ConfigError, match="calib-method"):
        export(None, "onnx-int8", variant="deimv2-atto", calib_data="synthetic", calib_method="kl")


def test_openvino_int8_quantizes_the_plan_with_nncf_and_is_measured_as_written(tmp_path, val_data):
    pytest.importorskip("nncf")
    from deim_edge import Detector

    path = _export("openvino-int8", tmp_path / "atto.xml", val_data, max_drop=1.0)
    meta = Detector(path).metadata
    assert meta.precision == "int8" and meta.extra["accuracy"]["measured"] == ".xml artifact"
    assert meta.extra["accuracy"]["drop"] <= 1.0
    xml = path.read_text()
    assert xml.count('type="FakeQuantize"') > 40  # weights and activations of the INT8 layers (Atto: 47)
    # the float layers in this CPU's half precision (bf16 with AVX512-BF16 or AMX): measured too, and used by the
    # runtime only where the export allowed it; without a half precision here, nothing of it is recorded
    from deim_edge.metadata import HALF_FLOAT_OPS
    from deim_edge.runtimes.openvino import OpenVinoRuntime, half_precision_options

    half = half_precision_options()
    runtime = OpenVinoRuntime(path, threads=1)
    if half is None:
        assert "half_float_ops" not in meta.extra["accuracy"] and runtime.float_precision == "f32"
        return
    trial = meta.extra["accuracy"]["half_float_ops"]
    assert trial["precision"] == half["precision"] and trial["allowed"] == (trial["drop"] <= 1.0)
    assert (HALF_FLOAT_OPS in meta.extra) == trial["allowed"]
    assert runtime.float_precision == (half["precision"] if trial["allowed"] else "f32")


def test_tflite_int8_records_its_mode_and_accuracy(tmp_path, val_data):
    pytest.importorskip("onnx2tf")
    from deim_edge import Detector

    # 48 calibration scenes, 30 images: the gate's figures, not the accuracy claim (benchmarks/results/int8-*.md,
    # 200 and 200: -0.35 / -0.42 AP); the search's plan is measured on ONNX Runtime, the gate on the .tflite
    path = _export("tflite-int8", tmp_path / "atto.tflite", val_data, max_drop=3.0)
    meta = Detector(path).metadata
    assert meta.extra["int8"]["tflite_mode"] == "mixed"
    assert meta.extra["accuracy"]["drop"] <= 3.0 and meta.extra["accuracy"]["measured"] == ".tflite artifact"
    assert meta.extra["accuracy"]["matched"] >= 0.95
    # every int8 ADD is one XNNPACK takes (the affine shifts' constants at their output's scale)
    from deim_edge.export.tflite_int8 import ADD, INT8, XNNPACK_ADD_SCALES
    from deim_edge.formats.tflite import schema

    model = schema().ModelT.InitFromPackedBuf(bytearray(path.read_bytes()), 0)
    graph = model.subgraphs[0]
    adds = [op for op in graph.operators if model.operatorCodes[op.opcodeIndex].builtinCode == ADD
            and graph.tensors[op.outputs[0]].type == INT8]
    assert adds
    for op in adds:
        out_scale = graph.tensors[op.outputs[0]].quantization.scale[0]
        for i in op.inputs:
            ratio = graph.tensors[i].quantization.scale[0] / out_scale
            assert XNNPACK_ADD_SCALES[0] <= ratio < XNNPACK_ADD_SCALES[1], graph.tensors[i].name


def test_coreml_int8_has_int8_weights_outside_the_decoder(tmp_path, val_data):
    ct = pytest.importorskip("coremltools")
    import platform

    path = _export("coreml-int8", tmp_path / "atto.mlpackage", val_data)
    from deim_edge.formats import read_metadata

    assert read_metadata(path).precision == "int8"
    program = ct.models.MLModel(str(path), skip_model_load=True).get_spec().mlProgram
    ops = [op for block in program.functions["main"].block_specializations.values() for op in block.operations]
    quantized = [op for op in ops if op.type.startswith("constexpr_")]
    assert len(quantized) > 20
    assert not any("decoder" in o.name for q in quantized for o in q.outputs)
    if platform.system() != "Darwin":
        assert not (tmp_path / "atto.mlpackage.accuracy.json").exists()  # CoreML runs on Apple platforms only


def test_recipes_keep_the_decoder_float_and_naive_does_not():
    pytest.importorskip("onnx")
    from onnx import helper

    from deim_edge.calibration.recipe import layer_of, make_plan

    names = ["/model/backbone/stem/stem1/conv/Conv", "/model/backbone/stem/stem1/act/Relu",
             "/model/encoder/fpn_block/cv1/conv_bn_fused/Conv", "/model/decoder/decoder/layers.0/cross_attn/"
             "sampling_offsets/MatMul", "/model/decoder/decoder/Softmax", "/TopK"]
    ops = ["Conv", "Relu", "Conv", "MatMul", "Softmax", "TopK"]
    graph = helper.make_graph([helper.make_node(op, [], [f"out{i}"], name=n) for i, (op, n) in
                               enumerate(zip(ops, names))], "g", [], [])
    proto = helper.make_model(graph)
    detr, naive = make_plan(proto, "detr"), make_plan(proto, "naive")
    assert list(detr.layers) == ["/model/backbone/stem", "/model/encoder/fpn_block/cv1"]  # the stem is one unit
    assert detr.nodes == names[:3]
    assert set(naive.nodes) == set(names)
    assert detr.keep_float("/model/backbone/stem").nodes == [names[2]]
    assert layer_of(names[2]) == "/model/encoder/fpn_block/cv1"
    with pytest.raises(ConfigError, match="recipe"):
        make_plan(proto, "everything")


def test_onnx_runtime_plan_leaves_attention_products_float():
    """A ViT backbone's attention products (q @ k, attn @ v) stay float where ONNX Runtime runs them (it would also
    run the softmax between them as QLinearSoftmax; deimv2-s got slower than FP32); OpenVINO asks for them."""
    from onnx import helper, numpy_helper

    from deim_edge.calibration.recipe import make_plan

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["q"], name="/model/backbone/blocks.0/attn/qkv/MatMul"),
             helper.make_node("MatMul", ["q", "x"], ["s"], name="/model/backbone/blocks.0/attn/MatMul"),
             helper.make_node("Softmax", ["s"], ["a"], name="/model/backbone/blocks.0/attn/Softmax")]
    proto = helper.make_model(helper.make_graph(nodes, "g", [], [], [weight]))
    from deim_edge.export.onnx import INT8_HOOKS

    assert not INT8_HOOKS.activation_products  # ONNX Runtime's choice
    assert make_plan(proto, "detr", activation_products=False).nodes == ["/model/backbone/blocks.0/attn/qkv/MatMul"]
    both = ["/model/backbone/blocks.0/attn/qkv/MatMul", "/model/backbone/blocks.0/attn/MatMul"]
    assert make_plan(proto, "detr").nodes == both  # the other backends' (OpenVINO: deimv2-s faster with them)


def test_the_search_moves_the_most_sensitive_layers_back_until_within_budget():
    from deim_edge.calibration.recipe import Plan
    from deim_edge.calibration.sensitivity import search

    plan = Plan("detr", {"a": ("a1",), "b": ("b1",), "c": ("c1",)}, ("Conv",))
    cost = {"a": 0.2, "b": 1.5, "c": 0.6}  # what each INT8 layer costs in AP points
    measure = lambda p: {"drop": round(sum(cost[k] for k in p.layers if k not in p.float_layers), 3)}  # noqa: E731
    ranked = []

    def ranking():
        ranked.append(1)
        return [("b", 0.9), ("c", 0.5), ("a", 0.1)]

    chosen, figures, rounds = search(plan, measure, ranking, budget=1.0, fail=True)
    assert chosen.float_layers == ("b",) and figures["drop"] == 0.8 and len(rounds) == 2 and ranked == [1]
    chosen, figures, _ = search(plan, measure, ranking, budget=3.0, fail=True)
    assert chosen.float_layers == () and len(ranked) == 1  # within budget: no sensitivity analysis at all
    with pytest.raises(AccuracyGateError, match="could not keep"):
        search(Plan("detr", {"b": ("b1",)}, ("Conv",)), lambda p: {"drop": 2.0, "metric": "agreement",
               "matched": 0.98, "reference_detections": 10, "mean_iou": 0.9, "score_error": 0.01, "images": 1},
               lambda: [("b", 1.0)], budget=1.0, fail=True)


def test_the_gate_measures_a_float_export_too(tmp_path, val_data):
    from deim_edge import Detector

    path = _export("onnx", tmp_path / "atto.onnx", val_data, max_drop=0.05)
    acc = Detector(path).metadata.extra["accuracy"]
    assert acc["metric"] == "AP" and abs(acc["drop"]) <= 0.05 and acc["matched"] == 1.0
    assert acc["mean_iou"] > 0.999 and acc["measured"] == ".onnx artifact"


def test_openvino_scope_takes_a_gemm_whose_reshapes_openvino_folded_in():
    """ViT MLPs (deimv2-s to x): onnxslim writes MatMul + Add as Reshape -> Gemm -> Reshape, and OpenVINO's
    conversion folds the reshape into its MatMul (the op then carries both nodes' names, as seen in deimv2-s's
    first block); the MatMul is still the Gemm's, and INT8, not an error."""
    pytest.importorskip("nncf")
    from onnx import TensorProto, helper, numpy_helper

    from deim_edge.export.openvino_int8 import float_op_names

    gemm, post = "/model/backbone/mlp/fc1/MatMul_output_0", "/model/backbone/mlp/fc1/MatMul_output_0_post_reshape"
    inits = [numpy_helper.from_array(np.ones((8, 16), np.float32), "W"),
             numpy_helper.from_array(np.zeros(16, np.float32), "B"),
             numpy_helper.from_array(np.array([1, 4, 16], np.int64), "back")]
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["g"], name=gemm),
             helper.make_node("Reshape", ["g", "back"], ["y"], name=post)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ops = {f"{gemm}/WithoutBiases": frozenset({gemm, post}), gemm: frozenset({gemm})}  # OpenVINO op -> ONNX nodes
    assert float_op_names(proto, ops, [gemm]) == set()
    with pytest.raises(ExportError, match="match no OpenVINO op"):  # a MatMul with a float node folded in: refused
        float_op_names(proto, {f"{gemm}/WithoutBiases": frozenset({gemm, "other"})}, [gemm])
