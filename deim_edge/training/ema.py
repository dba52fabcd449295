"""Exponential moving average of a model's weights, with the DEIM warm-up of the decay."""

from __future__ import annotations

import math
from copy import deepcopy

import torch
from torch import nn


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (the model itself otherwise)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


class ModelEMA:
    """A frozen copy of the model whose floating-point state follows the trained model as
    ema = d * ema + (1 - d) * model, with d = decay * (1 - exp(-updates / warmups)), so early
    updates follow the model closely (warmups=0: d = decay from the start).

    Float parameters and buffers (BatchNorm running statistics) are averaged; integer buffers
    (num_batches_tracked) are copied. `state_dict()` is the official checkpoint's 'ema' entry:
    {'module': state dict, 'updates': int}. `decay` may be changed between updates and takes
    effect at once (in the public code such changes have no effect).
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmups: int = 1000) -> None:
        if not 0.0 <= decay < 1.0 or warmups < 0:
            raise ValueError(f"EMA needs 0 <= decay < 1 and warmups >= 0, got decay={decay}, warmups={warmups}")
        self.module = deepcopy(unwrap_model(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmups = warmups
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The averaging weight of the old EMA value at update number `updates` (1-based)."""
        if self.warmups == 0:
            return self.decay
        return self.decay * (1.0 - math.exp(-updates / self.warmups))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of `model` (DDP-wrapped or not) into the average."""
        self.updates += 1
        d = self.decay_at(self.updates)
        current = unwrap_model(model).state_dict()
        for name, ema_value in self.module.state_dict().items():
            value = current[name].detach()
            if ema_value.dtype.is_floating_point:
                ema_value.mul_(d).add_(value.to(ema_value.dtype), alpha=1.0 - d)
            else:
                ema_value.copy_(value)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Restore from `state_dict()` output or an official checkpoint's 'ema' entry."""
        self.module.load_state_dict(state["module"], strict=strict)
        self.updates = int(state.get("updates", 0))
