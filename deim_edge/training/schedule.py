"""The DEIM flat-cosine learning-rate schedule, stepped once per iteration.

For a group whose initial rate is `lr` (min_lr = lr * lr_gamma), at iteration i of T:
  i <= W                     lr * (i / W)**2                (warm-up; quadratic, as the public code)
  W < i <= F                 lr                             (flat)
  i >= T - A                 min_lr                         (the no-augmentation epochs)
  otherwise                  min_lr + (lr - min_lr) * (1 + cos(pi * (i - F) / (T - F - A))) / 2
with W = warm-up iterations, F = flat_epoch and A = no_aug_epoch in iterations.

Shorter (or longer) training than the recipe: flat_epoch and no_aug_epoch scale with
epochs / recipe.epochs (rounded to whole epochs, `scaled_epoch`), the warm-up iterations with the
same factor, and the warm-up never exceeds a third of all iterations.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from ..variants import TrainRecipe


def scaled_epoch(epoch: int, epochs: int, recipe: TrainRecipe) -> int:
    """A recipe epoch (e.g. flat_epoch) moved to a run of `epochs` epochs, in proportion."""
    return int(round(epoch * epochs / recipe.epochs))


def flat_cosine_lr(i: int, lr: float, min_lr: float, total: int, warmup: int, flat: int, no_aug: int) -> float:
    """The learning rate at iteration `i` (all lengths in iterations)."""
    if i <= warmup:
        return lr * (i / warmup) ** 2
    if i <= flat:
        return lr
    if i >= total - no_aug:
        return min_lr
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (i - flat) / (total - flat - no_aug)))


class FlatCosineSchedule:
    """Sets every param group's lr for the coming iteration: after construction iteration 0's
    rate (0, warm-up starts there); call `step()` after each optimizer step. The initial rate
    of each group is read from the optimizer (kept in group['initial_lr'])."""

    def __init__(self, optimizer: torch.optim.Optimizer, recipe: TrainRecipe, iters_per_epoch: int,
                 epochs: int | None = None) -> None:
        epochs = recipe.epochs if epochs is None else epochs
        if iters_per_epoch < 1 or epochs < 1:
            raise ConfigError(f"the schedule needs at least one epoch of at least one iteration, got "
                              f"epochs={epochs}, iters_per_epoch={iters_per_epoch}")
        self.optimizer = optimizer
        self.total = iters_per_epoch * epochs
        self.flat = iters_per_epoch * scaled_epoch(recipe.flat_epoch, epochs, recipe)
        self.no_aug = iters_per_epoch * scaled_epoch(recipe.no_aug_epoch, epochs, recipe)
        self.warmup = max(1, min(round(recipe.warmup_iters * epochs / recipe.epochs), self.total // 3))
        self.base_lrs = [g.setdefault("initial_lr", g["lr"]) for g in optimizer.param_groups]
        self.min_lrs = [lr * recipe.lr_gamma for lr in self.base_lrs]
        self.last_iter = 0
        self._apply()

    def lr_at(self, i: int) -> list[float]:
        """The rate of each param group at iteration `i`."""
        return [flat_cosine_lr(i, lr, low, self.total, self.warmup, self.flat, self.no_aug)
                for lr, low in zip(self.base_lrs, self.min_lrs)]

    def _apply(self) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.lr_at(self.last_iter)):
            group["lr"] = lr

    def seek(self, iteration: int) -> None:
        """Move to `iteration` (a schedule rebuilt for a new run length goes on from where the old one was)."""
        self.last_iter = int(iteration)
        self._apply()

    def step(self) -> None:
        """Move to the next iteration."""
        self.last_iter += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_iter": self.last_iter, "total": self.total, "warmup": self.warmup, "flat": self.flat,
                "no_aug": self.no_aug, "base_lrs": list(self.base_lrs), "min_lrs": list(self.min_lrs)}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where `state` (from `state_dict()`) left off."""
        self.last_iter = int(state["last_iter"])
        self.total, self.warmup = int(state["total"]), int(state["warmup"])
        self.flat, self.no_aug = int(state["flat"]), int(state["no_aug"])
        self.base_lrs, self.min_lrs = list(state["base_lrs"]), list(state["min_lrs"])
        self._apply()
