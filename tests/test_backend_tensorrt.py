"""TensorRT backend. Here (no tensorrt, no GPU): the bundle an export writes instead of an engine (files,
the trtexec command, metadata round trip, its int32 ONNX against PyTorch in ONNX Runtime), the engine file
format, the version gate, the engine-cache key, the FP16-sensitive layers kept in FP32 on the real
graphs, the metadata read and rewritten and the runtime imported without TensorRT or torch, and the errors
without TensorRT. Building and running engines needs tensorrt and a CUDA GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

import deim_edge.export.tensorrt as trt_export  # noqa: E402
from deim_edge.compare import output_agreement  # noqa: E402
from deim_edge.errors import ConfigError, MissingDependencyError, ModelFileError  # noqa: E402
from deim_edge.export import ExportWarning, export  # noqa: E402
from deim_edge.export.__main__ import main  # noqa: E402
from deim_edge.export.graph import wrap  # noqa: E402
from deim_edge.export.onnx import build_onnx  # noqa: E402
from deim_edge.export.tensorrt import fp32_layers, prepare_onnx, trtexec_args  # noqa: E402
from deim_edge.export.weights import random_model  # noqa: E402
from deim_edge.formats import format_of, get_format  # noqa: E402
from deim_edge.formats.onnx import read_onnx_metadata  # noqa: E402
from deim_edge.formats.tensorrt import (MAGIC, read_bundle, read_engine_file, read_metadata,  # noqa: E402
                                        write_engine_file, write_metadata)
from deim_edge.metadata import METADATA_KEY, RAW, TOPK, ArtifactMetadata  # noqa: E402
from deim_edge.tensorrt.build import check_version, cuda_status, parse_version  # noqa: E402
from deim_edge.tensorrt.cuda import DeviceInfo  # noqa: E402
from deim_edge.tensorrt.fp32 import fp32_reason  # noqa: E402
from deim_edge.formats.tensorrt import BuildOptions  # noqa: E402
from deim_edge.tensorrt.runtime import TensorrtRuntime, cache_dir, engine_cache_key  # noqa: E402

VARIANT, SIZE = "deimv2-atto", (320, 320)
NO_ENGINE = cuda_status()  # None where tensorrt and a CUDA GPU are present; else what is missing
needs_gpu = pytest.mark.skipif(NO_ENGINE is not None, reason=f"needs tensorrt and a CUDA GPU: {NO_ENGINE}")
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def images_for(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (batch, 3, *SIZE)).astype(np.float32)


def run_onnx(path: Path, images: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"images": images})


def export_bundle(out: Path, **kwargs) -> Path:
    """The bundle a trt export writes where no engine can be built (forced, so this runs on GPU hosts too)."""
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mp.setattr(trt_export, "cuda_status", lambda device=0: "no tensorrt here (test)")
        path = export(None, kwargs.pop("target", "trt-fp16"), variant=VARIANT, imgsz=SIZE[0], out=out, **kwargs)
    assert any("Wrote the bundle" in str(w.message) for w in caught if issubclass(w.category, ExportWarning))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return export_bundle(tmp_path_factory.mktemp("trt") / "atto.engine")


@pytest.fixture(scope="module")
def s_graph() -> onnx.ModelProto:
    """deimv2-s (ViT backbone, hybrid encoder, 4 decoder layers) at 320, as the trt targets trace it."""
    metadata = ArtifactMetadata.for_variant("deimv2-s", input_size=SIZE, output=TOPK)
    model = random_model("deimv2-s", input_size=SIZE).deploy()
    return prepare_onnx(build_onnx(model, metadata), metadata)


# ---------------------------------------------------------------------------------------------- the bundle

def test_bundle_files_and_metadata_round_trip(bundle: Path) -> None:
    assert bundle.name == "atto.trt" and bundle.is_dir()
    assert sorted(p.name for p in bundle.iterdir()) == ["README.txt", "atto.onnx", "build.json", "build.sh",
                                                         "metadata.json"]
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["atto.trt"]  # no staging folder left behind
    record = json.loads((bundle / "build.json").read_text())
    assert record["onnx"] == "atto.onnx" and record["engine"] == "../atto.engine"
    assert record["options"] == {"precision": "fp16", "workspace_gb": 4.0, "dla_core": None, "max_batch": None,
                                 "timing_cache": None}
    metadata = ArtifactMetadata.from_json((bundle / "metadata.json").read_text())
    embedded = {p.key: p.value for p in onnx.load(str(bundle / "atto.onnx")).metadata_props}[METADATA_KEY]
    assert metadata == ArtifactMetadata.from_json(embedded)
    assert (metadata.variant, metadata.input_size, metadata.precision, metadata.output, metadata.batch) == (
        VARIANT, SIZE, "fp16", TOPK, 1)
    read = read_bundle(bundle)
    assert read.metadata == metadata and read.options == BuildOptions(precision="fp16")
    assert read.engine == bundle.parent / "atto.engine"
    readme = (bundle / "README.txt").read_text()
    assert "--build-engine atto.trt" in readme and "10.4" in readme and "FP32" in readme


def test_build_script_runs_the_exact_trtexec_command(bundle: Path, tmp_path: Path) -> None:
    script = bundle / "build.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    fake = tmp_path / "trtexec"  # prints the arguments it gets, one per line
    fake.write_text(f'#!/bin/sh\nfor a in "$@"; do echo "$a"; done > {tmp_path / "args.txt"}\n')
    fake.chmod(0o755)
    subprocess.run(["bash", str(script), "--verbose"], check=True, env={**os.environ, "TRTEXEC": str(fake)})
    args = (tmp_path / "args.txt").read_text().splitlines()
    flags = dict(a.split("=", 1) if "=" in a else (a, "") for a in args)
    assert args[:3] == ["--onnx=atto.onnx", "--saveEngine=atto.engine", "--memPoolSize=workspace:4096"]
    assert {"--fp16", "--skipInference", "--verbose"} <= set(args)
    assert flags["--precisionConstraints"] == "obey"
    precisions = dict(spec.rsplit(":", 1) for spec in flags["--layerPrecisions"].split(","))
    outputs = dict(spec.rsplit(":", 1) for spec in flags["--layerOutputTypes"].split(","))
    assert set(precisions.values()) == set(outputs.values()) == {"fp32"} and set(outputs) <= set(precisions)
    assert "/model/decoder/decoder/layers.0/self_attn/Softmax" in precisions
    assert "/TopK" in precisions and "/TopK" not in outputs  # int32 indices: no float output type for them
    assert not any(name.startswith("/model/backbone/") for name in precisions)
    assert "--minShapes" not in flags and "--useDLACore" not in flags  # fixed batch, no DLA


def test_trtexec_args_for_dynamic_batch_dla_timing_cache_and_fp32() -> None:
    dynamic = ArtifactMetadata.for_variant(VARIANT, input_size=(256, 320), batch=None)
    options = BuildOptions(precision="fp16", workspace_gb=2, dla_core=1, max_batch=4, timing_cache="/data/t.cache")
    args = trtexec_args("m.onnx", dynamic, options, ["/a/Softmax"], ["/a/Softmax"])
    assert args == ["--onnx=m.onnx", "--saveEngine=m.engine", "--memPoolSize=workspace:2048", "--fp16",
                    "--precisionConstraints=obey", "--layerPrecisions=/a/Softmax:fp32",
                    "--layerOutputTypes=/a/Softmax:fp32", "--minShapes=images:1x3x256x320",
                    "--optShapes=images:4x3x256x320", "--maxShapes=images:4x3x256x320", "--useDLACore=1",
                    "--allowGPUFallback", "--timingCacheFile=/data/t.cache", "--skipInference"]
    default = trtexec_args("m.onnx", dynamic, BuildOptions(precision="fp16"), [], [])
    assert "--maxShapes=images:8x3x256x320" in default and "--precisionConstraints=obey" not in default
    fp32 = trtexec_args("m.onnx", ArtifactMetadata.for_variant(VARIANT), BuildOptions(precision="fp32"), [], [])
    assert fp32 == ["--onnx=m.onnx", "--saveEngine=m.engine", "--memPoolSize=workspace:4096", "--noTF32",
                    "--skipInference"]


def test_fp32_bundle_has_no_fp16_flags(tmp_path: Path) -> None:
    bundle = export_bundle(tmp_path / "raw.engine", target="trt-fp32", decode="host")
    script = (bundle / "build.sh").read_text()
    assert "--noTF32" in script and "--fp16" not in script and "layerPrecisions" not in script
    assert read_bundle(bundle).metadata.output == RAW
    graph = onnx.load(str(bundle / "raw.onnx")).graph
    assert [o.name for o in graph.output] == ["logits", "boxes"]


def test_bundle_onnx_matches_pytorch_with_int32_labels(bundle: Path) -> None:
    graph = onnx.load(str(bundle / "atto.onnx")).graph
    types = {o.name: o.type.tensor_type.elem_type for o in graph.output}
    assert types == {"scores": onnx.TensorProto.FLOAT, "labels": onnx.TensorProto.INT32,
                     "boxes": onnx.TensorProto.FLOAT}
    module = wrap(random_model(VARIANT, input_size=SIZE).deploy(), read_bundle(bundle).metadata)
    for seed in (1, 2):  # the graph takes batches of 1
        images = images_for(1, seed)
        scores, labels, boxes = run_onnx(bundle / "atto.onnx", images)
        with torch.no_grad():
            ref_scores, ref_labels, ref_boxes = (t.numpy() for t in module(torch.from_numpy(images)))
        assert labels.dtype == np.int32 and ref_labels.dtype == np.int64
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)  # sorted scores: equal even where ties swap rows
        same = (labels == ref_labels) & (np.abs(boxes - ref_boxes).max(-1) <= 1e-4)
        assert same.mean() >= 0.98, f"only {same.mean():.1%} of the detections agree with PyTorch"


def test_int32_rewrite_leaves_int64_only_inside_topk(s_graph: onnx.ModelProto) -> None:
    inferred = onnx.shape_inference.infer_shapes(s_graph).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*inferred.value_info, *inferred.output]}
    made_int64 = [(n.op_type, o) for n in inferred.node if n.op_type != "Constant" for o in n.output
                  if types.get(o) == onnx.TensorProto.INT64]
    assert made_int64 and all(op == "TopK" for op, _ in made_int64)  # ONNX TopK indices are int64 by definition
    consumers = {x: n for n in inferred.node for x in n.input}
    assert all(consumers[o].op_type == "Cast" for _, o in made_int64 if o in consumers)
    assert types["labels"] == onnx.TensorProto.INT32


# ---------------------------------------------------------------------------------------------- FP16 layers

def test_fp16_sensitive_layers_on_the_atto_graph(bundle: Path) -> None:
    proto = onnx.load(str(bundle / "atto.onnx"))
    layers, outputs = fp32_layers(proto)
    chosen = set(layers)
    nodes = {n.name: n for n in proto.graph.node}
    by_op = lambda op: [name for name, n in nodes.items() if n.op_type == op]  # noqa: E731
    softmax = {n for n in by_op("Softmax") if not n.endswith("/self_attn/Softmax") or "/layers.0/" in n}
    assert len(softmax) == 7 and softmax <= chosen  # layer 0's attention, sampling weights, box distributions
    assert set(by_op("GridSample")) <= chosen and set(by_op("TopK")) <= chosen
    assert {n for n in by_op("MatMul") if n.startswith("/model/decoder/decoder/MatMul")} <= chosen  # the integral
    assert {n for n in by_op("Pow") if "/norm" in n} <= chosen  # RMSNorm: x^2 overflows FP16
    first_layer = [n for n in nodes if n.startswith("/model/decoder/decoder/layers.0/") and n in chosen]
    assert len(first_layer) > 30
    assert "/model/decoder/decoder/layers.1/self_attn/MatMul_3" in nodes
    assert "/model/decoder/decoder/layers.1/self_attn/MatMul_3" not in chosen  # later self-attention stays FP16
    assert not {n for n in by_op("Conv")} & chosen  # backbone and encoder stay FP16
    assert set(outputs) <= chosen and len(outputs) < len(layers)


def test_fp16_sensitive_layers_on_the_s_graph(s_graph: onnx.ModelProto) -> None:
    layers, _ = fp32_layers(s_graph)
    chosen = set(layers)
    nodes = {n.name: n.op_type for n in s_graph.graph.node}
    encoder = [n for n, op in nodes.items() if n.startswith("/model/encoder/encoder.0/") and op in
               ("MatMul", "Softmax", "LayerNormalization")]
    assert len(encoder) >= 7 and set(encoder) <= chosen  # the AIFI encoder layer: attention and norms
    vit0 = [n for n, op in nodes.items() if n.startswith("/model/backbone/dinov3/blocks.0/attn/") and op == "Softmax"]
    vit1 = [n for n, op in nodes.items() if n.startswith("/model/backbone/dinov3/blocks.1/attn/") and op == "Softmax"]
    assert vit0 and set(vit0) <= chosen and vit1 and not set(vit1) & chosen  # only the first ViT block
    gateway = [n for n in nodes if "/gateway/norm/Pow" in n]
    assert len(gateway) == 4 and set(gateway) <= chosen
    assert sum(op == "MatMul" and n in chosen for n, op in nodes.items()) < sum(op == "MatMul" for op in nodes.values())


def test_fp32_rule_reasons() -> None:
    assert "first layer" in fp32_reason("/model/decoder/decoder/layers.0/swish_ffn/w12/MatMul")
    assert "cross-attention" in fp32_reason("/model/decoder/decoder/layers.3/cross_attn/Softmax")
    assert "RMSNorm" in fp32_reason("/model/decoder/decoder/layers.2/gateway/norm/Pow")
    assert fp32_reason("/model/decoder/decoder/layers.2/swish_ffn/w12/MatMul") is None
    assert fp32_reason("/model/backbone/stages.2/blocks/blocks.0/layers.0/conv1/conv/Conv") is None
    assert fp32_reason("/model/decoder/decoder/layers.0/self_attn/Softmax_output_0") is not None  # tensor names too


# ---------------------------------------------------------------------------------------------- engine files

def header_for(metadata: ArtifactMetadata) -> dict:
    return {"format": 1, "deim_edge": json.loads(metadata.to_json()), "tensorrt": "10.3.0.30",
            "device": {"name": "Orin", "compute_capability": "8.7"}, "precision": metadata.precision}


def test_engine_file_round_trip(tmp_path: Path) -> None:
    metadata = ArtifactMetadata.for_variant(VARIANT, input_size=SIZE, output=TOPK, precision="fp16")
    payload = bytes(range(256)) * 40  # stands in for a serialized engine
    path = write_engine_file(tmp_path / "m.engine", header_for(metadata), payload)
    data = path.read_bytes()
    (size,) = struct.unpack("<I", data[8:12])
    assert data[:8] == MAGIC and json.loads(data[12:12 + size])["tensorrt"] == "10.3.0.30"
    assert data[12 + size:] == payload
    header, engine = read_engine_file(path)
    assert engine == payload and ArtifactMetadata.from_json(json.dumps(header["deim_edge"])) == metadata
    raw = tmp_path / "raw.engine"
    raw.write_bytes(payload)
    assert read_engine_file(raw) == (None, payload)
    for broken in (data[:10], data[:12 + size - 5], data[:12] + b"{not json" + data[21:]):
        (tmp_path / "broken.engine").write_bytes(broken)
        with pytest.raises(ModelFileError, match="rebuild it"):
            read_engine_file(tmp_path / "broken.engine")


def test_metadata_read_and_rewritten_without_tensorrt(tmp_path: Path, bundle: Path) -> None:
    metadata = ArtifactMetadata.for_variant(VARIANT, input_size=SIZE, precision="fp16")
    stamped = metadata.with_(extra={"accuracy": {"map": 0.5}})
    engine = write_engine_file(tmp_path / "m.engine", header_for(metadata), b"engine")
    assert format_of(engine).read_metadata(engine) == read_metadata(engine) == metadata
    write_metadata(engine, stamped)
    header, payload = read_engine_file(engine)
    assert payload == b"engine" and header["tensorrt"] == "10.3.0.30" and read_metadata(engine) == stamped
    raw = tmp_path / "raw" / "m.plan"
    raw.parent.mkdir()
    raw.write_bytes(b"engine")
    with pytest.raises(ModelFileError, match="metadata.json"):
        read_metadata(raw)
    (raw.parent / "metadata.json").write_text(metadata.to_json())
    assert read_metadata(raw) == metadata
    write_metadata(raw, stamped)
    assert read_metadata(raw) == stamped and raw.read_bytes() == b"engine"
    assert read_metadata(bundle) == read_bundle(bundle).metadata
    copy = tmp_path / "copy.trt"
    copy.mkdir()
    for name in ("build.json", "metadata.json", "atto.onnx"):
        (copy / name).write_bytes((bundle / name).read_bytes())
    write_metadata(copy, stamped.with_(precision="fp16", output=TOPK, batch=1))
    assert read_metadata(copy).extra == {"accuracy": {"map": 0.5}}


def test_tensorrt_package_imports_without_torch_onnx_or_tensorrt() -> None:
    code = ("import sys; sys.modules.update(torch=None, onnx=None)\n"
            "import deim_edge.tensorrt.runtime, deim_edge.tensorrt.build, deim_edge.formats.tensorrt\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('tensorrt', 'cuda') and sys.modules[m]]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_runtime_reads_files_before_it_needs_tensorrt(tmp_path: Path) -> None:
    raw = tmp_path / "raw.engine"
    raw.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError, match="metadata.json"):
        TensorrtRuntime(raw)
    with pytest.raises(ModelFileError, match="not a deim-edge TensorRT bundle"):
        TensorrtRuntime(tmp_path)
    (tmp_path / "not.onnx").write_bytes(b"\xff" * 10)
    with pytest.raises(ModelFileError, match="not an ONNX model"):
        TensorrtRuntime(tmp_path / "not.onnx")
    good = write_engine_file(tmp_path / "m.engine", header_for(ArtifactMetadata.for_variant(VARIANT)), b"engine")
    with pytest.raises(ConfigError, match="built already"):
        TensorrtRuntime(good, precision="fp16")


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed")
def test_missing_tensorrt_names_the_extra(tmp_path: Path, bundle: Path) -> None:
    good = write_engine_file(tmp_path / "m.engine", header_for(ArtifactMetadata.for_variant(VARIANT)), b"engine")
    for path in (good, bundle, bundle / "atto.onnx"):
        with pytest.raises(MissingDependencyError, match=r"pip install 'deim-edge\[tensorrt\]' \(on Jetson: TensorRT "
                                                         r"comes with JetPack\)"):
            TensorrtRuntime(path)


def test_onnx_metadata_without_the_onnx_package(bundle: Path) -> None:
    data = (bundle / "atto.onnx").read_bytes()
    assert read_onnx_metadata(data) == read_bundle(bundle).metadata
    bare = onnx.load_from_string(data)
    del bare.metadata_props[:]
    assert read_onnx_metadata(bare.SerializeToString()) is None
    with pytest.raises(ModelFileError, match="not an ONNX model"):
        read_onnx_metadata(b"\x0a\xff\xff\xff")


# ---------------------------------------------------------------------------------------------- gate and cache

def test_version_gate() -> None:
    assert parse_version("10.4.0.26") == (10, 4, 0, 26)
    assert parse_version("8.6.1.post1") == (8, 6, 1)
    for version in ("8.5.2.2", "8.4.1", "7.2.3"):
        with pytest.raises(MissingDependencyError, match="GridSample"):
            check_version(version, "fp32")
    with pytest.warns(ExportWarning, match="wrong or empty detections"):
        check_version("10.4.0.26", "fp16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for version, precision in (("10.4.0.26", "fp32"), ("10.3.0.30", "fp16"), ("10.6.0", "fp16"),
                                   ("8.6.2.3", "fp16"), ("10.13.3.9", "fp16")):
            assert check_version(version, precision)[:2] == parse_version(version)[:2]


def test_engine_cache_key_changes_with_what_makes_an_engine() -> None:
    device, options = DeviceInfo("Orin", "8.7"), BuildOptions(precision="fp16")
    base = engine_cache_key("ab" * 32, options, "10.3.0.30", device)
    assert base == engine_cache_key("ab" * 32, BuildOptions(precision="fp16"), "10.3.0.30", DeviceInfo("Orin", "8.7"))
    others = [engine_cache_key("cd" * 32, options, "10.3.0.30", device),
              engine_cache_key("ab" * 32, BuildOptions(precision="fp32"), "10.3.0.30", device),
              engine_cache_key("ab" * 32, BuildOptions(precision="fp16", max_batch=4), "10.3.0.30", device),
              engine_cache_key("ab" * 32, options, "10.6.0.26", device),
              engine_cache_key("ab" * 32, options, "10.3.0.30", DeviceInfo("Tesla T4", "8.7")),
              engine_cache_key("ab" * 32, options, "10.3.0.30", DeviceInfo("Orin", "7.2"))]
    assert len({base, *others}) == 7


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DEIM_EDGE_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "engines"
    monkeypatch.delenv("DEIM_EDGE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "deim-edge" / "engines"


def test_bad_options_fail_before_tracing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DLA"):
        export(None, "trt-fp32", variant=VARIANT, out=tmp_path / "a.engine", dla_core=0)
    with pytest.raises(ConfigError, match="dynamic-batch"):
        export(None, "trt-fp16", variant=VARIANT, out=tmp_path / "a.engine", max_batch=4)
    with pytest.raises(ConfigError, match="max_det"):
        export(None, "trt-fp16", variant=VARIANT, out=tmp_path / "a.engine", max_det=5000)
    with pytest.raises(ConfigError, match="workspace_gb"):
        BuildOptions(workspace_gb=0)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- --build-engine

@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed")
def test_build_engine_cli_without_tensorrt(bundle: Path, capfd) -> None:
    assert main(["--build-engine", str(bundle)]) == 2
    err = capfd.readouterr().err
    assert "pip install 'deim-edge[tensorrt]' (on Jetson: TensorRT comes with JetPack)" in err
    assert "Traceback" not in err
    assert not (bundle.parent / "atto.engine").exists()


def test_build_engine_cli_rejects_a_folder_that_is_not_a_bundle(tmp_path: Path, capfd) -> None:
    assert main(["--build-engine", str(tmp_path)]) == 2
    assert "not a deim-edge TensorRT bundle" in capfd.readouterr().err


# ---------------------------------------------------------------------------------------------- on a GPU

@pytest.fixture(scope="module")
def engines(tmp_path_factory, bundle: Path) -> dict[str, Path]:
    if NO_ENGINE is not None:
        pytest.skip(f"needs tensorrt and a CUDA GPU: {NO_ENGINE}")
    out = tmp_path_factory.mktemp("engines")
    return {"fp32": export(None, "trt-fp32", variant=VARIANT, imgsz=SIZE[0], out=out / "atto32.engine"),
            "fp16": export(None, "trt-fp16", variant=VARIANT, imgsz=SIZE[0], out=out / "atto16.engine"),
            "dynamic": export(None, "trt-fp32", variant=VARIANT, imgsz=SIZE[0], out=out / "dyn.engine",
                              decode="host", dynamic_batch=True, max_batch=4)}


@needs_gpu
def test_fp32_engine_matches_onnxruntime(engines: dict[str, Path], bundle: Path) -> None:
    header, _ = read_engine_file(engines["fp32"])
    assert header["precision"] == "fp32" and header["batch"] is None and header["device"]["compute_capability"]
    runtime = TensorrtRuntime(engines["fp32"])
    images = images_for(1)
    got = runtime.run(images)
    expected = dict(zip(("scores", "labels", "boxes"), run_onnx(bundle / "atto.onnx", images)))
    assert got["labels"].dtype == np.int64 and got["scores"].dtype == np.float32
    np.testing.assert_allclose(got["scores"], expected["scores"], atol=1e-3)
    check = get_format("tensorrt").checks["fp32"]
    agree = output_agreement(expected, got, TOPK, check.top, check.min_iou)
    assert agree.share >= check.min_share and agree.max_diff <= check.max_diff, agree


@needs_gpu
def test_fp16_engine_is_close_to_onnxruntime(engines: dict[str, Path], bundle: Path) -> None:
    header, _ = read_engine_file(engines["fp16"])
    assert header["precision"] == "fp16" and header["fp32_layers"] > 100
    got = TensorrtRuntime(engines["fp16"]).run(images_for(1))
    scores, _, _ = run_onnx(bundle / "atto.onnx", images_for(1))
    np.testing.assert_allclose(got["scores"], scores, atol=2e-2)


@needs_gpu
def test_dynamic_batch_engine_runs_any_batch(engines: dict[str, Path]) -> None:
    runtime = TensorrtRuntime(engines["dynamic"])
    assert runtime.dynamic and runtime.max_batch == 4 and runtime.metadata.batch is None
    many = runtime.run(images_for(6))  # two chunks
    assert many["logits"].shape[:2] == (6, 100) and many["boxes"].shape == (6, 100, 4)
    one = runtime.run(images_for(6)[4:5])
    np.testing.assert_allclose(one["logits"], many["logits"][4:5], atol=1e-4)


@needs_gpu
def test_runtime_builds_an_onnx_file_once(bundle: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="building a TensorRT fp16 engine"):
        first = TensorrtRuntime(bundle / "atto.onnx", precision="fp16", cache_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = TensorrtRuntime(bundle / "atto.onnx", precision="fp16", cache_dir=tmp_path)
    assert first.path == second.path and first.path.parent == tmp_path and len(list(tmp_path.iterdir())) == 1


@needs_gpu
def test_build_engine_cli_writes_the_engine_beside_the_bundle(bundle: Path, capfd) -> None:
    from deim_edge import Detector

    assert main(["--build-engine", str(bundle)]) == 0
    engine = bundle.parent / "atto.engine"
    assert capfd.readouterr().out.strip() == str(engine)
    images = sorted(p for p in (Path(__file__).parent / "data" / "images").glob("*.jpg"))
    assert Detector(engine, conf=0.0)(images[0]).scores.shape == (300,)
