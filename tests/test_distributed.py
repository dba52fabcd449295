"""Multi-process training: two CPU processes under torchrun (gloo, --sync-bn) train the same model as one
process with the same global batch; the batch split and the CPU SyncBatchNorm on their own."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from deim_edge.errors import ConfigError
from deim_edge.training.data import make_synthetic_coco
from deim_edge.training.distributed import Distributed, GlooSyncBatchNorm, convert_sync_batchnorm, rank_order

SIZE, BATCH = 160, 4


def test_rank_order_splits_every_global_batch():
    order = list(range(10, 21))  # 11 samples: two full batches of 4, the rest dropped
    parts = [rank_order(order, 4, Distributed(rank, 2)) for rank in range(2)]
    assert parts == [[10, 11, 14, 15], [12, 13, 16, 17]]
    with pytest.raises(ConfigError, match="divisible"):
        rank_order(order, 3, Distributed(0, 2))


def test_sync_batchnorm_without_a_group_is_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)))
    x = torch.randn(2, 3, 8, 8)
    expected = model(x)
    synced = convert_sync_batchnorm(model, torch.device("cpu"))
    assert isinstance(synced[1], GlooSyncBatchNorm) and isinstance(synced[2][0], GlooSyncBatchNorm)
    torch.testing.assert_close(synced(x), expected)


def _train(args, torchrun: bool, out, data):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if torchrun else \
        [sys.executable]
    cmd += ["-m", "deim_edge.train", "--variant", "deimv2-atto", "--train-json",
            str(data / "annotations" / "instances_train.json"), "--train-images", str(data / "train"), "--epochs", "1",
            "--batch", str(BATCH), "--imgsz", str(SIZE), "--workers", "0", "--lr-scale", "3", "--out", str(out),
            "--no-progress", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return torch.load(out / "last.pth", map_location="cpu", weights_only=True)


def test_two_processes_train_what_one_process_trains(tmp_path):
    data = tmp_path / "data"
    make_synthetic_coco(data, num_images=16, image_size=SIZE, seed=1)
    one = _train([], False, tmp_path / "one", data)
    two = _train(["--sync-bn"], True, tmp_path / "two", data)
    assert one["lr_scheduler"] == two["lr_scheduler"] and one["ema"]["updates"] == two["ema"]["updates"] == 3
    # the mean loss of the 3 steps: steps 2 and 3 run on the updated weights, so it checks the whole path.
    # Channels-last convolutions pick their kernels by batch size (2 per process against 4 in one), which
    # moves the loss by ~3e-4 of itself (1e-5 with the default layout); a wrong split moves it by whole percent.
    assert two["history"][0]["loss"] == pytest.approx(one["history"][0]["loss"], rel=2e-3)
    # Adam turns rounding-level differences of near-zero gradients (the processes sum in another order, and
    # pick other channels-last kernels for their smaller batch) into steps of up to +-lr; measured: mean
    # 2e-4 (5e-5 with the default layout), max under lr at lr 6e-3. A wrong split or unaveraged gradients
    # move the weights by whole steps everywhere.
    lr = max(one["lr_scheduler"]["base_lrs"])
    a, b = (torch.cat([c["model"][k].float().flatten() for k in one["model"]]) for c in (one, two))
    assert (a - b).abs().mean() < 0.1 * lr and (a - b).abs().max() < 2 * lr
