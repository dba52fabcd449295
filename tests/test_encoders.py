"""LiteEncoder / HybridEncoder: official state-dict keys, deploy fusion, output shapes."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import listing, read_listing
from parity_weights import fill_parity_weights
from torch import nn

from deim_edge.models.blocks import sincos_position_embedding
from deim_edge.models.deimv2 import build_encoder, deploy
from deim_edge.models.hybrid_encoder import HybridEncoder
from deim_edge.models.lite_encoder import LiteEncoder
from deim_edge.variants import get_variant

VARIANTS = ["atto", "femto", "pico", "n", "s", "m", "l", "x"]


def build(variant: str) -> nn.Module:
    return build_encoder(get_variant(variant))


def features(variant: str, height: int, width: int, batch: int = 1) -> list[torch.Tensor]:
    spec = get_variant(variant).encoder
    return [torch.randn(batch, c, height // s, width // s) for c, s in zip(spec.in_channels, spec.in_strides)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_keys_match_official(variant: str) -> None:
    assert listing(build(variant)) == read_listing(variant, "train", prefix="encoder.")


@pytest.mark.parametrize("variant", VARIANTS)
def test_deploy_keys_match_official_and_outputs_unchanged(variant: str) -> None:
    torch.manual_seed(0)
    model = fill_parity_weights(build(variant)).eval()
    feats = features(variant, 64, 96, batch=2)
    with torch.no_grad():
        before = model(feats)
        deploy(model)
        after = model(feats)
    assert listing(model) == read_listing(variant, "deploy", prefix="encoder.")
    for a, b in zip(before, after):
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("variant", ["atto", "n", "s"])
@pytest.mark.parametrize("size", [(64, 64), (320, 320), (320, 480), (416, 352)])
def test_output_shapes_follow_input_size(variant: str, size: tuple[int, int]) -> None:
    model = build(variant).eval()
    with torch.no_grad():
        outs = model(features(variant, *size))
    assert len(outs) == len(model.out_channels) == len(model.out_strides)
    for out, c, s in zip(outs, model.out_channels, model.out_strides):
        assert tuple(out.shape) == (1, c, size[0] // s, size[1] // s)


@pytest.mark.parametrize("variant", VARIANTS)
def test_outputs_are_what_the_decoder_takes(variant: str) -> None:
    spec = get_variant(variant).decoder
    model = build(variant)
    assert model.out_channels == [spec.hidden_dim] * spec.num_levels
    assert model.out_strides == list(spec.feat_strides)


@pytest.mark.parametrize("variant", ["atto", "n"])
def test_train_mode_backward(variant: str) -> None:
    model = build(variant).train()
    feats = [f.requires_grad_() for f in features(variant, 64, 64, batch=2)]
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
    model = deploy(fill_parity_weights(build("atto")))
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
