"""CoreML export and runtime. On any platform: the package's input and outputs (names, shapes, dtypes),
the ML program's ops and compute precision, the metadata and class labels, clear errors. Numerics:
Core ML itself runs only on macOS, so FP16 is checked as the same traced graph run by PyTorch in
float16 against float32 on the photos; the prediction tests (Core ML == ONNX Runtime) run on macOS."""

from __future__ import annotations

import collections
import json
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

ct = pytest.importorskip("coremltools", reason="coremltools is not installed: pip install 'deim-edge[coreml]'")
torch = pytest.importorskip("torch", reason="exporting needs torch")

from deim_edge import Detector, __version__  # noqa: E402
from deim_edge.errors import ConfigError, ModelFileError  # noqa: E402
from deim_edge.export import ExportWarning, export  # noqa: E402
from deim_edge.compare import output_agreement  # noqa: E402
from deim_edge.export.coreml import deployment_target, trace  # noqa: E402
from deim_edge.export.graph import wrap  # noqa: E402
from deim_edge.export.weights import random_model  # noqa: E402
from deim_edge.metadata import COCO_CLASSES, METADATA_KEY, RAW, TOPK, ArtifactMetadata  # noqa: E402
from deim_edge.preprocess import load_image, preprocess  # noqa: E402
from deim_edge.formats.coreml import read_metadata  # noqa: E402
from deim_edge.runtimes.coreml import CoremlRuntime  # noqa: E402
from deim_edge.variants import get_variant  # noqa: E402

DATA = Path(__file__).parent / "data"
PHOTOS = sorted((DATA / "images").glob("*.jpg"))
MACOS = platform.system() == "Darwin"
needs_macos = pytest.mark.skipif(not MACOS, reason="CoreML prediction needs macOS")
VARIANT = "deimv2-atto"
RAW_SIZE = (256, 320)  # non-square: catches height/width swaps
NAMES = [f"thing {i}, \"kind\" é" for i in range(80)]  # commas, quotes and accents survive the labels field
# the ML program ops a DEIMv2 converts to; anything else (a custom layer, a new lowering) must be looked at
KNOWN_OPS = {
    "abs", "add", "avg_pool", "cast", "clip", "concat", "const", "conv", "expand_dims", "floor_div", "gather",
    "gather_along_axis", "gelu", "layer_norm", "linear", "log", "matmul", "max_pool", "mul", "pad", "pow",
    "real_div", "reduce_max", "reduce_mean", "reduce_sum", "relu", "reshape", "resample", "rsqrt", "sigmoid",
    "sign", "silu", "slice_by_index", "softmax", "split", "squeeze", "stack", "sub", "tile", "topk", "transpose",
    "upsample_bilinear", "upsample_nearest_neighbor",
}
FLOAT16, FLOAT32, INT32 = 65552, 65568, 131104  # ArrayFeatureType data types
MIL_FP16, MIL_FP32, MIL_INT32 = 10, 11, 23  # MIL tensor data types


def _export(out: Path, target: str, variant: str = VARIANT, imgsz=320, **kwargs) -> tuple[Path, float]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ExportWarning, message=".*RANDOM weights")
        path = export(None, target, variant=variant, imgsz=imgsz, out=out, **kwargs)
    return path, time.perf_counter() - start


@pytest.fixture(scope="module")
def topk_fp16(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("coreml") / "atto.mlpackage", "coreml")[0]


@pytest.fixture(scope="module")
def raw_fp32(tmp_path_factory) -> Path:
    return _export(tmp_path_factory.mktemp("coreml") / "atto-raw.mlpackage", "coreml-fp32", imgsz=RAW_SIZE,
                   decode="host", class_names=NAMES, minimum_deployment_target="macos14")[0]


def spec_of(path: Path):
    return ct.utils.load_spec(str(path))


def interface(features) -> dict[str, tuple[tuple[int, ...], int]]:
    return {f.name: (tuple(f.type.multiArrayType.shape), f.type.multiArrayType.dataType) for f in features}


def program(spec) -> list:
    function = spec.mlProgram.functions["main"]
    return list(function.block_specializations[function.opset].operations)


def resamples(variant: str) -> int:
    """grid_sample calls: one per feature level in each decoder layer."""
    d = get_variant(variant).decoder
    return len(d.feat_strides) * d.num_layers


def output_dtypes(ops: list, op_type: str) -> set[int]:
    return {o.type.tensorType.dataType for op in ops if op.type == op_type for o in op.outputs}


