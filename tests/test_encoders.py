"""LiteEncoder / HybridEncoder: official state-dict keys, deploy fusion, output shapes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from deim_edge.models.blocks import sincos_position_embedding
from deim_edge.models.hybrid_encoder import HybridEncoder
from deim_edge.models.lite_encoder import LiteEncoder

DATA = Path(__file__).parent / "data" / "state_dicts"


def _lite(channels: int, hidden: int) -> tuple[type[nn.Module], dict]:
    return LiteEncoder, dict(in_channels=[channels], feat_strides=[16], hidden_dim=hidden,
                             expansion=0.34, depth_mult=0.5)


def _hybrid(channels: list[int], strides: list[int], hidden: int, ff: int, expansion: float,
            depth_mult: float, version: str) -> tuple[type[nn.Module], dict]:
    return HybridEncoder, dict(in_channels=channels, feat_strides=strides, hidden_dim=hidden,
                               dim_feedforward=ff, use_encoder_idx=[len(channels) - 1],
                               expansion=expansion, depth_mult=depth_mult, version=version)


# constructor arguments of each variant's encoder (official configs)
ENCODERS = {
    "atto": _lite(256, 64),
    "femto": _lite(512, 96),
    "pico": _lite(512, 112),
    "n": _hybrid([512, 1024], [16, 32], 128, 512, 0.34, 0.5, "dfine"),
    "s": _hybrid([192] * 3, [8, 16, 32], 192, 512, 0.34, 0.67, "deim"),
    "m": _hybrid([256] * 3, [8, 16, 32], 256, 512, 0.67, 1.0, "deim"),
    "l": _hybrid([224] * 3, [8, 16, 32], 224, 896, 1.0, 1.0, "deim"),
    "x": _hybrid([256] * 3, [8, 16, 32], 256, 1024, 1.25, 1.37, "deim"),
}


def build(name: str) -> nn.Module:
    cls, kwargs = ENCODERS[name]
    return cls(**kwargs)


def official_rows(name: str, mode: str) -> dict[str, tuple[str, str]]:
    """{key without 'encoder.': (shape, dtype)} from the official listing."""
    rows = {}
    for line in (DATA / f"{name}_{mode}.tsv").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        if key.startswith("encoder."):
            rows[key[len("encoder."):]] = (shape, dtype)
    return rows


def our_rows(model: nn.Module) -> dict[str, tuple[str, str]]:
    return {k: (str(tuple(v.shape)), str(v.dtype).replace("torch.", "")) for k, v in model.state_dict().items()}


def deploy(model: nn.Module) -> None:
    model.eval()
    for m in model.modules():
        if hasattr(m, "convert_to_deploy"):
            m.convert_to_deploy()


def randomize(model: nn.Module, seed: int = 0) -> None:
    """Perturb weights and BN statistics so that BN folding is not an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            else:
                t.add_(0.02 * torch.randn(t.shape, generator=g))


def features(name: str, height: int, width: int, batch: int = 1) -> list[torch.Tensor]:
    kwargs = ENCODERS[name][1]
    return [torch.randn(batch, c, height // s, width // s) for c, s in zip(kwargs["in_channels"], kwargs["feat_strides"])]


@pytest.mark.parametrize("name", list(ENCODERS))
def test_train_keys_match_official(name: str) -> None:
    assert our_rows(build(name)) == official_rows(name, "train")


@pytest.mark.parametrize("name", list(ENCODERS))
def test_deploy_keys_match_official_and_outputs_unchanged(name: str) -> None:
    torch.manual_seed(0)
    model = build(name)
    randomize(model)
    model.eval()
    feats = features(name, 64, 96, batch=2)
    with torch.no_grad():
        before = model(feats)
        deploy(model)
        after = model(feats)
    assert our_rows(model) == official_rows(name, "deploy")
    for a, b in zip(before, after):
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", ["atto", "n", "s"])
@pytest.mark.parametrize("size", [(64, 64), (320, 320), (320, 480), (416, 352)])
def test_output_shapes_follow_input_size(name: str, size: tuple[int, int]) -> None:
    model = build(name).eval()
    with torch.no_grad():
        outs = model(features(name, *size))
    assert len(outs) == len(model.out_channels) == len(model.out_strides)
    for out, c, s in zip(outs, model.out_channels, model.out_strides):
        assert tuple(out.shape) == (1, c, size[0] // s, size[1] // s)


def test_out_channels_and_strides() -> None:
    pico, n, large = build("pico"), build("n"), build("l")
    assert (pico.out_channels, pico.out_strides) == ([112, 112], [16, 32])
    assert (n.out_channels, n.out_strides) == ([128, 128], [16, 32])
    assert (large.out_channels, large.out_strides) == ([224, 224, 224], [8, 16, 32])


@pytest.mark.parametrize("name", ["atto", "n"])
def test_train_mode_backward(name: str) -> None:
    model = build(name).train()
    feats = [f.requires_grad_() for f in features(name, 64, 64, batch=2)]
    sum(out.square().mean() for out in model(feats)).backward()
    assert all(f.grad is not None and torch.isfinite(f.grad).all() for f in feats)


def test_position_embedding_is_not_stored() -> None:
    model = build("n")
    assert not any("pos" in k for k in model.state_dict())


def test_position_embedding_layout() -> None:
    pe = sincos_position_embedding(4, 4, 8)  # [1, 16, 8]
    assert pe.shape == (1, 16, 8)
    rows = torch.arange(16) // 4
    cols = torch.arange(16) % 4
    assert torch.allclose(pe[0, :, 0], rows.float().sin())  # square: (row, col)
    assert torch.allclose(pe[0, :, 4], cols.float().sin())
    # non-square: token k gets (k // h, k % h), the official layout
    pe = sincos_position_embedding(2, 3, 8)
    assert torch.allclose(pe[0, :, 0], torch.tensor([0.0, 0, 1, 1, 2, 2]).sin())
    assert torch.allclose(pe[0, :, 6], torch.tensor([0.0, 1, 0, 1, 0, 1]).cos())
    assert math.isclose(pe[0, 5, 1].item(), math.sin(2 * 10000 ** -0.5), rel_tol=1e-6)


def test_deploy_twice_is_harmless() -> None:
    model = build("atto")
    randomize(model)
    deploy(model)
    keys = set(model.state_dict())
    deploy(model)
    assert set(model.state_dict()) == keys


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        LiteEncoder([256, 512], [16, 32], 64)
    with pytest.raises(ValueError):
        HybridEncoder([128], [32], 128, version="rtdetr")
    with pytest.raises(ValueError):
        build("atto")([torch.randn(1, 256, 4, 4)] * 2)
