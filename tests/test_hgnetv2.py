"""Tests of the HGNetv2 backbone: official keys, output shapes, return_idx, freezing."""

import pytest
import torch
import torch.nn as nn
from conftest import listing, read_listing
from parity_weights import fill_parity_weights

from deim_edge.models.deimv2 import build_backbone, deploy
from deim_edge.models.hgnetv2 import HGNETV2_CONFIGS, FrozenBatchNorm2d, HGNetv2
from deim_edge.variants import get_variant

VARIANTS = ["atto", "femto", "pico", "n"]  # the HGNetv2 variants


def _expected_outputs(variant: str) -> tuple[list[int], list[int]]:
    """The channels and strides the variant's encoder takes."""
    spec = get_variant(variant).encoder
    return list(spec.in_channels), list(spec.in_strides)


def _build_n(**kwargs) -> HGNetv2:
    spec = get_variant("n").backbone
    return HGNetv2(spec.name, spec.taps, **kwargs)


@pytest.mark.parametrize("mode", ["train", "deploy"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_matches_official_listing(variant: str, mode: str) -> None:
    model = build_backbone(get_variant(variant))
    if mode == "deploy":
        deploy(model)
    assert listing(model) == read_listing(variant, mode, prefix="backbone.")


@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes_and_strides(variant: str) -> None:
    channels, strides = _expected_outputs(variant)
    model = build_backbone(get_variant(variant)).eval()
    assert (model.out_channels, model.out_strides) == (channels, strides)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 96, 160))
    assert [tuple(o.shape) for o in outs] == [(1, c, 96 // s, 160 // s) for c, s in zip(channels, strides)]
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize("size", [(320, 320), (416, 416), (480, 640), (640, 640)])
@pytest.mark.parametrize("variant", VARIANTS)
def test_output_shapes_at_deploy_sizes(variant: str, size: tuple[int, int]) -> None:
    channels, strides = _expected_outputs(variant)
    model = build_backbone(get_variant(variant)).to("meta").eval()  # shapes only, no compute
    h, w = size
    outs = model(torch.empty(1, 3, h, w, device="meta"))
    assert [tuple(o.shape) for o in outs] == [(1, c, h // s, w // s) for c, s in zip(channels, strides)]


def test_configs_chain_channels() -> None:
    for cfg in HGNETV2_CONFIGS.values():
        stages = cfg["stages"]
        assert cfg["stem"][2] == stages[0].in_chs
        for prev, nxt in zip(stages, stages[1:]):
            assert prev.out_chs == nxt.in_chs


def test_b0_returns_every_stage_at_its_stride() -> None:
    model = HGNetv2("B0", [0, 1, 2, 3]).to("meta").eval()
    assert model.out_channels == [64, 256, 512, 1024]
    assert model.out_strides == [4, 8, 16, 32]
    outs = model(torch.empty(1, 3, 128, 96, device="meta"))
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 24), (16, 12), (8, 6), (4, 3)]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="Atto.*B0.*Femto.*Pico"):
        HGNetv2("B7", [2])


@pytest.mark.parametrize("return_idx", [[3], [-1], [], [2, 1], [1, 1], [2, 0, 1]])
def test_bad_return_idx(return_idx: list[int]) -> None:
    with pytest.raises(ValueError, match="return_idx must be increasing stage indices in 0..2"):
        HGNetv2("Atto", return_idx)


def _frozen_names(model: HGNetv2) -> set[str]:
    """'stem' / 'stages.i' for every part with a frozen parameter."""
    parts = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            parts.add("stem" if name.startswith("stem.") else ".".join(name.split(".")[:2]))
    return parts


def test_freeze_at() -> None:
    assert _frozen_names(_build_n()) == set()
    assert _frozen_names(_build_n(freeze_at=0)) == {"stem"}
    assert _frozen_names(_build_n(freeze_at=2)) == {"stem"}  # freeze_stem_only defaults to True
    assert _frozen_names(_build_n(freeze_at=0, freeze_stem_only=False)) == {"stem", "stages.0"}
    assert _frozen_names(_build_n(freeze_at=1, freeze_stem_only=False)) == {"stem", "stages.0", "stages.1"}
    assert _frozen_names(_build_n(freeze_at=9, freeze_stem_only=False)) == {
        "stem", "stages.0", "stages.1", "stages.2", "stages.3"
    }


def test_freeze_norm_keeps_outputs_and_statistics() -> None:
    spec = get_variant("atto").backbone
    plain = fill_parity_weights(HGNetv2(spec.name, spec.taps))
    frozen = HGNetv2(spec.name, spec.taps, freeze_norm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) == n_bn
    frozen.load_state_dict(plain.state_dict(), strict=True)  # BatchNorm checkpoints load as is
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = plain.eval()(x)[0]
        got = frozen.train()(x)[0]  # frozen statistics are used even in train mode
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in frozen.state_dict().items())