def test_topk_package_interface(topk_fp16: Path) -> None:
    spec = spec_of(topk_fp16)
    assert topk_fp16.is_dir() and (topk_fp16 / "Manifest.json").is_file()
    assert [p.name for p in topk_fp16.parent.iterdir()] == ["atto.mlpackage"]  # no staging folder left
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion == 7  # iOS16 / macOS13, the default minimum_deployment_target
    assert interface(spec.description.input) == {"images": ((1, 3, 320, 320), FLOAT32)}
    assert interface(spec.description.output) == {
        "scores": ((1, 300), FLOAT32), "labels": ((1, 300), INT32), "boxes": ((1, 300, 4), FLOAT32)}
    assert [o.name for o in spec.description.output] == ["scores", "labels", "boxes"]


def test_raw_package_interface(raw_fp32: Path) -> None:
    spec = spec_of(raw_fp32)
    assert spec.specificationVersion == 8  # macOS14 as asked
    queries = get_variant(VARIANT).decoder.num_queries
    assert interface(spec.description.input) == {"images": ((1, 3, *RAW_SIZE), FLOAT32)}
    assert interface(spec.description.output) == {
        "logits": ((1, queries, 80), FLOAT32), "boxes": ((1, queries, 4), FLOAT32)}


def test_program_ops_and_precision(topk_fp16: Path, raw_fp32: Path) -> None:
    fp16, fp32 = program(spec_of(topk_fp16)), program(spec_of(raw_fp32))
    for ops in (fp16, fp32):
        types = collections.Counter(op.type for op in ops)
        assert set(types) <= KNOWN_OPS, f"unexpected ops: {set(types) - KNOWN_OPS}"
        assert types["resample"] == resamples(VARIANT)
    assert {"topk", "gather_along_axis", "gather"} <= {op.type for op in fp16}  # the in-graph decode
    assert output_dtypes(fp16, "gather") == {MIL_INT32}  # label / query looked up in integer tables, not float16
    assert output_dtypes(fp16, "topk") == {MIL_FP16, MIL_INT32}
    assert output_dtypes(fp16, "conv") == output_dtypes(fp16, "resample") == {MIL_FP16}  # FP16 compute
    assert output_dtypes(fp32, "conv") == output_dtypes(fp32, "resample") == {MIL_FP32}
    assert all(o.type.tensorType.dataType != MIL_FP16 for op in fp32 for o in op.outputs)


def test_metadata_and_labels(topk_fp16: Path, raw_fp32: Path) -> None:
    cases = ((topk_fp16, 320, COCO_CLASSES, TOPK, "fp16"), (raw_fp32, RAW_SIZE, NAMES, RAW, "fp32"))
    for path, size, names, layout, precision in cases:
        meta = read_metadata(path)
        assert meta == ArtifactMetadata.for_variant(VARIANT, input_size=size, class_names=names, output=layout,
                                                    precision=precision)
        spec = spec_of(path)
        fields = spec.description.metadata
        assert ArtifactMetadata.from_json(fields.userDefined[METADATA_KEY]) == meta
        assert json.loads(fields.userDefined["classes"]) == list(names)
        assert fields.author == f"deim-edge {__version__}" and fields.versionString == __version__
        assert VARIANT in fields.shortDescription and precision in fields.shortDescription
        assert "normalized" in spec.description.input[0].shortDescription


def test_metadata_is_rewritten_in_place(topk_fp16: Path, tmp_path: Path) -> None:
    import shutil

    from deim_edge.formats import get_format

    copy = tmp_path / topk_fp16.name
    shutil.copytree(topk_fp16, copy)
    changed = read_metadata(copy).with_(max_det=7, extra={"accuracy": {"drop": 0.1}})
    get_format("coreml").write_metadata(copy, changed)
    assert read_metadata(copy) == changed and sorted(p.name for p in tmp_path.iterdir()) == [copy.name]


