"""Rockchip RKNN: the rknn and rknn-int8 targets convert the npu graph with rknn-toolkit2 in its own Python (named
by DEIM_EDGE_RKNN_PYTHON; those tests skip without it), check and measure the models in the toolkit's simulator,
and write the metadata beside them; what needs no toolkit (the worker's protocol, the pixels the models take, the
errors given before any work, the board runtime's missing piece) runs everywhere."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from deim_edge import Detector
from deim_edge.errors import AccuracyGateError, ConfigError, ExportError, MissingDependencyError, ModelFileError
from deim_edge.formats import format_of, read_metadata
from deim_edge.formats.rknn import pixels, stage_files, write_metadata
from deim_edge.metadata import RAW, ArtifactMetadata
from deim_edge.preprocess import preprocess

pytest.importorskip("torch")
pytest.importorskip("onnx")

from deim_edge.export import export  # noqa: E402
from deim_edge.export import rknn_worker  # noqa: E402
from deim_edge.export.rknn_toolkit import ENV, WORKER, Simulator  # noqa: E402

BUNDLED = Path(__file__).parent.parent / "deim_edge" / "assets" / "deimv2-atto-synthetic.pth"
NAMES = ["circle", "square", "triangle", "ring"]
RKNN_PYTHON = os.environ.get(ENV)
needs_toolkit = pytest.mark.skipif(not RKNN_PYTHON, reason=f"no rknn-toolkit2 environment: set {ENV} to its "
                                                             f"python (python3.11 -m venv rknn-env && rknn-env/bin/"
                                                             f"pip install rknn-toolkit2==2.3.2)")
META = ArtifactMetadata(input_size=(64, 96), class_names=("a",), output=RAW, precision="fp16")


# ------------------------------------------------------------------------------------- without the toolkit

@pytest.mark.parametrize("mean, std", [(None, None), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
def test_the_models_take_the_pixels_detector_preprocessed(mean, std):
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    batch, _ = preprocess([image], (64, 96), mean=mean, std=std)
    np.testing.assert_array_equal(pixels(batch, META.with_(mean=mean, std=std)), image[None])


def test_the_worker_reports_the_toolkit_it_finds():
    probe = subprocess.run([sys.executable, str(WORKER), "--version"], capture_output=True, text=True, check=True)
    assert json.loads(probe.stdout) == {"toolkit": None}  # this environment never holds rknn-toolkit2


def test_a_failing_toolkit_call_reports_the_toolkits_own_error_lines(tmp_path):
    log = tmp_path / "toolkit.log"
    log.write_text("I earlier run\n")
    start = log.stat().st_size

    def build(**_):
        with open(log, "a") as f:  # as the toolkit logs: colored, with its version and traceback lines
            f.write("\x1b[1;31mE\x1b[0m build: The input shape (1, 8, 8, 3) is wrong!\n"
                    "E rknn-toolkit2 version: 2.3.2\nE build: Traceback (most recent call last):\n"
                    "E build: The input shape (1, 8, 8, 3) is wrong!\n")
        return -1

    with pytest.raises(rknn_worker.ToolkitError, match=r"^build failed: build: The input shape \(1, 8, 8, 3\) is "
                                                       r"wrong!$"):
        rknn_worker.call(str(log), "build", build)
    assert rknn_worker.errors(str(log), start).count("wrong") == 1
    assert rknn_worker.call(str(log), "inference", lambda: [np.zeros(1)])[0].shape == (1,)


def test_the_worker_ends_with_the_error_and_the_parent_raises_it(tmp_path):
    job = {"platform": "rk3588", "mean": [0, 0, 0], "std": [255, 255, 255], "log": str(tmp_path / "toolkit.log"),
           "stages": [{"onnx": "m.onnx", "rknn": str(tmp_path / "m.rknn"), "quantize": False, "dataset": None,
                       "algorithm": None}]}
    with pytest.raises(ExportError, match="rknn-toolkit2 failed: ModuleNotFoundError: No module named 'rknn'"):
        Simulator(sys.executable, job, META, tmp_path)  # this Python has no toolkit: the build cannot start
    with pytest.raises(ExportError, match=r"worker ended without answering \(exit status 0\); the end of its log: "
                                          r"I loading \| I built$"):
        (tmp_path / "toolkit.log").write_text("I loading\rI built\n")
        Simulator(shutil.which("true"), job, META, tmp_path)  # a worker that dies silently


def test_without_an_rknn_python_the_export_says_how_to_make_one_before_any_work(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(MissingDependencyError, match=r"python3.11 -m venv rknn-env && rknn-env/bin/pip install "
                                                     r"rknn-toolkit2==2.3.2.*--option rknn_python="):
        export("no-such-checkpoint.pth", "rknn")  # refused before the checkpoint is read
    with pytest.raises(MissingDependencyError, match="has no rknn-toolkit2"):
        export("no-such-checkpoint.pth", "rknn", rknn_python=sys.executable)
    with pytest.raises(MissingDependencyError, match="no Python at /no/such/python"):
        export("no-such-checkpoint.pth", "rknn", rknn_python="/no/such/python")


def test_a_platform_the_toolkit_does_not_know_and_another_profile_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="rknn-toolkit2 builds for rk2118, rk3562, .*rk3588.*; got platform='rk9999'"):
        export("no-such-checkpoint.pth", "rknn", platform="rk9999")
    with pytest.raises(ConfigError, match="rknn converts the npu profile's graph: leave --profile out"):
        export("no-such-checkpoint.pth", "rknn", profile="default")
    with pytest.raises(ConfigError, match="rknn-int8 has no 'percentile' calibration"):
        export("no-such-checkpoint.pth", "rknn-int8", calib_data="synthetic", calib_method="percentile")


def test_an_rknn_file_needs_its_metadata_and_stages_beside_it(tmp_path):
    model = tmp_path / "atto.rknn"
    model.write_bytes(b"RKNN")
    with pytest.raises(ModelFileError, match=r"no deim-edge metadata beside it \(atto.json\)"):
        read_metadata(model)
    stages = [{"file": "atto.rknn", "precision": "int8"}, {"file": "atto.decoder.rknn", "precision": "fp16"}]
    write_metadata(model, META.with_(extra={"rknn": {"platform": "rk3588", "stages": stages}}))
    assert format_of(model).runtime == "rknn" and read_metadata(model).extra["rknn"]["stages"] == stages
    with pytest.raises(ModelFileError, match="atto.decoder.rknn is not beside it"):
        stage_files(model, read_metadata(model))


@pytest.mark.skipif(importlib.util.find_spec("rknnlite") is not None, reason="rknn-toolkit-lite2 is installed")
def test_running_an_rknn_file_here_names_the_board_runtime_to_install(tmp_path):
    model = tmp_path / "atto.rknn"
    model.write_bytes(b"RKNN")
    write_metadata(model, META.with_(extra={"rknn": {"platform": "rk3588", "stages": [{"file": "atto.rknn"}]}}))
    assert "pip install 'deim-edge[rknn-lite]'" in format_of(model).unavailable()
    with pytest.raises(MissingDependencyError, match=r"rknn-toolkit-lite2 on a Rockchip board.*deim-edge\[rknn-lite\]"):
        Detector(model)


# -------------------------------------------------------------------- with the toolkit: convert and measure

@pytest.fixture(scope="module")
def val_data(tmp_path_factory):
    from deim_edge.training.data import make_synthetic_coco

    root = tmp_path_factory.mktemp("heldout")
    make_synthetic_coco(root, num_images=150, image_size=320, seed=1, split_val=0.2)  # 30 held-out images
    return root


def _export(target, out, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small calibration set is warned about
        return export(BUNDLED, target, out=out, class_names=NAMES, **kw)


@needs_toolkit
def test_atto_fp16_converts_for_rk3588_and_keeps_ap_in_the_simulator(tmp_path, val_data):
    path = _export("rknn", tmp_path / "atto.rknn", val_data=val_data, max_drop=0.5)
    meta = read_metadata(path)
    acc = meta.extra["accuracy"]
    assert meta.precision == "fp16" and meta.output == RAW and meta.extra["profile"] == "npu"
    assert meta.extra["rknn"]["platform"] == "rk3588" and meta.extra["rknn"]["stages"] == [
        {"file": "atto.rknn", "precision": "fp16"}]
    assert acc["metric"] == "AP" and acc["images"] == 30 and acc["reference_AP"] > 0.3
    assert acc["drop"] <= 0.5 and acc["matched"] >= 0.95 and acc["measured"].endswith("simulator (rk3588)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atto.json", "atto.rknn", "atto.rknn.accuracy.json"]
    report = json.loads((tmp_path / "atto.rknn.accuracy.json").read_text())
    assert report["target"] == "rknn" and report["accuracy"] == acc


@needs_toolkit
def test_atto_int8_converts_to_an_int8_encoder_and_fp16_decoder_within_one_ap(tmp_path, val_data):
    path = _export("rknn-int8", tmp_path / "atto.rknn", calib_data="synthetic", calib_size=48, val_data=val_data,
                   max_drop=1.0)
    meta = read_metadata(path)
    acc, int8 = meta.extra["accuracy"], meta.extra["int8"]
    assert meta.precision == "int8" and acc["metric"] == "AP" and acc["drop"] <= 1.0 and acc["matched"] >= 0.9
    assert [s["precision"] for s in meta.extra["rknn"]["stages"]] == ["int8", "fp16"]
    assert int8["recipe"] == "detr" and int8["quantized_algorithm"] == "normal" and int8["calibration"]["images"] == 48
    assert stage_files(path, meta) == [tmp_path / "atto.rknn", tmp_path / "atto.decoder.rknn"]
    assert (tmp_path / "atto.rknn").stat().st_size < (tmp_path / "atto.decoder.rknn").stat().st_size


@needs_toolkit
def test_everything_int8_in_one_model_fails_the_gate_and_writes_nothing(tmp_path, val_data):
    with pytest.raises(AccuracyGateError, match="fails the accuracy gate"):
        _export("rknn-int8", tmp_path / "naive.rknn", calib_data="synthetic", calib_size=48, val_data=val_data,
                recipe="naive", max_drop=1.0)
    assert list(tmp_path.iterdir()) == []


@needs_toolkit
def test_the_toolkits_own_error_becomes_the_export_error(tmp_path):
    with pytest.raises(ExportError, match="rknn-toolkit2 failed: build failed: .*rv1106"):  # no FP16 on RV1106
        _export("rknn", tmp_path / "atto.rknn", platform="rv1106")
    assert list(tmp_path.iterdir()) == []


@needs_toolkit
@pytest.mark.slow
@pytest.mark.parametrize("target", ["rknn", "rknn-int8"])
def test_pico_at_640_converts_for_rk3588(tmp_path, target):
    from test_npu_profile import _pico

    calibration = {"calib_data": "synthetic", "calib_size": 48} if target == "rknn-int8" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small calibration set is warned about
        # random weights score all positions alike: FP16 reorders their top 100, so no agreement to verify
        path = export(_pico(), target, out=tmp_path / "pico.rknn", verify=False, **calibration)
    meta = read_metadata(path)
    assert meta.variant == "deimv2-pico" and meta.input_size == (640, 640)
    assert len(meta.extra["rknn"]["stages"]) == (2 if target == "rknn-int8" else 1)
    assert all(f.stat().st_size > 1e6 for f in stage_files(path, meta))

