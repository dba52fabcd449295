"""The format records: one per artifact kind, read by the runtimes, the export targets, the demo and the bench."""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import pytest

from deim_edge.errors import ModelFileError
from deim_edge.export.registry import targets
from deim_edge.formats import FORMATS, format_of, get_format, read_metadata
from deim_edge.metadata import ArtifactMetadata
from deim_edge.runtimes import load_runtime, runtime_for


def test_each_suffix_and_name_belongs_to_one_format() -> None:
    suffixes = [s for f in FORMATS for s in f.suffixes]
    names = [n for f in FORMATS for n in f.names]
    assert len(suffixes) == len(set(suffixes)) and len(names) == len(set(names))
    for fmt in FORMATS:
        for suffix in fmt.suffixes:
            assert format_of(f"model{suffix.upper()}") is fmt
        for name in fmt.names:
            assert get_format(name) is fmt and runtime_for("x.onnx", name) == fmt.runtime


def test_every_record_points_at_code_that_exists() -> None:
    for fmt in FORMATS:
        assert importlib.util.find_spec(fmt.runtime_class.split(":")[0]) is not None, fmt.name
        if fmt.metadata is not None:
            assert importlib.util.find_spec(fmt.metadata) is not None, fmt.name
        if fmt.int8 is not None:
            assert importlib.util.find_spec(fmt.int8.split(":")[0]) is not None, fmt.name


def test_every_export_target_writes_a_known_format() -> None:
    for target in targets():
        fmt = get_format(target.format)
        assert target.suffix == fmt.suffixes[0]
        if target.precision == "int8":
            assert fmt.int8 is not None, target.name
        else:  # float artifacts are checked against PyTorch by the export
            assert target.precision in fmt.checks, target.name


def test_int8_hooks_load_and_differ_where_the_backends_do() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    hooks = {t.name: t.int8_hooks() for t in targets() if t.precision == "int8"}
    assert hooks["onnx-int8"].ships_qdq and hooks["trt-int8"].ships_qdq and hooks["trt-int8"].qdq_style == "trt"
    assert not hooks["tflite-int8"].ships_qdq and hooks["openvino-int8"].search_on is not None


def test_unknown_files_and_backends_are_refused_with_the_choices() -> None:
    with pytest.raises(ModelFileError, match=r"\(file type .bin\).*known suffixes: .onnx"):
        format_of("weights.bin")
    with pytest.raises(ModelFileError, match="unknown backend 'ncnn'; choose one of: onnxruntime, openvino"):
        get_format("ncnn")
    with pytest.raises(ModelFileError, match="model file not found"):
        load_runtime("missing.onnx")


def test_where_a_format_cannot_run_it_says_why() -> None:
    if platform.system() != "Darwin":
        reason = get_format("coreml").unavailable()
        assert "only on macOS" in reason or "coremltools" in reason
    if importlib.util.find_spec("tensorrt") is None:
        assert "tensorrt" in get_format("tensorrt").unavailable()
    assert get_format("torch").metadata is None


def test_metadata_is_read_and_rewritten_through_the_record(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["boxes"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, 32, 32])])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(ModelFileError, match="no deim-edge metadata"):
        read_metadata(path)
    metadata = ArtifactMetadata.for_variant("deimv2-atto", input_size=320, class_names=("a", "b"))
    get_format("onnx").write_metadata(path, metadata)
    assert read_metadata(path) == metadata  # read back without the onnx package
    assert onnx.load(str(path)).producer_name == "deim-edge"
    with pytest.raises(ModelFileError, match="carry no deim-edge metadata"):
        get_format("torch").read_metadata(tmp_path / "x.pth")