def test_metadata_reads_without_torch_and_prediction_says_where_it_runs(topk_fp16: Path) -> None:
    code = f"""
import sys

class NoTorch:  # importing torch now fails (coremltools then leaves its torch frontend out)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is blocked")

sys.meta_path.insert(0, NoTorch())
from deim_edge.formats import read_metadata
print(read_metadata({str(topk_fp16)!r}).variant)
if sys.platform != "darwin":
    from deim_edge import Detector
    from deim_edge.errors import ModelFileError
    try:
        Detector({str(topk_fp16)!r})
    except ModelFileError as e:
        print(e)
assert "torch" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == VARIANT
    if not MACOS:
        assert f"CoreML runs on Apple platforms only (macOS/iOS); this machine is {platform.system()}" in lines[1]
        assert "use the .onnx/.tflite/.xml export here" in lines[1]


def test_bad_files_and_options_are_clear_errors(topk_fp16: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.mlpackage"
    empty.mkdir()
    with pytest.raises(ModelFileError, match="not a CoreML package"):
        Detector(empty)
    text = tmp_path / "notes.mlmodel"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="not a readable CoreML model|not a CoreML model"):
        read_metadata(text)
    with pytest.raises(ModelFileError, match="not found"):
        read_metadata(tmp_path / "absent.mlpackage")
    bare = tmp_path / "bare.mlpackage"  # a CoreML model, but not a deim-edge export
    shutil.copytree(topk_fp16, bare)
    spec_file = bare / "Data" / "com.apple.CoreML" / "model.mlmodel"
    spec = ct.proto.Model_pb2.Model()
    spec.ParseFromString(spec_file.read_bytes())
    del spec.description.metadata.userDefined[METADATA_KEY]
    spec_file.write_bytes(spec.SerializeToString())
    with pytest.raises(ModelFileError, match="without deim-edge metadata"):
        Detector(bare)
    with pytest.raises(ConfigError, match="compute_units must be one of ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE"):
        CoremlRuntime(topk_fp16, compute_units="GPU")


@pytest.mark.skipif(MACOS, reason="checks the message given off Apple platforms")
def test_runtime_off_macos_names_the_platform_and_the_alternatives(topk_fp16: Path) -> None:
    with pytest.raises(ModelFileError, match=rf"Apple platforms only \(macOS/iOS\); this machine is "
                                             rf"{platform.system()}.*use the .onnx/.tflite/.xml export here"):
        Detector(topk_fp16)


def test_deployment_target_is_validated_before_converting(tmp_path: Path) -> None:
    assert deployment_target("ios17") is ct.target.iOS17 and deployment_target("macOS13") is ct.target.macOS13
    assert deployment_target(ct.target.iOS16) is ct.target.iOS16
    with pytest.raises(ConfigError, match="'iOS14' is too old.*iOS15/macOS12"):
        deployment_target("iOS14")
    with pytest.raises(ConfigError, match="unknown minimum_deployment_target 'android'.*iOS16"):
        deployment_target("android")
    with pytest.raises(ConfigError, match="too old"):
        _export(tmp_path / "old.mlpackage", "coreml", minimum_deployment_target="macOS11")
    with pytest.raises(ConfigError, match="fixed batch size"):
        _export(tmp_path / "dynamic.mlpackage", "coreml", dynamic_batch=True)
    assert list(tmp_path.iterdir()) == []  # nothing left behind


def test_conversion_fixes_are_undone(topk_fp16: Path) -> None:
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    assert _TORCH_OPS_REGISTRY.name_to_func_mapping["linear"] is ops.linear
    assert _TORCH_OPS_REGISTRY.name_to_func_mapping["div"] is ops.div


@pytest.mark.parametrize("variant", ["deimv2-femto", "deimv2-pico", "deimv2-n",
                                     "deimv2-s"])
def test_variants_convert(variant: str, tmp_path: Path) -> None:
    """Each ultra-light variant (Atto: the fixtures) and S convert at their own input size."""
    v = get_variant(variant)
    path, _ = _export(tmp_path / f"{variant}.mlpackage", "coreml", variant=variant, imgsz=v.input_size)
    spec = spec_of(path)
    size = (v.input_size, v.input_size)
    assert interface(spec.description.input) == {"images": ((1, 3, *size), FLOAT32)}
    assert interface(spec.description.output) == {
        "scores": ((1, 300), FLOAT32), "labels": ((1, 300), INT32), "boxes": ((1, 300, 4), FLOAT32)}
    ops = collections.Counter(op.type for op in program(spec))
    assert set(ops) <= KNOWN_OPS, f"unexpected ops: {set(ops) - KNOWN_OPS}"
    assert ops["resample"] == resamples(variant) and ops["topk"] >= 1
    assert read_metadata(path) == ArtifactMetadata.for_variant(variant, input_size=size, output=TOPK,
                                                               precision="fp16")


def photo_batch(meta: ArtifactMetadata) -> torch.Tensor:
    batch, _ = preprocess([load_image(p) for p in PHOTOS], meta.input_size, resize=meta.resize, mean=meta.mean,
                          std=meta.std)
    return torch.from_numpy(batch)


@pytest.mark.parametrize("variant, size", [("deimv2-atto", 320),
                                           pytest.param("deimv2-pico", 640, marks=pytest.mark.slow)])  # 35-60 s
def test_fp16_keeps_the_top_detections_in_pytorch(variant: str, size: int) -> None:
    """What the FP16 package computes, approximated where Core ML cannot run: the traced graph in
    float16 (PyTorch CPU) keeps >= 95% of float32's top-100 detections (same label, IoU >= 0.9) on
    the photos. A traced float32 graph cannot be cast (its constants stay float32): the float16 module
    is traced itself."""
    model = random_model(variant, input_size=size).deploy()  # the weights a random-weights export uses
    meta = ArtifactMetadata.for_variant(variant, input_size=size, output=RAW, batch=len(PHOTOS))
    images = photo_batch(meta)
    module = wrap(model, meta)
    with torch.no_grad():
        fp32 = trace(module, images)(images)
        fp16 = trace(module.half(), images.half())(images.half())
    expected = {"logits": fp32[0].numpy(), "boxes": fp32[1].numpy()}
    got = {"logits": fp16[0].float().numpy(), "boxes": fp16[1].float().numpy()}
    for i in range(len(PHOTOS)):
        one = output_agreement({k: v[i:i + 1] for k, v in expected.items()},
                               {k: v[i:i + 1] for k, v in got.items()}, RAW).share
        assert one >= 0.95, f"{PHOTOS[i].name}: FP16 keeps {one:.0%} of the top-100 detections"


@pytest.fixture(scope="module")
def onnx_twins(tmp_path_factory) -> dict[str, Path]:
    """ONNX exports with the same random weights as the CoreML fixtures."""
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("onnx")
    return {"graph": _export(folder / "atto.onnx", "onnx", verify=False)[0],
            "host": _export(folder / "atto-raw.onnx", "onnx", imgsz=RAW_SIZE, decode="host", class_names=NAMES,
                            verify=False)[0]}


@needs_macos
def test_fp32_raw_outputs_equal_onnx_runtime(raw_fp32: Path, onnx_twins: dict[str, Path]) -> None:
    coreml = Detector(raw_fp32, compute_units="CPU_ONLY")
    ort = Detector(onnx_twins["host"], threads=1)
    for photo in PHOTOS:
        batch, _ = coreml.preprocess([load_image(photo)])
        ours, ref = coreml.infer(batch), ort.infer(batch)
        assert output_agreement(ref, ours, RAW).share >= 0.95
        np.testing.assert_allclose(np.sort(ours["logits"].ravel()), np.sort(ref["logits"].ravel()), atol=1e-3)


@needs_macos
@pytest.mark.parametrize("units", ["CPU_ONLY", "ALL"])
def test_fp16_detections_match_onnx_runtime(topk_fp16: Path, onnx_twins: dict[str, Path], units: str) -> None:
    coreml = Detector(topk_fp16, conf=0.0, compute_units=units)
    ort = Detector(onnx_twins["graph"], conf=0.0, threads=1)
    for photo in PHOTOS:
        batch, _ = coreml.preprocess([load_image(photo)])
        ours, ref = coreml.infer(batch), ort.infer(batch)
        assert ours["labels"].dtype == np.int64 and ours["scores"].dtype == np.float32
        assert output_agreement(ref, ours, TOPK).share >= 0.95
        a, b = coreml(str(photo)), ort(str(photo))
        assert len(a) == len(b) == 300


def test_exporting_again_replaces_the_package(tmp_path: Path, monkeypatch) -> None:
    import deim_edge.export.coreml as coreml_target

    def fake_export(model, metadata, out_path: Path, options) -> Path:  # the package folder, without converting
        (out_path / "Data").mkdir(parents=True)
        (out_path / "Manifest.json").write_text(json.dumps({"variant": metadata.variant}))
        return out_path

    monkeypatch.setattr(coreml_target, "export_coreml", fake_export)
    out = tmp_path / "atto.mlpackage"
    for _ in range(2):
        assert _export(out, "coreml")[0] == out
    assert sorted(p.name for p in out.iterdir()) == ["Data", "Manifest.json"]
