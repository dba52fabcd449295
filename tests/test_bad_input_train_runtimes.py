"""Bad input to training, checkpoint reading and the runtimes ends in a deim-edge error that says what to do (from
the train command: one `error: ...` line and exit status 2, or 130 on Ctrl-C), never a traceback or a wrong answer."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from deim_edge import Detector, train
from deim_edge.errors import CheckpointError, ConfigError, CudaUnavailableError, ModelFileError, OutputPathError
from deim_edge.models import build_model, save_checkpoint
from deim_edge.training.data import make_synthetic_coco
from deim_edge.training.trainer import RESUME_KEYS, TrainConfig, Trainer

SIZE = 160  # Atto's smallest training size


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_coco(root, num_images=8, image_size=SIZE, seed=0)
    return root


def cli(data: Path, out: Path, *extra: str) -> list[str]:
    """A one-process CPU training command line on the synthetic set (no validation set: no evaluation)."""
    return ["--train-images", str(data / "train"), "--train-json", str(data / "annotations" / "instances_train.json"),
            "--imgsz", str(SIZE), "--batch", "4", "--workers", "0", "--no-progress", "--out", str(out), *extra]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def not_a_checkpoint(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pth"
    if kind == "folder":
        path.mkdir()
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(10_000)}}, path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "dict":
        torch.save({"a": 1}, path)
    return path


BAD_FILES = {"missing": "checkpoint not found", "folder": "is a folder, not a checkpoint file; give the .pth file",
             "random": "is not a PyTorch checkpoint", "truncated": "truncated or corrupt",
             "dict": "is not the last.pth of a deim-edge run (it has no model, ema, optimizer"}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_resume_from_a_file_that_is_no_last_pth(kind, tmp_path, monkeypatch, capsys):
    path = not_a_checkpoint(tmp_path, kind)
    monkeypatch.setattr("deim_edge.training.trainer.CocoDetection", lambda *a: pytest.fail("data read first"))
    with pytest.raises(CheckpointError, match=re.escape(BAD_FILES[kind])):
        Trainer(TrainConfig("train", "train.json", resume=str(path), out=str(tmp_path / "run")))
    assert train.main(cli(tmp_path, tmp_path / "run", "--resume", str(path))) == 2
    line = one_error_line(capsys)
    assert str(path) in line and BAD_FILES[kind] in line


@pytest.mark.parametrize("variant, classes, size", [("deimv2-pico", 4, SIZE), ("deimv2-atto", 80, SIZE),
                                                   ("deimv2-atto", 4, 320)])
def test_resume_from_a_run_of_another_variant_class_count_or_size(variant, classes, size, data, tmp_path, capsys):
    path = tmp_path / "last.pth"
    torch.save({**dict.fromkeys(RESUME_KEYS, 0), "variant": variant, "num_classes": classes,
                "input_size": [size, size]}, path)
    assert train.main(cli(data, tmp_path / "run", "--resume", str(path))) == 2
    line = one_error_line(capsys)
    assert f"is a run of {variant} with {classes} classes at {size} px; this one is deimv2-atto with 4 at 160" in line
    assert "--init-from" in line


OPTIONS = {("--epochs", "0"): "--epochs must be a whole number of at least 1, got 0",
           ("--epochs", "-3"): "--epochs must be",
           ("--batch", "0"): "--batch must be a whole number of at least 1, got 0",
           ("--time", "0"): "--time must be a positive number of minutes, got 0",
           ("--time", "-1"): "--time must be a positive",
           ("--time", "nan"): "--time must be a positive",
           ("--imgsz", "100"): "--imgsz must be a positive multiple of 32",
           ("--imgsz", "-32"): "--imgsz must be a positive multiple of 32",
           ("--workers", "-1"): "--workers must be a whole number of at least 0",
           ("--lr-scale", "0"): "--lr-scale must be a positive number",
           ("--device", "gpu0"): "--device must be cpu, cuda or cuda:N"}


@pytest.mark.parametrize("option", OPTIONS, ids=" ".join)
def test_train_refuses_options_before_reading_data(option, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "data_paths", lambda args: pytest.fail("data read before the options were checked"))
    assert train.main(["--data", "synthetic", "--out", str(tmp_path / "run"), *option]) == 2
    assert OPTIONS[option] in one_error_line(capsys)


def test_the_trainer_checks_its_config_before_reading_data(tmp_path, monkeypatch):
    monkeypatch.setattr("deim_edge.training.trainer.CocoDetection", lambda *a: pytest.fail("data read first"))
    for bad in ({"epochs": 0}, {"batch_size": -1}, {"time_minutes": float("inf")}, {"imgsz": 0}, {"seed": -1}):
        with pytest.raises(ConfigError, match="must be"):
            Trainer(TrainConfig("train", "train.json", out=str(tmp_path), **bad))


@pytest.mark.parametrize("out", ["file", "under-file", "/proc/x"])
def test_train_checks_its_output_folder_before_reading_data(out, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("not a folder")
    folder = {"file": tmp_path / "file", "under-file": tmp_path / "file" / "run", "/proc/x": Path("/proc/x")}[out]
    monkeypatch.setattr(train, "data_paths", lambda args: pytest.fail("data read before --out was checked"))
    assert train.main(["--data", "synthetic", "--out", str(folder)]) == 2
    assert "output folder" in one_error_line(capsys)
    with pytest.raises(OutputPathError):
        TrainConfig("train", "train.json", out=str(folder)).check()


def test_ctrl_c_says_what_the_run_kept(data, tmp_path, monkeypatch, capsys):
    step = Trainer.train_step

    def stopped_in_epoch_2(self, images, targets, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return step(self, images, targets, epoch)

    monkeypatch.setattr(Trainer, "train_step", stopped_in_epoch_2)
    assert train.main(cli(data, tmp_path, "--epochs", "3")) == 130
    last = tmp_path / "last.pth"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # after epoch 1's progress line
        f"interrupted; {last} holds the run up to epoch 1: continue with --resume {last}")
    assert torch.load(last, weights_only=True)["epoch"] == 0

    def stopped_at_once(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "data_paths", stopped_at_once)
    assert train.main(cli(data, tmp_path / "again")) == 130
    assert capsys.readouterr().err.strip() == "interrupted before the first epoch ended; no checkpoint was written"


# runtimes


@pytest.fixture(scope="module")
def fake_official(tmp_path_factory) -> Path:
    """An ONNX file whose tensors are named like the official DEIMv2 export's, but hold something else."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["orig_target_sizes"], ["labels"], to=TensorProto.FLOAT),
         helper.make_node("Identity", ["images"], ["boxes"]),
         helper.make_node("ReduceMean", ["images"], ["scores"], axes=[1], keepdims=0)],
        "not-deimv2",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 64, 64]),
         helper.make_tensor_value_info("orig_target_sizes", TensorProto.INT64, ["N", 2])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("labels", "boxes", "scores")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path_factory.mktemp("fake") / "official.onnx"
    onnx.save(model, path)
    return path


