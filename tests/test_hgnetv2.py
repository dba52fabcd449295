"""Tests of the HGNetv2 backbone: official keys, output shapes, freezing, pretrained loading."""

import ast
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from deim_edge.errors import CheckpointError
from deim_edge.models.hgnetv2 import HGNETV2_CONFIGS, FrozenBatchNorm2d, HGNetv2, load_pretrained_hgnetv2

DATA = Path(__file__).parent / "data" / "state_dicts"

# variant -> (config name, return_idx, out_channels, out_strides), as in the DEIMv2 configs
VARIANTS = {
    "atto": ("Atto", [2], [256], [16]),
    "femto": ("Femto", [2], [512], [16]),
    "pico": ("Pico", [2], [512], [16]),
    "n": ("B0", [2, 3], [512, 1024], [16, 32]),
}


def _backbone_rows(variant: str, kind: str) -> dict[str, tuple[int, ...]]:
    rows = {}
    for line in (DATA / f"{variant}_{kind}.tsv").read_text().splitlines():
        name, shape, _ = line.split("\t")
        if name.startswith("backbone."):
            rows[name.removeprefix("backbone.")] = tuple(ast.literal_eval(shape))
    return rows


def _build(variant: str, **kwargs) -> HGNetv2:
    name, return_idx, _, _ = VARIANTS[variant]
    return HGNetv2(name, return_idx, **kwargs)


@pytest.mark.parametrize("kind", ["train", "deploy"])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_state_dict_matches_official_listing(variant: str, kind: str) -> None:
    model = _build(variant)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _backbone_rows(variant, kind)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_output_shapes_and_strides(variant: str) -> None:
    _, _, channels, strides = VARIANTS[variant]
    model = _build(variant).eval()
    assert model.out_channels == channels
    assert model.out_strides == strides
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 96, 160))
    assert [tuple(o.shape) for o in outs] == [(1, c, 96 // s, 160 // s) for c, s in zip(channels, strides)]
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize("size", [(320, 320), (416, 416), (480, 640), (640, 640)])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_output_shapes_at_deploy_sizes(variant: str, size: tuple[int, int]) -> None:
    _, _, channels, strides = VARIANTS[variant]
    model = _build(variant).to("meta").eval()  # shapes only, no compute
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
    model = HGNetv2("B0", [3, 0, 1, 2]).to("meta").eval()
    assert model.out_channels == [64, 256, 512, 1024]
    assert model.out_strides == [4, 8, 16, 32]
    outs = model(torch.empty(1, 3, 128, 96, device="meta"))
    assert [tuple(o.shape[2:]) for o in outs] == [(32, 24), (16, 12), (8, 6), (4, 3)]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="Atto.*B0.*Femto.*Pico"):
        HGNetv2("B7", [2])


@pytest.mark.parametrize("return_idx", [[3], [-1], []])
def test_bad_return_idx(return_idx: list[int]) -> None:
    with pytest.raises(ValueError, match="return_idx"):
        HGNetv2("Atto", return_idx)


def _frozen_names(model: HGNetv2) -> set[str]:
    """'stem' / 'stages.i' for every part with a frozen parameter."""
    parts = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            parts.add("stem" if name.startswith("stem.") else ".".join(name.split(".")[:2]))
    return parts


def test_freeze_at() -> None:
    assert _frozen_names(_build("n")) == set()
    assert _frozen_names(_build("n", freeze_at=0)) == {"stem"}
    assert _frozen_names(_build("n", freeze_at=2)) == {"stem"}  # freeze_stem_only defaults to True
    assert _frozen_names(_build("n", freeze_at=0, freeze_stem_only=False)) == {"stem", "stages.0"}
    assert _frozen_names(_build("n", freeze_at=1, freeze_stem_only=False)) == {"stem", "stages.0", "stages.1"}
    assert _frozen_names(_build("n", freeze_at=9, freeze_stem_only=False)) == {
        "stem", "stages.0", "stages.1", "stages.2", "stages.3"
    }


def test_freeze_norm_keeps_outputs_and_statistics() -> None:
    torch.manual_seed(0)
    plain = _build("atto")
    with torch.no_grad():
        for m in plain.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    frozen = _build("atto", freeze_norm=True)
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


def _b0_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: (v + torch.randn_like(v) if v.is_floating_point() else v + 3)
            for k, v in HGNetv2("B0", [2, 3]).state_dict().items()}


def test_pretrained_b0_subset_into_atto(tmp_path: Path) -> None:
    state = _b0_state()
    path = tmp_path / "PPHGNetV2_B0_stage1.pth"
    torch.save(state, path)
    model = _build("atto")
    report = load_pretrained_hgnetv2(model, path)
    own = model.state_dict()
    assert report["missing"] == []
    assert report["skipped_shape"]
    assert all(k.startswith("stages.2.") for k in report["skipped_shape"])
    assert set(report["loaded"]) | set(report["skipped_shape"]) == set(own)
    for k in report["loaded"]:
        assert torch.equal(own[k], state[k]), k
    for k in report["skipped_shape"]:
        assert own[k].shape != state[k].shape


@pytest.mark.parametrize("wrap", ["model", "state_dict"])
def test_pretrained_wrapped_and_prefixed(tmp_path: Path, wrap: str) -> None:
    state = _b0_state(1)
    path = tmp_path / "ckpt.pth"
    torch.save({wrap: {"backbone." + k: v for k, v in state.items()}, "epoch": 3}, path)
    model = _build("pico")
    report = load_pretrained_hgnetv2(model, path)
    assert report["skipped_shape"] == [] and report["missing"] == []
    assert set(report["loaded"]) == set(model.state_dict())
    key = "stages.2.blocks.1.aggregation.1.lab.scale"
    assert torch.equal(model.stages[2].blocks[1].aggregation[1].lab.scale, state[key])


def test_pretrained_reports_missing(tmp_path: Path) -> None:
    state = {k: v for k, v in _b0_state().items() if not k.startswith("stages.3.")}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    report = load_pretrained_hgnetv2(_build("n"), path)
    assert report["missing"] and all(k.startswith("stages.3.") for k in report["missing"])


def test_pretrained_bad_files(tmp_path: Path) -> None:
    model = _build("atto")
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained_hgnetv2(model, tmp_path / "absent.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError):
        load_pretrained_hgnetv2(model, corrupt)
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, unrelated)
    with pytest.raises(CheckpointError):
        load_pretrained_hgnetv2(model, unrelated)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(CheckpointError):
        load_pretrained_hgnetv2(model, not_a_dict)
