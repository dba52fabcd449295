"""Random weights that behave like a trained model's in one respect: activations keep their scale.

A freshly built DEIMv2 shrinks its activations layer by layer (HGNetv2 memory ~1e-6), so every
encoder position scores the same and the query top-k picks among exact ties; two runtimes then
pick different queries and agree on nothing. Setting the BatchNorm statistics from random images
fixes that, which makes random-weight artifacts usable for checking a deployment pipeline.
"""

from __future__ import annotations

import torch
from torch import nn

from ..variants import Variant, get_variant

CALIBRATION_BATCH = 2


@torch.no_grad()
def random_model(variant: str | Variant, input_size: int | tuple[int, int] | None = None, seed: int = 0,
                 num_classes: int | None = None) -> nn.Module:
    """A `variant` DEIMv2 in eval mode with seeded random weights and BatchNorm statistics measured
    on seeded random images (the same model for the same arguments)."""
    from ..models import build_model

    v = get_variant(variant)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(v, num_classes=num_classes, input_size=input_size)
        h, w = model.input_size
        images = torch.rand(CALIBRATION_BATCH, 3, h, w)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a cumulative average: one batch sets the statistics
    model.train()(images)
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum
    return model.eval()
