"""Model size: FLOPs of a forward pass (one multiply-add counted as two) and parameter count."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError
from ..sizes import as_hw


@torch.no_grad()
def flops(model: nn.Module, input_size: int | tuple[int, int] | None = None, batch: int = 1) -> int:
    """Total FLOPs of one eval forward at `input_size` (defaults to the model's own input size)."""
    if input_size is None:
        input_size = getattr(model, "input_size", None)
        if input_size is None:
            raise ConfigError("pass input_size: the model does not record one")
    h, w = as_hw(input_size)
    param = next(model.parameters())
    x = torch.zeros(batch, 3, h, w, dtype=param.dtype, device=param.device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def num_params(model: nn.Module) -> int:
    """Parameters of `model`, each shared tensor counted once (the official convention)."""
    return sum(p.numel() for p in model.parameters())
