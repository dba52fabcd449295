"""Trainer: one process, CPU or one CUDA GPU -- the DEIM recipe of a variant scaled to the run's epochs,
EMA evaluated on the validation set (more often near the end), best and last checkpoints in the official format.

Randomness is keyed, never carried: the sample order of epoch e comes from default_rng([seed, e]), each
sample's augmentation from default_rng([seed, e, index]), each batch's from the Collate's key, and torch's
generator (denoising queries) is reseeded at the start of every epoch. So a run resumed from the last
checkpoint repeats exactly what the uninterrupted run does (CPU, same seed, same number of workers).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..accuracy import METRICS
from ..errors import CheckpointError, ConfigError, DeimEdgeError
from ..fileio import atomic_path, check_output
from ..models import build_model, load_pretrained_backbone, read_state_dict, save_checkpoint
from ..models.checkpoint import SIZE_DEPENDENT, load_file
from ..progress import Progress, warn
from ..variants import get_variant
from .collate import Collate
from .criterion import DEIMLoss
from .data_check import DataStats, report, write_histogram
from .data.coco import CocoDetection
from .dense_o2o import AugmentationPolicy, TrainPipeline
from .distributed import convert_sync_batchnorm, rank_order, setup
from .ema import ModelEMA
from .evaluate import evaluate
from .budget import TimeBudget, pace
from .fitted_recipe import fit_recipe
from .optim import build_optimizer
from .schedule import FlatCosineSchedule

LOSS_TERMS = ("loss_mal", "loss_bbox", "loss_giou", "loss_fgl", "loss_ddf")  # logged summed over all outputs
CURVES_EVERY_S = 30.0  # curves.png is redrawn at most this often in a run (a drawing takes 0.15-0.7 s) and at its end
RESUME_KEYS = ("model", "ema", "optimizer", "lr_scheduler", "epoch", "variant", "num_classes")  # of every last.pth


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs; stored (as plain types) in every checkpoint under 'args'."""

    train_images: str
    train_json: str
    val_images: str | None = None
    val_json: str | None = None
    variant: str = "deimv2-atto"
    epochs: int | None = None  # default: the recipe's, or what fits time_minutes
    batch_size: int | None = None  # default: 8, or 4 for a set under 80 images (at least ten steps an epoch)
    imgsz: int | None = None  # default: the variant's input size
    lr_scale: float = 1.0  # multiplies lr and backbone_lr (the official code does not scale with batch)
    device: str = "cpu"
    amp: bool = False  # CUDA: float16 with loss scaling; CPU: bfloat16 where the CPU computes it natively
    workers: int = 0
    seed: int = 0
    out: str = "runs/train"
    eval_every: int | None = None  # default: see Trainer.eval_interval
    resume: str | None = None
    init_from: str | None = None
    progress: bool = True
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch
    time_minutes: float | None = None  # a budget: the schedule is fitted into it and training stops at it

    def check(self) -> None:
        """ConfigError (OutputPathError for `out`) for option values no run can use. Reads no data: the command
        line checks before it reads or generates any."""
        get_variant(self.variant)
        for flag, value in (("--epochs", self.epochs), ("--batch", self.batch_size), ("--eval-every", self.eval_every)):
            if value is not None and not (_is_int(value) and value >= 1):
                raise ConfigError(f"{flag} must be a whole number of at least 1, got {value!r}")
        for flag, value in (("--workers", self.workers), ("--seed", self.seed)):
            if not (_is_int(value) and value >= 0):
                raise ConfigError(f"{flag} must be a whole number of at least 0, got {value!r}")
        if self.imgsz is not None and not (_is_int(self.imgsz) and self.imgsz > 0 and self.imgsz % 32 == 0):
            raise ConfigError(f"--imgsz must be a positive multiple of 32 (e.g. 320 or 640), got {self.imgsz!r}")
        if not (math.isfinite(self.lr_scale) and self.lr_scale > 0):
            raise ConfigError(f"--lr-scale must be a positive number, got {self.lr_scale}")
        if self.time_minutes is not None and not (math.isfinite(self.time_minutes) and self.time_minutes > 0):
            raise ConfigError(f"--time must be a positive number of minutes, got {self.time_minutes}")
        if self.resume and self.init_from:
            raise ConfigError("--resume continues a run and --init-from starts a new one: give only one")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {self.device!r}") from None
        check_output(self.out, folder=True)


