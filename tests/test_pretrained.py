"""Pretrained backbone loading: HGNetv2 subsets, Meta DINOv3 and distilled ViT-Tiny layouts, errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from parity_weights import fill_parity_weights
from torch import nn

from deim_edge.errors import CheckpointError
from deim_edge.models.deimv2 import build_backbone, build_model
from deim_edge.models.pretrained import PretrainedReport, load_pretrained_backbone
from deim_edge.variants import get_variant


def backbone(variant: str, device: str = "cpu") -> nn.Module:
    with torch.device(device):  # "meta": keys and shapes only, for files that must not load
        return build_backbone(get_variant(variant))


@pytest.fixture(scope="module")
def b0() -> dict[str, torch.Tensor]:
    """An HGNetv2-B0 ImageNet checkpoint (PPHGNetV2_B0_stage1.pth) with weights no fresh model has."""
    return fill_parity_weights(backbone("n"), seed=1).state_dict()


@pytest.fixture(scope="module")
def vits() -> dict[str, nn.Module]:
    return {v: backbone(v) for v in ("s", "l")}


def shifted(module: nn.Module) -> dict[str, torch.Tensor]:
    """module's state dict with every float tensor moved by 1: values a fresh model does not have."""
    return {k: v + 1 if v.is_floating_point() else v.clone() for k, v in module.state_dict().items()}


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_b0_gives_atto_the_matching_subset(tmp_path: Path, b0) -> None:
    path = tmp_path / "PPHGNetV2_B0_stage1.pth"
    torch.save(b0, path)
    model = build_model("deimv2-atto")  # a whole model: its backbone is loaded
    before = snapshot(model.backbone)
    report = load_pretrained_backbone(model, path)
    own = model.backbone.state_dict()
    assert isinstance(report, PretrainedReport)
    assert report.missing == []
    assert report.skipped_shape and all(k.startswith("stages.2.") for k in report.skipped_shape)
    assert set(report.loaded) | set(report.skipped_shape) == set(own)
    assert set(report.unexpected) == set(b0) - set(own)  # B0's last stage and second stage-2 block
    assert all(k.startswith(("stages.3.", "stages.2.blocks.1.")) for k in report.unexpected)
    assert all(torch.equal(own[k], b0[k]) for k in report.loaded)
    assert all(torch.equal(own[k], before[k]) for k in report.skipped_shape)


@pytest.mark.parametrize("wrap", ["model", "ema", "state_dict", "detector"])
def test_hgnetv2_wrapped_and_prefixed(tmp_path: Path, b0, wrap: str) -> None:
    prefixed = {"backbone." + k: v for k, v in b0.items()}
    if wrap == "detector":  # a whole DEIMv2-N checkpoint: only its backbone is read
        ckpt = {"model": {**build_model("deimv2-n").state_dict(), **prefixed}}
    elif wrap == "ema":  # training checkpoints: the EMA weights win
        ckpt = {"model": {"backbone.stem.stem1.conv.weight": torch.zeros(1)}, "ema": {"module": prefixed}}
    else:
        ckpt = {wrap: prefixed, "epoch": 3}
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    model = backbone("pico")
    report = load_pretrained_backbone(model, path)
    assert report.skipped_shape == [] and report.missing == []
    assert report.loaded == list(model.state_dict())
    assert report.unexpected and all(k.startswith("stages.3.") for k in report.unexpected)
    key = "stages.2.blocks.1.aggregation.1.lab.scale"
    assert torch.equal(model.state_dict()[key], b0[key])


def test_meta_dinov3_round_trip(tmp_path: Path, vits) -> None:
    model = copy.deepcopy(vits["l"])
    meta = shifted(model.dinov3)  # Meta's ViT-S/16 layout: no prefix
    path = tmp_path / "dinov3_vits16_pretrain_lvd1689m.pth"
    torch.save(meta, path)
    sta_before = snapshot(model.sta)
    report = load_pretrained_backbone(model, path)
    assert report == PretrainedReport(loaded=["dinov3." + k for k in meta])
    assert all(torch.equal(v, meta[k]) for k, v in model.dinov3.state_dict().items())
    assert unchanged(model.sta, sta_before)  # the STA and projections are not pretrained


