"""Bad input to the export, the accuracy gate, calibration and the bench never reaches a traceback or a wrong
answer: one `error: ...` line and exit status 2, before any long work starts (issue 17)."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from deim_edge.accuracy import ValSet
from deim_edge.bench.__main__ import main as bench_main
from deim_edge.calibration.data import check_calibration_data
from deim_edge.errors import CalibrationError, ConfigError
from deim_edge.export.__main__ import main as export_main
from deim_edge.metadata import ArtifactMetadata
from deim_edge.variants import get_variant

ATTO = ["--variant", "deimv2-atto"]


@pytest.fixture
def no_work(monkeypatch):
    """The export's first piece of work (loading the model) fails the test: every check comes before it."""
    from deim_edge.export import api

    def load(*args, **kwargs):
        raise AssertionError("the export started loading the model")

    monkeypatch.setattr(api, "_load", load)


def _one_error_line(capsys, argv, main=export_main) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


@pytest.mark.parametrize("argv, match", [
    (["--option", "opset=abc"], "option opset of target 'onnx' takes an integer, e.g. opset=17, got 'abc'"),
    (["--option", "opset=17.5"], "opset .* takes an integer"),
    (["--option", "simplify=no"], "simplify .* takes true or false, got 'no'"),
    (["--target", "trt-fp16", "--option", "workspace_gb=abc"], "workspace_gb .* takes a positive number"),
    (["--target", "trt-fp16", "--option", "dla_core=-1"], "dla_core .* takes an integer >= 0"),
    (["--option", "fp16=true"], "does not take option.*fp16.*its options are: opset, simplify, verify"),
    (["--option", "opset"], "--option takes KEY=VALUE, got 'opset'"),
    (["--max-drop", "nan"], "--max-drop must be a number of AP points >= 0, got nan"),
    (["--max-drop", "inf"], "--max-drop must be .* got inf"),
    (["--max-drop", "-1"], "--max-drop must be .* got -1"),
])
def test_option_values_are_checked_before_any_work(capsys, no_work, argv, match):
    assert re.search(match, _one_error_line(capsys, ATTO + argv))


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((32, 48, 3), 128, np.uint8))
    return path


def _unreadable(folder: Path) -> None:
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"junk")


@pytest.mark.parametrize("name, make, match", [
    ("calib", lambda p: None, "calibration data not found"),
    ("calib", Path.mkdir, "no images"),
    ("notes.txt", lambda p: p.write_text("notes"), "cannot calibrate on .*notes.txt"),
    ("calib", _unreadable, "OpenCV cannot read any of its 1 image files"),
    ("clip.mp4", lambda p: p.write_bytes(b"junk"), "OpenCV cannot open the video"),
    ("calib.json", lambda p: p.write_text("{}"), "not a readable COCO annotation file"),
])
def test_bad_calibration_data_is_reported_before_any_work(tmp_path, capsys, no_work, name, make, match):
    source = tmp_path / name
    make(source)
    with pytest.raises(CalibrationError, match=match):
        check_calibration_data(source)
    line = _one_error_line(capsys, ATTO + ["--target", "onnx-int8", "--calib-data", str(source)])
    assert str(source) in line


def test_usable_calibration_data_passes_the_check(tmp_path):
    check_calibration_data("synthetic")
    (tmp_path / "calib" / "a.jpg").parent.mkdir()
    (tmp_path / "calib" / "a.jpg").write_bytes(b"junk")  # skipped later, as one unreadable file among readable ones
    check_calibration_data(_image(tmp_path / "calib" / "sub" / "b.jpg").parent.parent)


def _coco(root: Path, images=None, annotations=None, categories=None, drop: str | None = None) -> Path:
    """A COCO folder of one image with one box; fields replaced as given, `drop` left out."""
    _image(root / "val" / "a.jpg")
    data = {"images": images or [{"id": 1, "file_name": "a.jpg", "height": 32, "width": 48}],
            "annotations": annotations if annotations is not None else [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 10], "area": 200, "iscrowd": 0}],
            "categories": categories or [{"id": 1, "name": "a"}]}
    data.pop(drop, None)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "instances_val.json").write_text(json.dumps(data))
    return root


def _box(**fields) -> list[dict]:
    return [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 10], "area": 200, "iscrowd": 0, **fields}]