class EpochSamples(Dataset):
    """A CocoDetection seen through the training pipeline of the current epoch (set with set_epoch
    before a DataLoader is made, so workers start with it); sample i of epoch e is augmented with
    np.random.default_rng([seed, e, i])."""

    def __init__(self, dataset: CocoDetection, pipeline: TrainPipeline, seed: int) -> None:
        self.dataset, self.pipeline, self.seed = dataset, pipeline, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.pipeline.reset()  # mosaic partners come from this epoch only: resume stays exact

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, target = self.dataset[index]
        return self.pipeline(image, target, self.epoch, np.random.default_rng([self.seed, self.epoch, index]))


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of an epoch."""
    return int(np.random.default_rng([seed, epoch, 1]).integers(2 ** 62))


def init_from(model: nn.Module, source: str) -> dict[str, int]:
    """Copy every tensor of checkpoint `source` (EMA weights when present) whose name and shape match
    into `model`; returns the counts {'loaded', 'shape_mismatch', 'missing', 'unexpected'}.

    `source` may be a full detector checkpoint of any variant and class count (official COCO ones included:
    the class-dependent head tensors differ in shape and stay freshly initialized) or a bare backbone file
    such as D-FINE's ImageNet PPHGNetV2_B0_stage1.pth (keys without the 'backbone.' prefix)."""
    state = read_state_dict(source)
    own = model.state_dict()
    if not any(k in own for k in state):  # no detector tensor: a backbone on its own (HGNetv2, DINOv3, ViT-Tiny)
        report = load_pretrained_backbone(model, source, min_fraction=0.3)  # pruned HGNetv2s share part of B0
        return {"loaded": len(report.loaded), "shape_mismatch": len(report.skipped_shape),
                "missing": len(own) - len(report.loaded), "unexpected": len(report.unexpected)}
    fits = {k: v for k, v in state.items() if k in own and k not in SIZE_DEPENDENT and v.shape == own[k].shape}
    model.load_state_dict(fits, strict=False)
    return {"loaded": len(fits),
            "shape_mismatch": sum(1 for k, v in state.items() if k in own and v.shape != own[k].shape),
            "missing": sum(1 for k in own if k not in state),
            "unexpected": sum(1 for k in state if k not in own)}


def _to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets]


