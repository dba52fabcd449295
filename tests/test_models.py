"""The assembled DEIMv2 models: official parameter counts, state-dict listings, parity with the
public code (pinned test vectors), input sizes, deploy, FLOPs, checkpoints and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, assert_same_queries, listing, read_listing
from parity_weights import fill_parity_weights, parity_input

from deim_edge import VARIANTS, CheckpointError, DeimEdgeError, InputSizeError, UnknownVariantError, get_variant
from deim_edge.models import (build_model, flops, load_checkpoint, load_pretrained_backbone, read_state_dict,
                              save_checkpoint)

NAMES = list(VARIANTS)
PARITY_FILES = sorted((DATA / "parity").glob("*.npz"))
TOL = 1e-4


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", params=NAMES)
def built(request):
    """(variant, train-mode model, deployed copy), built once per variant."""
    variant = get_variant(request.param)
    train = build_model(variant)
    deployed = build_model(variant).deploy()
    return variant, train, deployed


def test_parameter_counts_equal_the_official_table(built):
    variant, train, deployed = built
    assert n_params(train) == variant.published.params_train
    assert n_params(deployed) == variant.published.params_deploy


def test_state_dict_equals_the_official_listing(built):
    variant, train, deployed = built
    for model, mode in ((train, "train"), (deployed, "deploy")):
        expected = read_listing(variant.name, mode)
        got = listing(model)
        assert list(got) == list(expected), f"{variant.name} {mode}: key order or names differ"
        assert got == expected


@pytest.mark.parametrize("path", PARITY_FILES, ids=lambda p: p.stem)
def test_outputs_equal_the_public_code(path: Path, tmp_path: Path):
    """Vectors from tools/make_parity_vectors.py: same weights and input through the public code."""
    variant_name, size = path.stem.rsplit("_", 1)
    ref = np.load(path)
    size = int(size)
    model = fill_parity_weights(build_model(variant_name, input_size=size), int(ref["seed"])).eval()
    # through an official-format checkpoint file, EMA weights preferred over the raw ones
    file = tmp_path / "ckpt.pth"
    torch.save({"model": {k: torch.zeros_like(v) for k, v in model.state_dict().items()},
                "ema": {"module": model.state_dict(), "updates": 1}}, file)
    model = load_checkpoint(file, variant_name, input_size=size)
    x = parity_input((size, size), int(ref["seed"]))
    with torch.no_grad():
        assert_same_queries(model(x), ref["pred_logits"], ref["pred_boxes"])
        assert_same_queries(model.deploy()(x), ref["deploy_logits"], ref["deploy_boxes"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_deploy_changes_outputs_only_by_float_rounding(name, dtype):
    """fp32: within 3e-5 relative to the output's scale (float rounding: under 1e-5 on AVX512 CPUs, 1.3e-5 for M
    on an AVX2-only one); fp64: the fusions are exact."""
    model = fill_parity_weights(build_model(name, input_size=320)).eval().to(dtype)
    x = parity_input((320, 320)).to(dtype)
    with torch.no_grad():
        before = model(x)
        after = model.deploy()(x)
    tol = {"atol": 3e-5, "rtol": 3e-5} if dtype == torch.float32 else {"atol": 1e-6}
    assert_same_queries({k: v.float() for k, v in after.items()}, before["pred_logits"].float().numpy(),
                        before["pred_boxes"].float().numpy(), **tol)


def test_parity_vectors_cover_every_variant():
    assert {p.stem.rsplit("_", 1)[0] for p in PARITY_FILES} == set(NAMES)


@pytest.mark.parametrize("name,size", [("deimv2-pico", 320), ("deimv2-pico", 480), ("deimv2-atto", 640),
                                       ("deimv2-atto", (256, 416)), ("deimv2-n", 480), ("deimv2-s", (320, 448))])
def test_any_multiple_of_32_runs(name, size):
    model = build_model(name, input_size=size).eval()
    h, w = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        out = model(torch.rand(1, 3, h, w))
    q = get_variant(name).decoder.num_queries
    assert out["pred_logits"].shape == (1, q, 80) and out["pred_boxes"].shape == (1, q, 4)
    assert torch.isfinite(out["pred_boxes"]).all()


def test_model_runs_other_sizes_than_its_anchors():
    model = build_model("deimv2-atto").eval()  # anchors for 320
    with torch.no_grad():
        ref = build_model("deimv2-atto", input_size=416).eval()
        ref.load_state_dict({k: v for k, v in model.state_dict().items()
                             if k not in ("decoder.anchors", "decoder.valid_mask")}, strict=False)
        x = torch.rand(1, 3, 416, 416)
        torch.testing.assert_close(model(x)["pred_logits"], ref(x)["pred_logits"])


def test_checkpoint_trained_at_one_size_loads_for_another(tmp_path: Path):
    model = build_model("deimv2-pico")  # 640
    save_checkpoint(tmp_path / "pico.pth", model, ema=model)
    loaded = load_checkpoint(tmp_path / "pico.pth", "deimv2-pico", input_size=320)
    assert loaded.input_size == (320, 320)
    assert loaded.decoder.anchors.shape[1] == (320 // 16) ** 2 + (320 // 32) ** 2
    loaded.set_input_size(480)
    with torch.no_grad():
        assert loaded(torch.rand(1, 3, 480, 480))["pred_logits"].shape == (1, 200, 80)


@pytest.mark.parametrize("size", [300, (320, 330), 0])
def test_size_not_a_multiple_of_32_is_a_clear_error(size):
    with pytest.raises(InputSizeError, match="multiple of 32"):
        build_model("deimv2-atto", input_size=size)


@pytest.mark.parametrize("name,size,smallest", [("deimv2-atto", 128, 160), ("deimv2-pico", 96, 224),
                                                ("deimv2-s", 96, 128)])
def test_size_too_small_for_the_queries_is_a_clear_error(name, size, smallest):
    with pytest.raises(InputSizeError, match=f"too small.*at least {smallest}x{smallest}"):
        build_model(name, input_size=size)
    build_model(name, input_size=smallest)
    with pytest.raises(InputSizeError, match="too small"):
        build_model(name).eval()(torch.rand(1, 3, size, size))


def test_a_deployed_model_refuses_to_train():
    model = build_model("deimv2-atto").deploy()
    with pytest.raises(DeimEdgeError, match="build or load a fresh model"):
        model.train()(torch.rand(1, 3, 320, 320))
    assert model.deploy() is model  # deploying twice is harmless


def test_forward_on_an_odd_image_is_a_clear_error():
    model = build_model("deimv2-atto").eval()
    with pytest.raises(InputSizeError, match=r"multiples of 32 \(e\.g\. 320x352\)"):
        model(torch.rand(1, 3, 321, 345))


def test_training_outputs_carry_what_the_criterion_needs():
    model = build_model("deimv2-atto", num_classes=3).train()
    targets = [{"labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])},
               {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.4, 0.4, 0.5, 0.5]])}]
    torch.manual_seed(0)
    out = model(torch.rand(2, 3, 320, 320), targets)
    for key in ("pred_logits", "pred_boxes", "pred_corners", "ref_points", "up", "reg_scale", "aux_outputs",
                "enc_aux_outputs", "pre_outputs", "dn_outputs", "dn_meta"):
        assert key in out, key
    assert out["pred_logits"].shape == (2, 100, 3)
    assert len(out["aux_outputs"]) == get_variant("deimv2-atto").decoder.num_layers - 1
    loss = out["pred_boxes"].sum() + out["pred_logits"].sum() + sum(a["pred_logits"].sum() for a in out["dn_outputs"])
    loss.backward()
    assert model.backbone.stem.stem1.conv.weight.grad is not None


@pytest.mark.parametrize("name", NAMES)
def test_flops_within_3_percent_of_the_table(name):
    variant = get_variant(name)
    measured = flops(build_model(variant)) / 1e9
    assert measured == pytest.approx(variant.published.gflops, rel=0.03)


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(UnknownVariantError) as err:
        build_model("deimv2-zepto")
    assert all(name in str(err.value) for name in NAMES)


def test_short_names_are_accepted():
    assert get_variant("pico") is get_variant("DEIMv2-Pico") is VARIANTS["deimv2-pico"]


def test_checkpoint_of_another_variant_says_which_keys_and_shapes_disagree(tmp_path: Path):
    save_checkpoint(tmp_path / "femto.pth", build_model("deimv2-femto"))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "femto.pth", "deimv2-atto")
    message = str(err.value)
    assert "shapes disagree" in message and "backbone.stages.2" in message
    assert "looks like a deimv2-femto checkpoint" in message


def test_checkpoint_with_other_classes_suggests_num_classes(tmp_path: Path):
    state = build_model("deimv2-atto", num_classes=5).state_dict()
    model = load_checkpoint({"model": state}, "deimv2-atto")  # num_classes read from the checkpoint
    assert model.decoder.enc_score_head.out_features == 5
    with pytest.raises(CheckpointError, match="num_classes=5"):
        load_checkpoint({"model": state}, "deimv2-atto", num_classes=80)


def test_missing_keys_are_named(tmp_path: Path):
    state = build_model("deimv2-atto").state_dict()
    del state["decoder.enc_score_head.bias"]
    state["decoder.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing.*enc_score_head\.bias(.|\n)*does not have: decoder\.extra"):
        load_checkpoint(state, "deimv2-atto")


def test_corrupt_and_missing_files_are_checkpoint_errors(tmp_path: Path):
    good = tmp_path / "atto.pth"
    save_checkpoint(good, build_model("deimv2-atto"))
    broken = tmp_path / "broken.pth"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(broken, "deimv2-atto")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pth", "deimv2-atto")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as err:
        read_state_dict(tmp_path / "text.pth")
    assert "trusted" not in str(err.value)  # never advise unpickling a file that is no checkpoint


def test_untrusted_pickles_need_consent(tmp_path: Path):
    path = tmp_path / "with_objects.pth"
    torch.save({"model": build_model("deimv2-atto").state_dict(), "args": Path("x")}, path)
    with pytest.raises(CheckpointError, match="trusted=True"):
        load_checkpoint(path, "deimv2-atto")
    assert load_checkpoint(path, "deimv2-atto", trusted=True) is not None


def test_deploy_mode_state_dicts_load(tmp_path: Path):
    deployed = build_model("deimv2-atto").deploy()
    model = load_checkpoint(deployed.state_dict(), "deimv2-atto")
    assert listing(model) == listing(deployed)


def test_save_checkpoint_is_official_format_and_atomic(tmp_path: Path):
    model = build_model("deimv2-atto")
    path = save_checkpoint(tmp_path / "out" / "last.pth", model, ema=model, epoch=3, ema_updates=7)
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"model", "ema", "epoch"} and ckpt["ema"]["updates"] == 7
    assert [p.name for p in path.parent.iterdir()] == ["last.pth"]  # no temporary file left
    probe = tmp_path / "probe"
    probe.touch()
    assert path.stat().st_mode & 0o777 == probe.stat().st_mode & 0o777  # the usual permissions


def test_importing_the_package_does_not_import_torch():
    code = "import sys, deim_edge; deim_edge.get_variant('pico'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pretrained_backbones_load_from_local_files(tmp_path: Path):
    b0 = build_model("deimv2-n").backbone.state_dict()  # an HGNetv2-B0 ImageNet checkpoint's layout
    torch.save(b0, tmp_path / "PPHGNetV2_B0_stage1.pth")
    atto = build_model("deimv2-atto")
    report = load_pretrained_backbone(atto, tmp_path / "PPHGNetV2_B0_stage1.pth")
    assert report.loaded and all(k.startswith("stages.2") for k in report.skipped_shape)
    torch.testing.assert_close(atto.backbone.stem.stem1.conv.weight, b0["stem.stem1.conv.weight"])

    vit = build_model("deimv2-l").backbone.dinov3.state_dict()  # Meta's DINOv3 ViT-S/16 key layout
    torch.save(vit, tmp_path / "dinov3_vits16.pth")
    model = build_model("deimv2-l")
    load_pretrained_backbone(model, tmp_path / "dinov3_vits16.pth")
    torch.testing.assert_close(model.backbone.dinov3.state_dict(), vit)
