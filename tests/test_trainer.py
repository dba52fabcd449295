"""The trainer: a short run from scratch learns, writes loadable checkpoints, log and curves, and a
resumed run ends with exactly the weights of an uninterrupted one; the CLI runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deim_edge.models import load_checkpoint
from deim_edge.training.data import make_synthetic_coco
from deim_edge.training.trainer import TrainConfig, Trainer

# Atto needs >= 160 px for its 100 queries; lr x3 makes 3 epochs enough for a clear fall of the loss
EPOCHS, SIZE, BATCH, LR_SCALE = 3, 160, 4, 3.0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_coco(root, num_images=16, image_size=SIZE, seed=0)
    return root


def config(data: Path, out: Path, **kw) -> TrainConfig:
    kw = {"epochs": EPOCHS, **kw}
    return TrainConfig(str(data / "train"), str(data / "annotations" / "instances_train.json"), str(data / "val"),
                       str(data / "annotations" / "instances_val.json"), variant="deimv2-atto",
                       batch_size=BATCH, imgsz=SIZE, lr_scale=LR_SCALE, out=str(out), progress=False, **kw)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return out, Trainer(config(data, out)).fit()


def test_loss_falls(run):
    _, history = run
    assert len(history) == EPOCHS
    first, last = history[0]["loss"], history[-1]["loss"]
    print(f"training loss: first epoch {first:.3f}, last epoch {last:.3f}")
    assert last < 0.95 * first
    assert all("AP50" in r and 0.0 <= r["AP50"] <= 1.0 for r in history)


def test_checkpoints_load(run):
    out, history = run
    for name in ("best.pth", "last.pth"):
        ckpt = torch.load(out / name, map_location="cpu", weights_only=True)
        assert {"model", "ema", "optimizer", "lr_scheduler", "epoch", "variant", "num_classes", "class_names",
                "input_size", "metrics", "args"} <= set(ckpt)
        assert set(ckpt["ema"]) == {"module", "updates"} and ckpt["num_classes"] == 4
        model = load_checkpoint(out / name, "deimv2-atto", input_size=SIZE)
        assert model.decoder.enc_score_head.weight.shape[0] == 4
    last = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    assert last["epoch"] == EPOCHS - 1 and last["ema"]["updates"] == EPOCHS * 3  # 13 train images, batch 4
    lines = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(EPOCHS))


def test_curves_png(run):
    out, _ = run
    data = (out / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_the_dense_start_runs_in_the_first_epochs_only(data, tmp_path):
    trainer = Trainer(config(data, tmp_path, epochs=10))
    assert (trainer.recipe.dense_positives, trainer.recipe.dense_epochs) == (10, 2)  # a small set: 20% of 10
    trainer.train_one_epoch(1)
    assert trainer.model.decoder.dense_supervision
    trainer.train_one_epoch(2)
    assert not trainer.model.decoder.dense_supervision  # no dense outputs, no dense loss after them


def test_evaluations_thin_out_where_the_ema_spans_several_epochs(data, tmp_path):
    def evaluated(trainer):
        return [e for e in range(trainer.epochs) if trainer._evaluates(e)]

    long = Trainer(config(data, tmp_path, epochs=200))  # 3 steps an epoch; the EMA averages 30 steps = 10 epochs
    assert 1.0 / (1.0 - long.recipe.ema_decay) == pytest.approx(30.0)
    assert evaluated(long) == [*range(9, 150, 10), *range(152, 199, 3), 199]  # curve points, then every third
    short = Trainer(config(data, tmp_path, epochs=40))  # the EMA averages 10 steps, 3.3 epochs: every late epoch
    assert evaluated(short) == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, *range(30, 40)]
    given = Trainer(config(data, tmp_path, epochs=200, eval_every=1))
    assert evaluated(given) == list(range(200))


def test_a_run_stopped_by_its_budget_evaluates_the_last_epoch_it_trains(data, tmp_path):
    import dataclasses

    from deim_edge.training.budget import TimeBudget

    class TwoEpochs(TimeBudget):  # the clock runs out after the second epoch's training
        def fits_another(self, history):
            return len(history) < 2

    trainer = Trainer(config(data, tmp_path, epochs=200))  # evaluates every 10th epoch this early
    trainer.config = dataclasses.replace(trainer.config, time_minutes=1.0)
    trainer.budget = TwoEpochs(1.0)
    history = trainer.fit()
    assert [("AP" in r) for r in history] == [False, True]  # the second is not due, but it is the last one


def test_resume_is_exact(data, run, tmp_path):
    full_out, _ = run
    Trainer(config(data, tmp_path)).fit(until=1)  # "killed" after the first epoch
    resumed = Trainer(config(data, tmp_path, resume=str(tmp_path / "last.pth")))
    assert resumed.start_epoch == 1
    resumed.fit()
    a = torch.load(full_out / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)
    for part in ("model",):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    assert all(torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]) for k in a["ema"]["module"])
    assert a["ema"]["updates"] == b["ema"]["updates"] and a["lr_scheduler"] == b["lr_scheduler"]


def test_resume_after_a_kill_mid_epoch_is_exact(data, tmp_path):
    trainer = Trainer(config(data, tmp_path))
    steps = []

    def dies_in_epoch_2(images, targets, epoch):  # the process is killed during the second epoch
        steps.append(epoch)
        if epoch == 1 and steps.count(1) == 2:
            raise KeyboardInterrupt
        return Trainer.train_step(trainer, images, targets, epoch)

    trainer.train_step = dies_in_epoch_2
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epoch"] == 0  # the last whole epoch, intact
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    resumed = Trainer(config(data, tmp_path, resume=str(tmp_path / "last.pth")))
    resumed.fit(until=2)
    a = torch.load(tmp_path / "last.pth", weights_only=True)
    full = Trainer(config(data, tmp_path / "again"))
    full.fit(until=2)
    b = torch.load(tmp_path / "again" / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 1
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ema"]["module"][k], b["ema"]["module"][k]) for k in a["ema"]["module"])


def test_init_from_other_variant(run, data, tmp_path, capsys):
    out, _ = run
    trainer = Trainer(TrainConfig(str(data / "train"), str(data / "annotations" / "instances_train.json"),
                                  variant="deimv2-femto", epochs=1, imgsz=192, out=str(tmp_path),
                                  init_from=str(out / "last.pth"), progress=False))
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("init from"))
    loaded = int(line.split(": ")[1].split()[0])
    assert 0 < loaded < len(trainer.model.state_dict())


def test_cli(data, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "deim_edge.train", "--variant", "deimv2-atto", "--data", str(data),
                             "--epochs", "1", "--batch", str(BATCH), "--imgsz", str(SIZE), "--workers", "0",
                             "--out", str(tmp_path / "cli"), "--no-progress"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "done: 1 epochs" in result.stdout
    assert (tmp_path / "cli" / "last.pth").is_file() and (tmp_path / "cli" / "log.txt").is_file()


def test_a_training_checkpoint_carries_variant_size_and_names_to_export_and_predict(run, data, tmp_path):
    """No --variant, --imgsz or --class-names: export and predict read them from best.pth."""
    pytest.importorskip("onnxruntime")
    from deim_edge import Detector
    from deim_edge.export.__main__ import main as export_main
    from deim_edge.formats import read_metadata

    out, _ = run
    names = tuple(torch.load(out / "best.pth", map_location="cpu", weights_only=True)["class_names"])
    assert export_main(["--checkpoint", str(out / "best.pth"), "--target", "onnx", "--out", str(tmp_path)]) == 0
    meta = read_metadata(tmp_path / "best.onnx")
    assert (meta.variant, meta.input_size, meta.class_names) == ("deimv2-atto", (SIZE, SIZE), names)
    image = sorted((data / "val").iterdir())[0]
    for model in (tmp_path / "best.onnx", out / "best.pth"):
        det = Detector(model, conf=0.0)
        assert det.metadata.class_names == names and det.metadata.input_size == (SIZE, SIZE)
        assert set(det(str(image)).class_names) <= set(names)


def test_a_time_budget_fits_the_schedule_and_stops_with_whole_checkpoints(data, tmp_path):
    import time

    budget_min = 0.4
    start = time.perf_counter()
    trainer = Trainer(config(data, tmp_path, time_minutes=budget_min, epochs=None))
    history = trainer.fit()
    elapsed = time.perf_counter() - start
    evals = [r["time_s"] - r["train_s"] for r in history if "AP" in r]
    assert elapsed <= 60 * budget_min + 1.5 * max(evals) + 5  # the budget, one evaluation, and some noise
    assert 2 <= len(history) and trainer.epochs >= len(history) >= trainer.epochs - 1  # the plan ended in time
    assert trainer.recipe.epochs == trainer.epochs  # the recipe was refitted to the run's length
    for name in ("last.pth", "best.pth"):  # whole, loadable; best.pth may predate the last refit
        ckpt = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        assert ckpt["class_names"] and ckpt["epochs"] >= len(history) - 1
    assert torch.load(tmp_path / "last.pth", weights_only=True)["epochs"] == trainer.epochs
    assert (tmp_path / "dataset.txt").is_file() and (tmp_path / "dataset.png").is_file()


def test_init_from_an_official_coco_checkpoint_and_a_backbone_file(data, tmp_path, capsys):
    from deim_edge.models import build_model

    coco = build_model("deimv2-atto", num_classes=80, input_size=SIZE)
    torch.save({"model": coco.state_dict()}, tmp_path / "deimv2_atto_coco.pth")  # the official layout
    trainer = Trainer(config(data, tmp_path / "run", init_from=str(tmp_path / "deimv2_atto_coco.pth")))
    own, theirs = trainer.model.state_dict(), coco.state_dict()
    differ = [k for k in own if own[k].shape != theirs[k].shape]
    assert differ and all("class" in k or "score" in k for k in differ)  # the class heads: re-initialized
    kept = [k for k in own if own[k].shape == theirs[k].shape and k.startswith(("backbone", "encoder"))]
    assert all(torch.equal(own[k], theirs[k]) for k in kept)

    b0 = build_model("deimv2-n", num_classes=80, input_size=320).backbone  # D-FINE's ImageNet B0 has its keys
    torch.save(b0.state_dict(), tmp_path / "PPHGNetV2_B0_stage1.pth")
    capsys.readouterr()
    trainer = Trainer(config(data, tmp_path / "run2", init_from=str(tmp_path / "PPHGNetV2_B0_stage1.pth")))
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("init from"))
    assert int(line.split(": ")[1].split()[0]) > 50  # Atto's stem and first stages are B0's
    stem = "backbone.stem.stem1.conv.weight"
    assert torch.equal(trainer.model.state_dict()[stem], b0.state_dict()[stem.removeprefix("backbone.")])


def test_amp_on_a_cpu_trains_in_bfloat16_where_the_cpu_computes_it(data, tmp_path):
    from deim_edge.errors import ConfigError
    from deim_edge.training.trainer import _native_bf16

    if not _native_bf16():
        with pytest.raises(ConfigError, match="no instructions for"):
            Trainer(config(data, tmp_path, amp=True))
        return
    trainer = Trainer(config(data, tmp_path, amp=True, epochs=1))
    record = trainer.fit()[-1]
    assert trainer.amp_dtype == torch.bfloat16 and not trainer.scaler.is_enabled()
    assert torch.isfinite(torch.tensor(record["loss"]))
    state = torch.load(tmp_path / "last.pth", weights_only=True)["model"]
    assert all(v.dtype != torch.bfloat16 for v in state.values())  # the weights stay float32