def _plain(obj: Any) -> Any:
    """obj with Paths as str and tuples as lists, so a weights-only torch.load reads it."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


class Trainer:
    """`Trainer(config).fit()`: trains, evaluates, writes out/{last,best}.pth, log.txt and curves.png."""

    def __init__(self, config: TrainConfig) -> None:
        c = self.config = config
        c.check()
        resume = read_resume(c.resume) if c.resume else None  # a file that is no last.pth fails before the data loads
        self.budget = None if c.time_minutes is None else TimeBudget(c.time_minutes)  # its clock starts now
        self.variant = get_variant(c.variant)
        self.out = Path(c.out)
        self.dist, device = setup(c.device)  # one process, or this one of torchrun's
        self.device = torch.device(device)
        if self.device.type == "cuda" and (self.device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"--device {c.device} was given but torch sees {torch.cuda.device_count()} CUDA GPUs; "
                              "use --device cpu, or cuda:N with N below that count")
        self.amp = bool(c.amp)
        if self.amp and self.device.type == "cpu" and not _native_bf16():
            raise ConfigError("--amp on a CPU trains in bfloat16, which this CPU has no instructions for (it needs "
                              "AVX512-BF16 or AMX, see /proc/cpuinfo); train without --amp")
        self.amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        if c.time_minutes is not None and self.dist.enabled:  # each process would time itself and fit its own plan
            raise ConfigError("--time is for one process; under torchrun give --epochs")
        self.size = size = c.imgsz or self.variant.input_size

        self.train_set = CocoDetection(c.train_images, c.train_json)
        self.val_set = CocoDetection(c.val_images, c.val_json) if c.val_json else None
        self.log(f"train: {self.train_set.report()}")
        if self.val_set is not None:
            self.log(f"val: {self.val_set.report()}")
            if self.val_set.category_ids != self.train_set.category_ids:
                raise ConfigError("the validation JSON lists other categories than the training JSON; both "
                                  "need the same 'categories'")
        self.stats = DataStats.of(self.train_set, size)
        self._write_check()
        if c.batch_size is None:  # small sets: at least ten steps an epoch
            c.batch_size = 8 if len(self.train_set) >= 80 else 4

        if self.dist.enabled:
            rank_order([], c.batch_size, self.dist)  # ConfigError now unless --batch splits evenly
        if self.dist.enabled and len(self.train_set) < c.batch_size:
            raise ConfigError(f"{len(self.train_set)} training images are fewer than one global batch ({c.batch_size})")
        self.drop_last = len(self.train_set) >= c.batch_size
        self.iters_per_epoch = (len(self.train_set) // c.batch_size if self.drop_last
                                else math.ceil(len(self.train_set) / c.batch_size))
        self.epochs = c.epochs or self.variant.recipe.epochs  # with a time budget: provisional, refitted below
        self.recipe, recipe_lines = fit_recipe(self.variant, self.stats, c.batch_size, self.epochs,
                                               self.iters_per_epoch, c.lr_scale)
        self.policy = AugmentationPolicy(self.recipe, self.epochs)
        self.samples = EpochSamples(self.train_set, TrainPipeline(self.policy, (size, size)), c.seed)
        norm = None if self.variant.mean is None else (self.variant.mean, self.variant.std)
        self.collate = Collate(self.policy, norm, base_size=size, seed=c.seed)

        torch.manual_seed(c.seed)
        self.model = build_model(self.variant, num_classes=self.train_set.num_classes, input_size=size)
        if c.init_from:
            counts = init_from(self.model, c.init_from)
            self.log(f"init from {c.init_from}: {counts['loaded']} tensors loaded, {counts['shape_mismatch']} of "
                     f"another shape, {counts['missing']} missing, {counts['unexpected']} not in this model")
        # channels-last convolutions: the same numbers, about 1.3x faster training steps on a CPU core
        self.model.to(self.device, memory_format=torch.channels_last).train()
        if c.sync_bn and self.dist.enabled:
            convert_sync_batchnorm(self.model, self.device)
        self.net: nn.Module = self.model  # what the training step calls: the model, or its DDP wrapper
        if self.dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=True)  # some heads sit out some steps (e.g. no denoising targets)
        self.criterion = DEIMLoss(self.train_set.num_classes, self.recipe)
        self.optimizer = build_optimizer(self.model, self.variant, self.recipe)
        self.schedule = FlatCosineSchedule(self.optimizer, self.recipe, self.iters_per_epoch, self.epochs)
        self.ema = ModelEMA(self.model, self.recipe.ema_decay, self.recipe.ema_warmups)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and self.device.type == "cuda")
        self.start_epoch, self.best_ap, self.history = 0, -1.0, []
        self._curves_drawn, self._curves_epochs = -math.inf, 0  # when curves.png was last drawn, with how many epochs
        if resume is not None:
            self._resume(resume, c.resume)
        elif self.budget is not None and c.epochs is None:
            epoch_s = self._probe_epoch_seconds()
            eval_s = 0.2 * epoch_s if self.val_set is not None else 0.0  # a guess until the first evaluation
            epochs = self.budget.epochs_that_fit(0, epoch_s, eval_s * self._evaluated_share())
            recipe_lines = self.refit(epochs, warmup_iters=None)
        for line in recipe_lines:
            self.log(line)

    def _write_check(self) -> None:
        """Print the dataset check and save it (dataset.txt, dataset.png) beside the run."""
        lines = report(self.stats, self.variant)
        for line in lines:
            self.log(line)
        if not self.dist.main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.out / "dataset.txt") as tmp:
            Path(tmp).write_text("\n".join(lines) + "\n")
        if _has_matplotlib():
            write_histogram(self.stats, self.variant, self.out / "dataset.png")

    def refit(self, epochs: int, warmup_iters: int | None) -> list[str]:
        """Fit the recipe, augmentation policy, schedule and EMA to a run of `epochs` epochs, keeping the
        iterations done so far (and the warm-up, when given); returns the recipe's lines."""
        self.epochs = max(1, int(epochs))
        self.recipe, lines = fit_recipe(self.variant, self.stats, self.config.batch_size, self.epochs,
                                        self.iters_per_epoch, self.config.lr_scale, warmup_iters)
        self.policy = AugmentationPolicy(self.recipe, self.epochs)
        self.samples.pipeline.policy = self.collate.policy = self.policy
        self.criterion.matcher.change_epoch = self.recipe.matcher_change_epoch
        done = self.schedule.last_iter
        self.schedule = FlatCosineSchedule(self.optimizer, self.recipe, self.iters_per_epoch, self.epochs)
        self.schedule.seek(done)
        self.ema.decay, self.ema.warmups = self.recipe.ema_decay, self.recipe.ema_warmups
        return lines

    def _probe_epoch_seconds(self) -> float:
        """Seconds one epoch will take, from two forward/backward passes on a first batch (the weights, the
        optimizer and the data pipeline are left as they were)."""
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.samples.set_epoch(0)
        self.collate.set_epoch(0)
        start = time.perf_counter()
        batch = [self.samples[i] for i in range(min(self.config.batch_size, len(self.samples)))]
        images, targets = self.collate(batch)
        load_s = time.perf_counter() - start
        images = images.to(self.device, memory_format=torch.channels_last)
        targets = _to_device(targets, self.device)
        steps = []
        for _ in range(2):
            start = time.perf_counter()
            with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp):
                outputs = self.net(images, targets)
            terms = self.criterion(_float32(outputs), targets, 0)
            sum(terms.values()).backward()
            self.optimizer.zero_grad(set_to_none=True)
            steps.append(time.perf_counter() - start)
        self.model.load_state_dict(state)
        self.samples.set_epoch(0)
        step_s = min(steps) * 1.15 + load_s / max(1, self.config.workers)  # + optimizer, EMA and log overhead
        return self.iters_per_epoch * step_s

    def _resume(self, ckpt: dict, path: str) -> None:
        run = (ckpt["variant"], ckpt["num_classes"], ckpt.get("input_size", [self.size] * 2))
        if run != (self.variant.name, self.train_set.num_classes, [self.size] * 2):
            raise ConfigError(f"{path} is a run of {run[0]} with {run[1]} classes at {run[2][0]} px; this one is "
                              f"{self.variant.name} with {self.train_set.num_classes} at {self.size}: resume with the "
                              "same --variant, data and --imgsz, or start a new run from it with --init-from")
        if self.config.epochs is None and ckpt.get("epochs", self.epochs) != self.epochs:  # a run fitted to a budget
            self.refit(int(ckpt["epochs"]), warmup_iters=int(ckpt["lr_scheduler"]["warmup"]))
        if ckpt["lr_scheduler"]["total"] != self.schedule.total:
            raise ConfigError(f"{path} was trained with another epochs x batch schedule; resume with the same "
                              "--epochs and --batch, or use --init-from")
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["lr_scheduler"])
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.best_ap = float(ckpt.get("best_ap", -1.0))
        self.history = list(ckpt.get("history", []))
        self.log(f"resumed from {path} at epoch {self.start_epoch}")

    def log(self, line: str) -> None:
        """Print on the main process only."""
        if self.dist.main:
            print(line)

    def fit(self, until: int | None = None) -> list[dict]:
        """Train the epochs left (or up to epoch `until`, exclusive, e.g. to stop early); returns the
        per-epoch log records. With a time budget, stops before an epoch that would not end inside it, and
        evaluates the last epoch it trains (best.pth may be it)."""
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        epoch = self.start_epoch
        while epoch < (self.epochs if until is None else min(until, self.epochs)):
            if self.budget is not None and not self.budget.fits_another(self.history):
                self.log(f"time budget of {self.config.time_minutes:g} min reached after {epoch} epochs; "
                         f"best.pth holds the best validated epoch")
                break
            start = time.perf_counter()
            record = {"epoch": epoch, **self.train_one_epoch(epoch)}
            record["train_s"] = round(time.perf_counter() - start, 3)
            if not self.dist.main:  # the main process evaluates and writes; the others go on and wait for it
                self.history.append(record)
                self.start_epoch = epoch = epoch + 1
                continue
            last_in_budget = self.budget is not None and not self.budget.fits_another([*self.history, record])
            if self.val_set is not None and (self._evaluates(epoch) or last_in_budget):
                record.update(evaluate(self.ema.module, self.val_set, self.config.batch_size, self.size,
                                       self.device))
            record["time_s"] = round(time.perf_counter() - start, 3)
            self.history.append(record)
            self.start_epoch = epoch + 1  # a later fit() goes on from here
            self._save(epoch, record)
            with open(self.out / "log.txt", "a") as f:
                f.write(json.dumps(record) + "\n")
            ap = f", AP {record['AP']:.3f}, AP50 {record['AP50']:.3f}" if "AP" in record else ""
            self.log(f"epoch {epoch + 1}/{self.epochs}: loss {record['loss']:.3f}{ap}, {record['time_s']:.0f} s")
            if time.perf_counter() - self._curves_drawn > CURVES_EVERY_S:
                self._draw_curves()
            epoch += 1
            self._refit_to_budget(epoch)
        if self.dist.main and len(self.history) != self._curves_epochs:  # the epochs since the last drawing
            self._draw_curves()
        return self.history

    def _draw_curves(self) -> None:
        if _has_matplotlib():
            write_curves(self.history, self.out / "curves.png")
        self._curves_drawn, self._curves_epochs = time.perf_counter(), len(self.history)

    def eval_interval(self, epoch: int) -> int:
        """Epochs between evaluations of the EMA model around `epoch`: --eval-every when given. By default, in the
        last quarter of the run (where the best epoch is) every epoch, or every second or third when the EMA
        averages over at least four or six epochs: evaluations closer than half its span score nearly the same
        weights (in the 20-minute forest runs of benchmarks/small_data.py, whose EMA spans 7-11 epochs, the best of
        every third epoch's evaluation was within 0.001 AP of the best of every epoch's, and evaluating the 40
        held-out tiles took a quarter as long as an epoch's training). Before it, every epochs // 20 (the curve)."""
        if self.config.eval_every:
            return self.config.eval_every
        if epoch < 0.75 * self.epochs:
            return max(1, self.epochs // 20)
        ema_span_epochs = 1.0 / (1.0 - self.recipe.ema_decay) / max(1, self.iters_per_epoch)
        return max(1, min(3, int(ema_span_epochs // 2)))

    def _evaluates(self, epoch: int) -> bool:
        """Whether the EMA model is evaluated after `epoch`: every eval_interval epochs, and the last."""
        return (epoch + 1) % self.eval_interval(epoch) == 0 or epoch == self.epochs - 1

    def _evaluated_share(self) -> float:
        """The fraction of the planned epochs that are evaluated."""
        return sum(map(self._evaluates, range(self.epochs))) / self.epochs

    def _refit_to_budget(self, next_epoch: int) -> None:
        """Refit the run's length to the pace measured so far: either way while the learning rate is flat, and
        after that only shorter, when the planned epochs no longer fit, so that the rate's decay and the last
        unaugmented epochs, where a run has them, end inside the budget instead of being cut off (a 20-minute
        Atto run planned 248 epochs at mid-run and had time for 236, its rate at 0.12 of its start instead of
        0.05). The epochs given, or a resumed run, are never refitted."""
        if self.budget is None or self.config.epochs is not None:
            return
        epoch_s, eval_s = pace(self.history)
        epochs = self.budget.epochs_that_fit(next_epoch, epoch_s, eval_s * self._evaluated_share())
        if epochs < self.epochs or (epochs > self.epochs and next_epoch < self.recipe.flat_epoch):
            self.refit(epochs, warmup_iters=self.schedule.warmup)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set; returns the mean losses, the last lr and images/s."""
        torch.manual_seed(epoch_seed(self.config.seed, epoch))
        self.samples.set_epoch(epoch)
        self.collate.set_epoch(epoch)
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(self.samples)).tolist()
        batch_size = self.config.batch_size
        if self.dist.enabled:  # this process's share of every global batch
            order, batch_size = rank_order(order, batch_size, self.dist), batch_size // self.dist.world_size
        loader = DataLoader(self.samples, batch_size=batch_size, sampler=order,
                            num_workers=self.config.workers, collate_fn=self.collate, drop_last=self.drop_last,
                            pin_memory=self.device.type == "cuda")
        self.model.train()
        # the one-to-many encoder loss of the run's first epochs (the decoder returns every anchor only then)
        self.model.decoder.dense_supervision = self.recipe.dense_positives > 0 and epoch < self.recipe.dense_epochs
        sums: dict[str, float] = defaultdict(float)
        images_seen, start = 0, time.perf_counter()
        with Progress(self.iters_per_epoch, f"epoch {epoch + 1}/{self.epochs}",
                      every=5.0 if self.config.progress and self.dist.main else float("inf")) as bar:
            for images, targets in loader:
                losses = self.train_step(images, targets, epoch)
                for k, v in losses.items():
                    sums[k] += v
                images_seen += len(targets) * self.dist.world_size
                bar.update(note=f"loss {losses['loss']:.3f} lr {self.optimizer.param_groups[-1]['lr']:.2e}")
        n = max(1, self.iters_per_epoch)
        record = {k: sums[k] / n for k in ("loss", *LOSS_TERMS) if k in sums}
        if self.dist.enabled:  # the loss of the global batch: the mean of the processes' losses
            names = sorted(record)
            means = torch.tensor([record[k] for k in names], dtype=torch.float64, device=self.device)
            torch.distributed.all_reduce(means)
            record = dict(zip(names, (means / self.dist.world_size).tolist()))
        record["lr"] = self.optimizer.param_groups[-1]["lr"]
        record["images_per_s"] = images_seen / max(time.perf_counter() - start, 1e-9)
        return record

    def train_step(self, images: Tensor, targets: list[dict], epoch: int) -> dict[str, float]:
        """Forward, loss, backward, clip, step, EMA update, schedule step; returns the loss terms."""
        images = images.to(self.device, non_blocking=True, memory_format=torch.channels_last)  # [B,3,H,W]
        targets = _to_device(targets, self.device)
        with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp):
            outputs = self.net(images, targets)
        terms = self.criterion(_float32(outputs), targets, epoch)  # the loss and matching in float32
        loss = sum(terms.values())
        if not self._finite_everywhere(loss):
            raise DeimEdgeError(f"the training loss is {loss.item()} at epoch {epoch}; lower --lr-scale, try "
                                "without --amp, or check the boxes of the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.clip_max_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.clip_max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.model)
        self.schedule.step()
        out = {"loss": loss.item()}
        for name in LOSS_TERMS:
            parts = [v for k, v in terms.items() if k == name or k.startswith(name + "_")]
            if parts:
                out[name] = float(sum(p.item() for p in parts))
        return out

    def _finite_everywhere(self, loss: Tensor) -> bool:
        """Whether the loss is finite in every process (all of them stop together, none waits for the others)."""
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if self.dist.enabled:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    def _save(self, epoch: int, record: dict) -> None:
        """last.pth every epoch, best.pth when the EMA AP improved (no validation set: no best.pth)."""
        metrics = {k: record[k] for k in METRICS if k in record}
        improved = "AP" in metrics and metrics["AP"] > self.best_ap
        if improved:
            self.best_ap = metrics["AP"]
        extra = {"optimizer": self.optimizer.state_dict(), "lr_scheduler": self.schedule.state_dict(),
                 "epoch": epoch, "epochs": self.epochs, "variant": self.variant.name,
                 "num_classes": self.train_set.num_classes,
                 "class_names": list(self.train_set.class_names), "input_size": [self.size, self.size],
                 "metrics": metrics, "args": _plain(dataclasses.asdict(self.config)), "best_ap": self.best_ap,
                 "history": _plain(self.history)}
        if self.scaler.is_enabled():
            extra["scaler"] = self.scaler.state_dict()
        save_checkpoint(self.out / "last.pth", self.model, self.ema.module, ema_updates=self.ema.updates, **extra)
        if improved:
            save_checkpoint(self.out / "best.pth", self.model, self.ema.module, ema_updates=self.ema.updates, **extra)


def read_resume(path: str) -> dict:
    """The state of an interrupted run in its last.pth; CheckpointError when the file is none."""
    ckpt = load_file(path)
    missing = [k for k in RESUME_KEYS if k not in ckpt] if isinstance(ckpt, Mapping) else list(RESUME_KEYS)
    if missing:
        raise CheckpointError(f"{path} is not the last.pth of a deim-edge run (it has no {', '.join(missing)}): "
                              "resume from OUT/last.pth of the run, or start a new run from its weights with "
                              "--init-from")
    return ckpt


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _float32(obj: Any) -> Any:
    """The model's output dict with every half-precision tensor as float32 (lists and dicts walked)."""
    if isinstance(obj, Tensor):
        return obj.float() if obj.dtype in (torch.float16, torch.bfloat16) else obj
    if isinstance(obj, dict):
        return {k: _float32(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_float32(v) for v in obj)
    return obj


def _native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16, AMX-BF16, or Arm's BF16)."""
    from ..bench.device import cpu_facts

    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(cpu_facts()["isa"]))


def _has_matplotlib() -> bool:
    """True when matplotlib imports; otherwise warns once that curves.png is not drawn."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warn("curves.png is not drawn: matplotlib is missing (pip install 'deim-edge[train]')")
        return False
    return True


def write_curves(history: list[dict], path: str | Path) -> Path:
    """A PNG of the training loss and the validation AP / AP50 per epoch, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.5))
    ax_loss, ax_ap = fig.subplots(1, 2)
    epochs = [r["epoch"] + 1 for r in history]
    ax_loss.plot(epochs, [r["loss"] for r in history], marker="o")
    ax_loss.set(title="training loss", xlabel="epoch")
    for key in ("AP", "AP50"):
        points = [(r["epoch"] + 1, r[key]) for r in history if key in r]
        if points:
            ax_ap.plot(*zip(*points), marker="o", label=key)
    ax_ap.set(title="validation (EMA)", xlabel="epoch", ylim=(0, 1))
    if ax_ap.lines:
        ax_ap.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return Path(path)