@pytest.mark.parametrize("fields, match", [
    ({"drop": "images"}, "it has no 'images' list"),
    ({"drop": "annotations"}, "it has no 'annotations' list"),
    ({"annotations": _box(bbox=[4, 4, -20, 10])}, r"annotations\[0\] has bbox \[4, 4, -20, 10\]: its width and height"),
    ({"annotations": _box(bbox=[4, 4, 20])}, r"annotations\[0\] has bbox \[4, 4, 20\], not \[x, y, width, height\]"),
    ({"annotations": _box(image_id=7)}, r"annotations\[0\] has image_id 7, which is not in its 'images'"),
    ({"annotations": _box(category_id=9)}, r"annotations\[0\] has category_id 9, which is not in its 'categories'"),
    ({"annotations": []}, "has no box in its images .* nothing to score AP on"),
    ({"annotations": _box(iscrowd=1)}, "has no box in its images .* nothing to score AP on"),
    ({"images": [{"id": 1}]}, r"images\[0\] is not an object with id and file_name"),
])
def test_malformed_val_data_is_refused_naming_the_file(tmp_path, capsys, no_work, fields, match):
    root = _coco(tmp_path / "coco", **fields)
    with pytest.raises(ConfigError, match=match):
        ValSet.find(root)
    line = _one_error_line(capsys, ATTO + ["--val-data", str(root)])
    assert "instances_val.json" in line


def test_val_data_that_is_not_json_is_blamed_not_the_artifact(tmp_path, capsys, no_work):
    root = _coco(tmp_path / "coco")
    (root / "annotations" / "instances_val.json").write_text("images: none")
    line = _one_error_line(capsys, ATTO + ["--val-data", str(root)])
    assert "instances_val.json is not a COCO annotation file (JSON)" in line


def test_good_val_data_passes_and_a_subset_without_boxes_has_nothing_to_score(tmp_path):
    root = _coco(tmp_path / "coco", images=[{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "a.jpg"}],
                 annotations=_box(image_id=2))
    assert ValSet.find(root).max_images is None
    with pytest.raises(ConfigError, match="no box in the first 1 of its images"):
        ValSet.find(root, max_images=1)


def test_synthetic_coco_sets_pass_the_check(tmp_path):
    from deim_edge.training.data.synthetic import make_synthetic_coco

    make_synthetic_coco(tmp_path / "coco", num_images=4, split_val=0.5, image_size=(64, 96))
    ValSet.find(tmp_path / "coco")


@pytest.fixture
def loaded_then_stop(monkeypatch):
    """A model that loads instantly, and writing the artifact fails the test: the output path is checked before."""
    from deim_edge.export import api

    model = SimpleNamespace(variant=get_variant("deimv2-atto"), decoder=SimpleNamespace(num_classes=80),
                            input_size=(320, 320))
    monkeypatch.setattr(api, "_load", lambda *args: (model, None, None))

    def staged_output(path):
        raise AssertionError(f"the export started writing {path}")

    monkeypatch.setattr(api, "staged_output", staged_output)


def test_export_out_that_cannot_be_written_is_refused_before_the_export(tmp_path, capsys, loaded_then_stop):
    (tmp_path / "file").write_text("")
    line = _one_error_line(capsys, ATTO + ["--out", str(tmp_path / "file" / "atto.onnx")])
    assert "cannot write the output file" in line and "is a file, not a folder" in line
    if Path("/proc/self").is_dir():
        assert "cannot write the output file /proc/x.onnx" in _one_error_line(capsys, ATTO + ["--out", "/proc/x.onnx"])
    (tmp_path / "atto.onnx").mkdir()
    assert "is a folder; give a file path" in _one_error_line(capsys, ATTO + ["--out", str(tmp_path / "atto.onnx")])


@pytest.fixture
def no_timing(monkeypatch):
    import deim_edge.bench.__main__ as bench

    def benchmark(*args, **kwargs):
        raise AssertionError("the bench started timing")

    monkeypatch.setattr(bench, "benchmark", benchmark)


