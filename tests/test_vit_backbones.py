"""ViT + STA backbones of DEIMv2 S, M, L, X: key parity with the official listings, shapes, loading."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from deim_edge.errors import CheckpointError
from deim_edge.models.sta import ViTAdapterBackbone, load_pretrained_vit

DATA = Path(__file__).parent / "data" / "state_dicts"

VARIANTS = {
    "s": dict(vit="vit_tiny", interaction_indexes=[3, 7, 11], conv_inplane=16),
    "m": dict(vit="vit_tinyplus", interaction_indexes=[3, 7, 11], conv_inplane=16),
    "l": dict(vit="dinov3_vits16", interaction_indexes=[5, 8, 11], conv_inplane=32, hidden_dim=224),
    "x": dict(vit="dinov3_vits16plus", interaction_indexes=[5, 8, 11], conv_inplane=64, hidden_dim=256),
}
HIDDEN = {"s": 192, "m": 256, "l": 224, "x": 256}


def listing(variant: str, mode: str) -> dict[str, tuple[tuple[int, ...], str]]:
    rows = {}
    for line in (DATA / f"{variant}_{mode}.tsv").read_text().splitlines():
        name, shape, dtype = line.split("\t")
        if name.startswith("backbone."):
            rows[name[len("backbone."):]] = (tuple(ast.literal_eval(shape)), dtype)
    return rows


@pytest.fixture(scope="module")
def backbones() -> dict[str, ViTAdapterBackbone]:
    torch.manual_seed(0)
    return {v: ViTAdapterBackbone(**kw).eval() for v, kw in VARIANTS.items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_keys_match_official_listing(backbones, variant):
    train, deploy = listing(variant, "train"), listing(variant, "deploy")
    assert train == deploy  # the backbone has no deploy-time change
    mine = {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in backbones[variant].state_dict().items()}
    assert mine == train


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("size", [(64, 96), (96, 32)])
def test_output_shapes(backbones, variant, size):
    H, W = size
    model = backbones[variant]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, H, W))
    assert model.out_strides == [8, 16, 32]
    assert model.out_channels == [HIDDEN[variant]] * 3
    assert [tuple(o.shape) for o in outs] == [(1, HIDDEN[variant], H // s, W // s) for s in (8, 16, 32)]
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


@pytest.mark.parametrize("variant", ["s", "l"])
def test_load_pretrained_round_trip(backbones, variant, tmp_path):
    model = backbones[variant]
    inner = model.dinov3._model if variant == "s" else model.dinov3
    original = {k: v.clone() for k, v in inner.state_dict().items()}
    state = {k: v + 0.01 if k.endswith(("weight", "bias", "token", "tokens", "gamma")) else v for k, v in original.items()}
    path = tmp_path / "vit.pth"
    torch.save(state, path)
    try:
        info = load_pretrained_vit(model, path)
        loaded = inner.state_dict()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    finally:
        inner.load_state_dict(original)
    assert info == {"path": str(path), "target": "dinov3._model" if variant == "s" else "dinov3", "num_tensors": len(state)}


def test_load_pretrained_errors(backbones, tmp_path):
    model = backbones["s"]
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained_vit(model, tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_pretrained_vit(model, corrupt)
    # ViT-Tiny+ weights into a ViT-Tiny: same keys, wrong widths
    wrong = tmp_path / "vittplus.pt"
    torch.save(backbones["m"].dinov3._model.state_dict(), wrong)
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_pretrained_vit(model, wrong)
    # a DINOv3 state dict into a ViT-Tiny: foreign keys
    foreign = tmp_path / "dinov3.pth"
    torch.save(backbones["l"].dinov3.state_dict(), foreign)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="unexpected"):
        load_pretrained_vit(model, foreign)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown ViT"):
        ViTAdapterBackbone("vit_huge", [3, 7, 11])
    with pytest.raises(ValueError, match="interaction_indexes"):
        ViTAdapterBackbone("vit_tiny", [7, 3, 11])