def test_an_onnx_file_merely_named_like_the_official_export_is_refused(fake_official):
    pytest.importorskip("onnxruntime")
    with pytest.raises(ModelFileError, match=r"official DEIMv2 export's tensor names but not its tensors .*"
                                             r"labels is float \[\?,2\], not int64 \[\?,\?\].*"
                                             r"boxes is float \[\?,3,64,64\], not float \[\?,\?,4\]"):
        Detector(fake_official)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = build_model("deimv2-atto", num_classes=3, input_size=SIZE)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "atto.pth", model)


def test_an_unknown_option_names_the_options_of_the_runtime(fake_official, checkpoint):
    with pytest.raises(ConfigError, match="the onnxruntime runtime has no option foo; it takes threads, providers"):
        Detector(fake_official, foo=1)
    with pytest.raises(ConfigError, match="the torch runtime has no option threads; it takes variant, input_size"):
        Detector(checkpoint, threads=1)
    with pytest.raises(ConfigError, match="the openvino runtime has no option thread; it takes device, hint"):
        Detector(fake_official, backend="openvino", thread=1)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "tflite"])
@pytest.mark.parametrize("threads", ["many", 0, -1, 2.5, True])
def test_threads_must_be_a_whole_number_of_at_least_1(backend, threads, fake_official):
    if backend == "openvino":
        pytest.importorskip("openvino")
    with pytest.raises(ConfigError, match=f"threads must be a whole number of at least 1.*got {threads!r}"):
        Detector(fake_official, backend=backend, threads=threads)


def test_openvino_streams_must_be_a_whole_number_of_at_least_1(fake_official):
    pytest.importorskip("openvino")
    with pytest.raises(ConfigError, match="streams must be a whole number of at least 1"):
        Detector(fake_official, backend="openvino", streams=0)


@pytest.mark.parametrize("name", ["dir.xml", "x.onnx", "x.tflite"])
def test_a_folder_is_not_a_model_file(name, tmp_path):
    if name.endswith(".xml"):
        pytest.importorskip("openvino")
    (tmp_path / name).mkdir()
    with pytest.raises(ModelFileError, match="is a folder, not a model file"):
        Detector(tmp_path / name)


@pytest.mark.parametrize("kind", ["folder", "random", "truncated", "dict"])
def test_a_pth_that_is_no_checkpoint(kind, tmp_path):
    message = {**BAD_FILES, "dict": "holds no state dict of tensors"}[kind]
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / kind}.pth") + ".*" + re.escape(message)):
        Detector(not_a_checkpoint(tmp_path, kind))


def test_torch_runtime_options(checkpoint):
    with pytest.raises(ConfigError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu0'"):
        Detector(checkpoint, device="gpu0")
    if torch.cuda.device_count() < 8:
        with pytest.raises(CudaUnavailableError, match="use device='cpu'"):
            Detector(checkpoint, device="cuda:7")
    with pytest.raises(ConfigError, match="1 class_names given for a model of 3 classes"):
        Detector(checkpoint, class_names=["cat"])
