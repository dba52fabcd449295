"""Optimizer groups (counts from the public get_optim_params), flat-cosine schedule, EMA."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from deim_edge.models.deimv2 import build_model
from deim_edge.training.ema import ModelEMA
from deim_edge.training.optim import build_optimizer, group_names
from deim_edge.training.schedule import FlatCosineSchedule, flat_cosine_lr
from deim_edge.variants import get_variant

# Group sizes given by the public DEIMv2 code (get_optim_params on its own model, same names
# checked one by one): /work/ref/checks/solver_groups.py. Groups: backbone, backbone no-decay,
# encoder/decoder no-decay, rest.
REFERENCE_GROUP_SIZES = {
    "deimv2-atto": [115, 0, 69, 117],
    "deimv2-pico": [149, 0, 111, 75],
    "deimv2-n": [186, 0, 132, 87],
    "deimv2-s": [50, 97, 194, 138],
}


@pytest.mark.parametrize("name", list(REFERENCE_GROUP_SIZES))
def test_groups_match_reference(name):
    model = build_model(name)
    assert [len(g) for g in group_names(model, name)] == REFERENCE_GROUP_SIZES[name]
    recipe = get_variant(name).recipe
    opt = build_optimizer(model, name)
    assert isinstance(opt, torch.optim.AdamW)
    lrs = [g["lr"] for g in opt.param_groups]
    decays = [g["weight_decay"] for g in opt.param_groups]
    assert lrs == [recipe.backbone_lr, recipe.backbone_lr, recipe.lr, recipe.lr]
    assert decays == [recipe.weight_decay, 0.0, 0.0, recipe.weight_decay]
    assert all(tuple(g["betas"]) == recipe.betas for g in opt.param_groups)
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in opt.param_groups) == trainable


def test_group_rules_on_names():
    atto, pico = build_model("deimv2-atto"), build_model("deimv2-pico")
    atto_groups, pico_groups = group_names(atto, "atto"), group_names(pico, "pico")
    assert "backbone.stem.stem1.bn.weight" in atto_groups[0]  # '.bn.' keeps weight decay in the backbone
    head_bias = [n for n in pico_groups[2] if n.endswith(".bias") and "norm" not in n and ".bn." not in n]
    assert head_bias and all(n in pico_groups[2] for n in head_bias)
    assert not any(n in atto_groups[2] for n in head_bias)  # Atto: head biases keep weight decay
    vit = group_names(build_model("deimv2-s"), "s")
    assert "backbone.norms.0.weight" in vit[3] and "backbone.sta.stem.1.bias" in vit[2]


def test_recipe_override_and_ddp_unwrap():
    model = build_model("deimv2-atto")
    recipe = replace(get_variant("atto").recipe, lr=1e-2, backbone_lr=5e-3, weight_decay=0.05, betas=(0.8, 0.99))
    opt = build_optimizer(nn.DataParallel(model), "atto", recipe)
    assert [g["lr"] for g in opt.param_groups] == [5e-3, 5e-3, 1e-2, 1e-2]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0, 0.0, 0.05]
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)


def _two_group_optimizer() -> torch.optim.Optimizer:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}])


SMALL = replace(get_variant("atto").recipe, epochs=10, flat_epoch=4, no_aug_epoch=2, warmup_iters=5, lr_gamma=0.5)


def test_schedule_values_by_hand():
    # 10 epochs x 10 iterations: warm-up 5, flat to 40, cosine 40..80, constant 0.5 * lr from 80.
    opt = _two_group_optimizer()
    sched = FlatCosineSchedule(opt, SMALL, iters_per_epoch=10)
    seen = [sched.get_last_lr()]
    for _ in range(99):
        sched.step()
        seen.append(sched.get_last_lr())
    expected = {0: 0.0, 2: 0.16, 5: 1.0, 6: 1.0, 20: 1.0, 40: 1.0, 50: 0.9267766953, 60: 0.75, 70: 0.5732233047,
                80: 0.5, 99: 0.5}
    for i, value in expected.items():
        assert seen[i] == pytest.approx([value, 0.1 * value], abs=1e-9), i


def test_schedule_scales_to_fewer_epochs():
    recipe = get_variant("atto").recipe  # 500 epochs, flat 250, no-aug 32, warm-up 4000 iterations
    sched = FlatCosineSchedule(_two_group_optimizer(), recipe, iters_per_epoch=20, epochs=50)
    assert (sched.total, sched.flat, sched.no_aug) == (1000, 500, 60)
    assert sched.warmup == 333  # 4000 * 50/500 = 400, capped at a third of 1000
    full = FlatCosineSchedule(_two_group_optimizer(), recipe, iters_per_epoch=1000)
    assert (full.total, full.warmup, full.flat, full.no_aug) == (500_000, 4000, 250_000, 32_000)


def test_schedule_resume_is_exact():
    opt = _two_group_optimizer()
    sched = FlatCosineSchedule(opt, SMALL, iters_per_epoch=10)
    for _ in range(37):
        sched.step()
    saved_opt, saved = opt.state_dict(), sched.state_dict()
    after = []
    for _ in range(40):
        sched.step()
        after.append(sched.get_last_lr())

    opt2 = _two_group_optimizer()
    sched2 = FlatCosineSchedule(opt2, replace(SMALL, epochs=3), iters_per_epoch=7)
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved)
    at_37 = flat_cosine_lr(37, 1.0, 0.5, total=100, warmup=5, flat=40, no_aug=20)
    assert sched2.get_last_lr() == pytest.approx([at_37, 0.1 * at_37])
    resumed = []
    for _ in range(40):
        sched2.step()
        resumed.append(sched2.get_last_lr())
    assert resumed == after


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def test_ema_decay_formula():
    ema = ModelEMA(_Tiny(), decay=0.9999, warmups=1000)
    assert ema.decay_at(1) == pytest.approx(0.9999 * (1 - math.exp(-0.001)), rel=1e-12)
    assert ema.decay_at(1000) == pytest.approx(0.632057347, abs=1e-9)  # 0.9999 * (1 - 1/e)
    assert ema.decay_at(20000) == pytest.approx(0.9999, abs=1e-8)
    assert ModelEMA(_Tiny(), decay=0.99, warmups=0).decay_at(1) == 0.99


def test_ema_update_averages_weights_and_buffers():
    torch.manual_seed(0)
    model = _Tiny()
    ema = ModelEMA(model, decay=0.9, warmups=10)
    old = {k: v.clone() for k, v in ema.module.state_dict().items()}
    model.train()
    model(torch.randn(8, 3))  # moves BatchNorm running stats and num_batches_tracked
    with torch.no_grad():
        model.fc.weight.add_(1.0)
    ema.update(model)
    d = 0.9 * (1 - math.exp(-0.1))
    new = model.state_dict()
    for k in ("fc.weight", "fc.bias", "bn.weight", "bn.running_mean", "bn.running_var"):
        assert torch.allclose(ema.module.state_dict()[k], d * old[k] + (1 - d) * new[k], atol=1e-7), k
    assert ema.module.state_dict()["bn.num_batches_tracked"].item() == 1
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert not ema.module.training


def test_ema_state_dict_layout_and_resume():
    torch.manual_seed(1)
    model = _Tiny()
    ema = ModelEMA(model, decay=0.99, warmups=5)
    for _ in range(3):
        with torch.no_grad():
            model.fc.weight.add_(0.1)
        ema.update(model)
    state = ema.state_dict()
    assert set(state) == {"module", "updates"} and state["updates"] == 3
    assert set(state["module"]) == set(model.state_dict())
    checkpoint = {"ema": {"module": {k: v.clone() for k, v in state["module"].items()}, "updates": 3}}

    resumed = ModelEMA(_Tiny(), decay=0.99, warmups=5)
    resumed.load_state_dict(checkpoint["ema"])
    for e in (ema, resumed):
        e.update(model)
    assert resumed.updates == ema.updates == 4
    for k, v in ema.module.state_dict().items():
        assert torch.equal(v, resumed.module.state_dict()[k]), k


def test_ema_unwraps_ddp(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = _Tiny()
        wrapped = nn.parallel.DistributedDataParallel(model)
        ema = ModelEMA(wrapped, decay=0.9, warmups=0)
        assert set(ema.module.state_dict()) == set(model.state_dict())
        with torch.no_grad():
            model.fc.bias.add_(1.0)
        ema.update(wrapped)
        expected = 0.9 * (model.fc.bias - 1.0) + 0.1 * model.fc.bias
        assert torch.allclose(ema.module.fc.bias, expected, atol=1e-7)
    finally:
        dist.destroy_process_group()
