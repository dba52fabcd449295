"""Multi-process training under torchrun: process group set-up, the per-rank share of each batch, and a
SyncBatchNorm that also works on CPU (gloo).

`torchrun --nproc_per_node N -m deim_edge.train ...` runs N copies; each takes its slice of every global
batch (--batch is the global batch, split evenly), DistributedDataParallel averages the gradients, and
the loss normalizers and denoising queries are computed over the global batch. With --sync-bn (BatchNorm
over the global batch) N processes then train the model one process would, up to float rounding, for
the recipes without batch-level augmentations (Atto to N). MixUp and Copy-Blend take their partners from
the process's own share, and each process draws its own multi-scale size, as in the official code.
"""
from __future__ import annotations

import dataclasses
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Distributed:
    """Where this process stands: rank among world_size processes, local_rank on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the process that evaluates, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str) -> tuple[Distributed, str]:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK),
    NCCL for CUDA and gloo for CPU; returns the placement and the device of this process (cuda:LOCAL_RANK
    for a plain 'cuda'). Without torchrun: one process, the device unchanged."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was given but torch sees no CUDA GPU; use --device cpu")
        device = f"cuda:{local}" if device == "cuda" else device
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    return Distributed(rank, world, local), device


def teardown() -> None:
    """Leave the process group (after every process has got here)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_order(order: list[int], batch_size: int, placement: Distributed) -> list[int]:
    """This process's samples from the global sample order: its 1/world slice of every full global
    batch (the last partial batch is dropped), so the processes together see what one process would."""
    if batch_size % placement.world_size:
        raise ConfigError(f"--batch {batch_size} (the global batch) must be divisible by the "
                          f"{placement.world_size} processes")
    share = batch_size // placement.world_size
    start = placement.rank * share
    return [order[b + start + i] for b in range(0, len(order) - batch_size + 1, batch_size) for i in range(share)]


class GlooSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch: per-channel sums and counts
    are all-reduced (differentiably) over the process group. torch's SyncBatchNorm runs on GPUs only;
    this one runs on any device and backend. Outside training, or without a group, plain BatchNorm2d."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        dims = [0, 2, 3]
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        moments = _all_reduce(torch.cat([x.sum(dims), (x * x).sum(dims), count]))  # [2C + 1]
        channels = x.shape[1]
        total = moments[-1]
        mean = moments[:channels] / total
        var = (moments[channels:2 * channels] / total - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * var * total / (total - 1).clamp(min=1))
        shape = (1, channels, 1, 1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def _all_reduce(x: Tensor) -> Tensor:
    """The sum of x over the processes, differentiable (the gradient is summed back the same way)."""
    import warnings

    import torch.distributed.nn.functional as dist_fn

    with warnings.catch_warnings():  # deprecated for the functional collectives, which have no CPU autograd yet
        warnings.simplefilter("ignore", FutureWarning)
        return dist_fn.all_reduce(x)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d synchronized across processes: torch's SyncBatchNorm on CUDA, GlooSyncBatchNorm
    elsewhere (same weights and running statistics)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            synced = GlooSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                       child.track_running_stats, device=device)
            synced.load_state_dict(child.state_dict())
            synced.train(child.training).requires_grad_(child.weight is None or child.weight.requires_grad)
            setattr(model, name, synced)
        else:
            convert_sync_batchnorm(child, device)
    return model