@pytest.mark.parametrize("prefix", ["", "_model.", "backbone.dinov3._model."])
def test_distilled_vit_tiny_goes_into_model(vits, prefix: str) -> None:
    model = copy.deepcopy(vits["s"])
    distilled = shifted(model.dinov3._model)  # vitt_distill.pt: the keys of `_model`
    report = load_pretrained_backbone(model, {prefix + k: v for k, v in distilled.items()})
    assert report.loaded == ["dinov3._model." + k for k in distilled]
    assert report.skipped_shape == report.missing == report.unexpected == []
    assert all(torch.equal(v, distilled[k]) for k, v in model.dinov3._model.state_dict().items())


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    model = backbone("atto")
    with pytest.raises(CheckpointError, match="not found"):
        load_pretrained_backbone(model, tmp_path / "absent.pth")
    torch.save({"stem.stem1.conv.weight": torch.zeros(16, 3, 3, 3)}, tmp_path / "whole.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((tmp_path / "whole.pth").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pretrained_backbone(model, truncated)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="must hold a dict"):
        load_pretrained_backbone(model, tmp_path / "list.pth")


def test_wrong_vit_width_names_the_right_model(vits) -> None:
    model = vits["s"]
    before = snapshot(model)
    tinyplus = backbone("m", "meta").dinov3._model.state_dict()  # vittplus_distill.pt
    with pytest.raises(CheckpointError, match=r"vit_tiny backbone.*only 1 of its 148 tensors.*looks like the "
                                              r"weights of the vit_tinyplus backbone \(deimv2-m\)"):
        load_pretrained_backbone(model, tinyplus)
    assert unchanged(model, before)


def test_wrong_family_names_the_right_model(vits, b0) -> None:
    with pytest.raises(CheckpointError, match=r"dinov3_vits16 backbone.*weights of the B0 backbone \(deimv2-n\)"):
        load_pretrained_backbone(vits["l"], b0)
    with pytest.raises(CheckpointError, match=r"only 0 of its 190 tensors.*dinov3_vits16 backbone \(deimv2-l\)"):
        load_pretrained_backbone(backbone("atto"), backbone("l", "meta").dinov3.state_dict())
    with pytest.raises(CheckpointError, match="not look like the weights of any DEIMv2 backbone"):
        load_pretrained_backbone(backbone("atto"), {"fc.weight": torch.zeros(2, 2)})


def test_vit_is_strict_and_lists_what_disagrees(vits) -> None:
    model = vits["l"]
    before = snapshot(model)
    plus = backbone("x", "meta").dinov3.state_dict()  # ViT-S+/16: SwiGLU where ViT-S/16 has an MLP
    with pytest.raises(CheckpointError, match=r"missing from the file: blocks\.0\.mlp\.fc1\.weight.*"
                                              r"the model does not have: blocks\.0\.mlp\.w1\.weight"):
        load_pretrained_backbone(model, plus)
    state = dict(model.dinov3.state_dict(), **{"norm.weight": torch.ones(3)})
    with pytest.raises(CheckpointError, match=r"1 shapes differ \(file vs model\): norm\.weight \(3,\) vs \(384,\)"):
        load_pretrained_backbone(model, state)
    assert unchanged(model, before)


def test_too_few_tensors(b0) -> None:
    stem_only = {k: v for k, v in b0.items() if k.startswith("stem.")}
    model = backbone("atto")
    with pytest.raises(CheckpointError, match=f"only {len(stem_only)} of its 190 tensors"):
        load_pretrained_backbone(model, stem_only)
    report = load_pretrained_backbone(model, stem_only, min_fraction=0.1)
    assert report.loaded == list(stem_only)
    assert report.missing and all(k.startswith("stages.") for k in report.missing)


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="LiteEncoder"):
        load_pretrained_backbone(build_model("deimv2-atto").encoder, {})
    with pytest.raises(ValueError, match="min_fraction"):
        load_pretrained_backbone(backbone("atto"), {}, min_fraction=0.0)
