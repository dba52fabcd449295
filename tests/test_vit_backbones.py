"""ViT + STA backbones of DEIMv2 S, M, L, X: key parity with the official listings, shapes, RoPE."""
from __future__ import annotations

import pytest
import torch
from conftest import listing, read_listing

from deim_edge.models.deimv2 import build_backbone, deploy
from deim_edge.models.sta import ViTAdapterBackbone
from deim_edge.variants import get_variant

VARIANTS = ["s", "m", "l", "x"]  # the ViT variants


@pytest.fixture(scope="module")
def backbones() -> dict[str, ViTAdapterBackbone]:
    torch.manual_seed(0)
    return {v: build_backbone(get_variant(v)).eval() for v in VARIANTS}


@pytest.mark.parametrize("variant", VARIANTS)
def test_keys_match_official_listing(backbones, variant):
    train = read_listing(variant, "train", prefix="backbone.")
    assert listing(backbones[variant]) == train
    assert read_listing(variant, "deploy", prefix="backbone.") == train  # no deploy-time change
    assert listing(deploy(backbones[variant])) == train


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [(64, 96), (96, 32)])
def test_output_shapes(backbones, variant, size):
    H, W = size
    model = backbones[variant]
    spec = get_variant(variant).encoder  # what the encoder takes
    with torch.no_grad():
        outs = model(torch.randn(1, 3, H, W))
    assert model.out_strides == list(spec.in_strides) == [8, 16, 32]
    assert model.out_channels == list(spec.in_channels)
    assert [tuple(o.shape) for o in outs] == [(1, c, H // s, W // s) for c, s in zip(spec.in_channels, spec.in_strides)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_batch_independence(backbones):
    model = backbones["s"]
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        both = model(x)
        first = model(x[:1])
    for a, b in zip(both, first):
        torch.testing.assert_close(a[:1], b, atol=1e-5, rtol=0)


def test_rope_periods_and_qkv_bias_mask(backbones):
    expected = 100.0 ** (2 * torch.arange(16, dtype=torch.float32) / 32)
    for v in VARIANTS:
        sd = backbones[v].state_dict()
        key = "dinov3._model.rope_embed.periods" if v in "sm" else "dinov3.rope_embed.periods"
        assert torch.equal(sd[key], expected)
    mask = backbones["l"].dinov3.blocks[0].attn.qkv.bias_mask
    assert mask.tolist() == [1.0] * 384 + [0.0] * 384 + [1.0] * 384


def test_dinov3_train_mode_rescales_rope(backbones):
    vit = backbones["l"].dinov3
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        vit.train()
        try:
            torch.manual_seed(1)
            a = vit(x, [11])[0]
            torch.manual_seed(2)
            b = vit(x, [11])[0]
        finally:
            vit.eval()
        c = vit(x, [11])[0]
        d = vit(x, [11])[0]
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown ViT"):
        ViTAdapterBackbone("vit_huge", [3, 7, 11])
    with pytest.raises(ValueError, match="interaction_indexes"):
        ViTAdapterBackbone("vit_tiny", [7, 3, 11])