def test_bench_out_and_val_data_are_checked_before_timing(tmp_path, capsys, no_timing):
    (tmp_path / "file").write_text("")
    assert "is a file; give a folder path" in _one_error_line(
        capsys, ["model.onnx", "--out", str(tmp_path / "file")], bench_main)
    assert "is a file, not a folder" in _one_error_line(
        capsys, ["model.onnx", "--out", str(tmp_path / "file" / "runs")], bench_main)
    assert "is a file; give a folder path" in _one_error_line(
        capsys, ["compare", "a.json", "--out", str(tmp_path / "file")], bench_main)
    root = _coco(tmp_path / "coco", annotations=_box(bbox=[4, 4, 20, -1]))
    assert "width and height must be > 0" in _one_error_line(
        capsys, ["model.onnx", "--val-data", str(root), "--out", str(tmp_path / "runs")], bench_main)


def test_bench_ctrl_c_is_one_line_and_130(tmp_path, capsys, monkeypatch):
    import deim_edge.bench.__main__ as bench

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "benchmark", interrupted)
    assert bench_main(["model.onnx", "--out", str(tmp_path / "runs")]) == 130
    assert capsys.readouterr().err.strip().splitlines() == ["interrupted"]


def test_an_ap_of_minus_one_is_no_ap_in_the_table():
    from deim_edge.bench.report import _ap

    assert _ap({"ap": {"AP": -1.0}}) == "-" and _ap({"ap": {"AP": 0.4321}}) == "43.2"


# ------------------------------------------------------------------------------------------------- OpenVINO

def _relu_onnx():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    return helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y]),
                             opset_imports=[onnx.helper.make_opsetid("", 17)])


def test_openvino_telemetry_is_off_during_the_projects_calls(monkeypatch):
    ov = pytest.importorskip("openvino")
    pytest.importorskip("openvino_telemetry")
    from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker

    import deim_edge.export.openvino_int8 as int8
    from deim_edge.export.openvino import no_telemetry, onnx_to_openvino

    monkeypatch.setenv("CI", "no")
    with no_telemetry():  # what the converter and NNCF ask openvino_telemetry (disable_in_ci=True)
        assert OptInChecker().check(enable_opt_in_dialog=False, disable_in_ci=True) == ConsentCheckResult.DECLINED
    assert os.environ["CI"] == "no"
    monkeypatch.delenv("CI")
    with no_telemetry():
        pass
    assert "CI" not in os.environ

    seen = []
    convert = ov.convert_model
    monkeypatch.setattr(ov, "convert_model", lambda *a, **k: (seen.append(os.environ.get("CI")), convert(*a, **k))[1])
    onnx_to_openvino(_relu_onnx())

    def quantize(model, *args, **kwargs):
        seen.append(os.environ.get("CI"))
        return model

    fake_nncf = SimpleNamespace(quantize=quantize, Dataset=list, IgnoredScope=lambda **k: None,
                                AdvancedQuantizationParameters=lambda **k: None,
                                QuantizationPreset=SimpleNamespace(MIXED=None),
                                ModelType=SimpleNamespace(TRANSFORMER=None))
    monkeypatch.setattr(int8, "_import_nncf", lambda: (seen.append(os.environ.get("CI")), fake_nncf)[1])
    monkeypatch.setattr(int8, "_range_estimator", lambda nncf, method: None)
    monkeypatch.setattr(int8, "_nncf_output", lambda progress: contextlib.nullcontext())
    int8.quantize_openvino(_relu_onnx(), [np.zeros((1, 3), np.float32)], [])
    assert seen == ["true"] * 4 and "CI" not in os.environ  # convert; NNCF's import, convert, quantize


def test_openvino_int8_writes_the_searched_model_without_quantizing_again(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    import deim_edge.export.openvino_int8 as int8
    from deim_edge.export.openvino import onnx_to_openvino
    from deim_edge.formats.openvino import read_metadata

    def quantize(*args, **kwargs):
        raise AssertionError("NNCF ran again")

    monkeypatch.setattr(int8, "quantize_openvino", quantize)
    metadata = ArtifactMetadata(input_size=(32, 32), class_names=("a",), precision="int8",
                                extra={"int8": {"calib_method": "minmax"}})
    plan = SimpleNamespace(backend_model=onnx_to_openvino(_relu_onnx()))
    path = int8.export_openvino_int8(None, metadata, tmp_path / "m.xml", {"int8": plan})
    assert read_metadata(path) == metadata
