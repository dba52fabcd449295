"""Tests of the DEIMv2 decoder, its box helpers, FDR math and denoising queries."""
import copy
import dataclasses

import pytest
import torch
from conftest import listing, read_listing
from parity_weights import fill_parity_weights

from deim_edge import VARIANTS, get_variant
from deim_edge.models import build_model
from deim_edge.models.box_ops import (box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh,
                                      generalized_box_iou, inverse_sigmoid)
from deim_edge.models.decoder import DEIMv2Decoder
from deim_edge.models.deimv2 import build_decoder, deploy
from deim_edge.models.denoising import make_denoising_group
from deim_edge.models.fdr import bbox2distance, distance2bbox, integral, weighting_function

NAMES = list(VARIANTS)
LOW_PRECISION = [torch.bfloat16, torch.float16, torch.float64]
DTYPE_IDS = ["bf16", "fp16", "fp64"]


def make_decoder(name: str, size: tuple[int, int] | None = None, **changes) -> DEIMv2Decoder:
    """The decoder of a variant (with optional DecoderSpec changes) for inputs of `size`."""
    variant = get_variant(name)
    if changes:
        variant = dataclasses.replace(variant, decoder=dataclasses.replace(variant.decoder, **changes))
    return build_decoder(variant, 80, size or (variant.input_size, variant.input_size))


def feats_for(decoder: DEIMv2Decoder, h: int, w: int, batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, decoder.hidden_dim, h // s, w // s, generator=g) for s in decoder.feat_strides]


def run_or_skip(dtype: torch.dtype, fn):
    """fn(), skipping the test where this CPU build lacks a half-precision kernel."""
    try:
        return fn()
    except (RuntimeError, NotImplementedError) as err:
        if dtype in (torch.float16, torch.bfloat16) and "not implemented for" in str(err):
            pytest.skip(f"{dtype} is not supported on this CPU: {err}")
        raise


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_matches_official_listing(name: str) -> None:
    decoder = make_decoder(name)
    for mode in ("train", "deploy"):
        if mode == "deploy":
            deploy(decoder)
        expected = read_listing(name, mode, prefix="decoder.")
        got = listing(decoder)
        assert list(got) == list(expected), f"{name} {mode}: key order or names differ"
        assert got == expected


def test_layers_and_heads_start_as_copies() -> None:
    """As in the official code: all decoder layers, all score heads and (unshared) box heads start equal."""
    torch.manual_seed(0)
    decoder = make_decoder("n")
    for group in (decoder.decoder.layers, decoder.dec_score_head, decoder.dec_bbox_head):
        first = group[0].state_dict()
        for module in group[1:]:
            assert module is not group[0]
            assert all(torch.equal(first[k], v) for k, v in module.state_dict().items())
            assert all(p is not q for p, q in zip(group[0].parameters(), module.parameters()))
    lqe = [m.reg_conf.layers[0].weight for m in decoder.decoder.lqe_layers]
    assert not torch.equal(lqe[0], lqe[1])  # the LQE heads start independent
    for head in [decoder.enc_bbox_head, decoder.pre_bbox_head, *decoder.dec_bbox_head]:
        assert not head.layers[-1].weight.any() and not head.layers[-1].bias.any()

    shared = make_decoder("atto").dec_bbox_head
    assert shared[0] is shared[1] is shared[2]


def test_eval_idx_is_normalized_and_selects_the_layer() -> None:
    assert make_decoder("n", eval_idx=-1).eval_idx == make_decoder("n", eval_idx=2).eval_idx == 2
    with pytest.raises(ValueError, match="eval_idx"):
        make_decoder("n", eval_idx=3)
    torch.manual_seed(0)
    decoder = fill_parity_weights(make_decoder("n", size=(320, 320), eval_idx=1))
    assert decoder.decoder.eval_idx == 1
    feats = feats_for(decoder, 320, 320)
    with torch.no_grad():
        layer_1 = decoder.train()(feats)["aux_outputs"][1]  # no targets: no denoising queries
        out = decoder.eval()(feats)
        deploy(decoder)
        assert len(decoder.decoder.layers) == 2
        deployed = decoder(feats)
    for key in out:
        torch.testing.assert_close(out[key], layer_1[key])
        assert (deployed[key] - out[key]).abs().max() <= 1e-5 * max(1.0, out[key].abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("name", ["deimv2-atto", "deimv2-s"])
def test_eval_outputs_and_deploy_equivalence(name: str, dtype: torch.dtype) -> None:
    """Deploy only drops unused heads and fixes the bin table W(n) (computed in float64): exact in
    float64, within float32 rounding of the outputs' scale in float32."""
    decoder = fill_parity_weights(make_decoder(name)).eval().to(dtype)
    size = get_variant(name).input_size
    feats = [f.to(dtype) for f in feats_for(decoder, size, size)]
    with torch.no_grad():
        out = decoder(feats)
        assert set(out) == {"pred_logits", "pred_boxes"}
        assert out["pred_logits"].shape == (2, decoder.num_queries, 80)
        assert out["pred_boxes"].shape == (2, decoder.num_queries, 4)
        assert torch.isfinite(out["pred_boxes"]).all()
        deployed = deploy(decoder)(feats)
    for key in out:
        scale = max(1.0, out[key].abs().max().item())
        assert (deployed[key] - out[key]).abs().max() <= (1e-5 if dtype == torch.float32 else 1e-12) * scale


def test_wrong_number_of_feature_maps_is_an_error() -> None:
    decoder = make_decoder("deimv2-s").eval()
    with pytest.raises(ValueError, match="expected 3 feature maps"):
        decoder(feats_for(decoder, 320, 320)[1:])


def test_anchors_rebuilt_for_another_size() -> None:
    decoder = fill_parity_weights(make_decoder("atto")).eval()
    assert decoder.anchors.shape == (1, 20 * 20 + 10 * 10, 4)
    feats = feats_for(decoder, 320, 480)
    with torch.no_grad():
        fallback = decoder(feats)  # stored anchors do not fit: generated on the fly
        decoder.set_input_size((320, 480))
        assert decoder.eval_spatial_size == (320, 480)
        assert decoder.anchors.shape == (1, 20 * 30 + 10 * 15, 4)
        assert decoder.valid_mask.shape == (1, 750, 1)
        stored = decoder(feats)
    for key in stored:
        assert torch.equal(fallback[key], stored[key])
    # transposed size: same number of positions, different grid -> still regenerated
    with torch.no_grad():
        out = decoder(feats_for(decoder, 480, 320))
    assert out["pred_boxes"].shape == (2, 100, 4)


def test_anchor_values() -> None:
    decoder = make_decoder("atto", size=(64, 64))
    anchors, valid = decoder.anchors, decoder.valid_mask
    assert anchors.shape == (1, 4 * 4 + 2 * 2, 4)
    first = torch.sigmoid(anchors[0, 0])
    assert torch.allclose(first, torch.tensor([0.125, 0.125, 0.05, 0.05]))
    assert torch.allclose(torch.sigmoid(anchors[0, 16]), torch.tensor([0.25, 0.25, 0.1, 0.1]))
    assert valid.all()
    large = make_decoder("atto", size=(1280, 1280))  # stride-16 border centres 0.5 / 80 < eps
    border = ~large.valid_mask[0, :, 0]
    assert border[:80].all() and not border[80 + 1:160 - 1].any()
    assert torch.isinf(large.anchors[0][border]).all() and torch.isfinite(large.anchors[0][~border]).all()


def matched_errors(low: dict, ref: dict) -> tuple[float, float]:
    """Largest logit and box errors of `low` vs `ref` after pairing each ref query with its closest low one.

    Rounding may reorder queries whose encoder scores nearly tie; the pairing must stay one-to-one.
    """
    logit_err, box_err = 0.0, 0.0
    for b in range(ref["pred_logits"].shape[0]):
        dl = (low["pred_logits"][b].double()[:, None] - ref["pred_logits"][b].double()[None]).abs().amax(-1)
        db = (low["pred_boxes"][b].double()[:, None] - ref["pred_boxes"][b].double()[None]).abs().amax(-1)
        pick = (dl + 10 * db).argmin(0)  # [Q] low query for each ref query
        assert len(set(pick.tolist())) == len(pick), "not the same queries"
        cols = torch.arange(len(pick))
        logit_err = max(logit_err, dl[pick, cols].max().item())
        box_err = max(box_err, db[pick, cols].max().item())
    return logit_err, box_err


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=DTYPE_IDS)
def test_other_dtypes_match_float32(dtype: torch.dtype) -> None:
    """Eval in bf16 / fp16 / fp64, on the stored anchors and on generated ones, against fp32 on the same
    (rounded) weights and inputs. Both sizes give exactly num_queries (100) positions, so every position
    is selected whatever the rounding: only the queries' order may change."""
    stored, other = (128, 160), (160, 128)
    decoder = fill_parity_weights(make_decoder("atto", size=stored)).eval().to(dtype)
    reference = copy.deepcopy(decoder).float()
    tol = {torch.bfloat16: (0.6, 0.03), torch.float16: (0.1, 0.005), torch.float64: (1e-4, 1e-5)}[dtype]
    for size in (stored, other):
        feats = [f.to(dtype) for f in feats_for(decoder, *size)]
        with torch.no_grad():
            out = run_or_skip(dtype, lambda: decoder(feats))
            expected = reference([f.float() for f in feats])
        assert out["pred_logits"].dtype == out["pred_boxes"].dtype == dtype
        logit_err, box_err = matched_errors(out, expected)
        assert logit_err <= tol[0] and box_err <= tol[1], (size, logit_err, box_err)
    decoder.set_input_size(other)  # rebuilt anchors keep the model's dtype
    assert decoder.anchors.dtype == dtype
    with torch.no_grad():
        assert torch.equal(decoder(feats)["pred_boxes"], out["pred_boxes"])


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=DTYPE_IDS)
def test_whole_model_runs_in_other_dtypes(dtype: torch.dtype) -> None:
    model = build_model("deimv2-atto").eval().to(dtype)
    for size in (320, 416):
        with torch.no_grad():
            out = run_or_skip(dtype, lambda: model(torch.rand(1, 3, size, size, dtype=dtype)))
        assert out["pred_boxes"].dtype == dtype and torch.isfinite(out["pred_boxes"]).all()


def make_targets(counts: tuple[int, ...], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"labels": torch.randint(0, 80, (n,), generator=g),
             "boxes": torch.cat([0.2 + 0.6 * torch.rand(n, 2, generator=g), 0.05 + 0.3 * torch.rand(n, 2, generator=g)],
                                dim=1)} for n in counts]


def test_training_outputs_with_denoising() -> None:
    torch.manual_seed(0)
    decoder = fill_parity_weights(make_decoder("n")).train()
    feats = feats_for(decoder, 320, 320)
    out = decoder(feats, make_targets((3, 5)))
    bs, q, num_layers = 2, 300, 3
    groups = 100 // 5
    num_dn = 2 * 5 * groups
    assert out["pred_logits"].shape == (bs, q, 80)
    assert out["pred_boxes"].shape == (bs, q, 4)
    assert out["pred_corners"].shape == (bs, q, 4 * 33)
    assert out["ref_points"].shape == (bs, q, 4)
    assert out["up"] is decoder.up and out["reg_scale"] is decoder.reg_scale
    assert len(out["aux_outputs"]) == num_layers - 1
    assert set(out["aux_outputs"][0]) == {"pred_logits", "pred_boxes", "pred_corners", "ref_points",
                                          "teacher_corners", "teacher_logits"}
    assert out["enc_aux_outputs"][0]["pred_logits"].shape == (bs, q, 80)
    assert out["pre_outputs"]["pred_boxes"].shape == (bs, q, 4)
    assert out["enc_meta"] == {"class_agnostic": False}
    assert len(out["dn_outputs"]) == num_layers
    assert out["dn_outputs"][0]["pred_logits"].shape == (bs, num_dn, 80)
    assert out["dn_pre_outputs"]["pred_boxes"].shape == (bs, num_dn, 4)
    meta = out["dn_meta"]
    assert meta["dn_num_split"] == [num_dn, q] and meta["dn_num_group"] == groups
    assert [len(i) for i in meta["dn_positive_idx"]] == [3 * groups, 5 * groups]
    loss = out["pred_boxes"].sum() + sum(a["pred_logits"].sum() for a in out["dn_outputs"])
    loss.backward()
    assert decoder.dec_bbox_head[0].layers[0].weight.grad is not None

    plain = decoder(feats)  # no targets: no denoising
    assert "dn_outputs" not in plain and plain["pred_logits"].shape == (bs, q, 80)


def test_training_in_bfloat16() -> None:
    torch.manual_seed(0)
    decoder = make_decoder("atto").train().to(torch.bfloat16)
    feats = [f.to(torch.bfloat16) for f in feats_for(decoder, 256, 256)]
    out = run_or_skip(torch.bfloat16, lambda: decoder(feats, make_targets((2, 4))))
    for pred in (out, out["dn_outputs"][-1], out["enc_aux_outputs"][0]):
        assert pred["pred_boxes"].dtype == torch.bfloat16 and torch.isfinite(pred["pred_boxes"]).all()
    (out["pred_boxes"].float().sum() + out["dn_outputs"][-1]["pred_logits"].float().sum()).backward()
    assert decoder.dec_bbox_head[0].layers[0].weight.grad.dtype == torch.bfloat16


def test_denoising_group_mask() -> None:
    embed = torch.nn.Embedding(81, 16, padding_idx=80)
    content, boxes_unact, mask, meta = make_denoising_group(make_targets((2, 1)), 80, 10, embed, num_denoising=6)
    num_dn, groups = meta["dn_num_split"][0], meta["dn_num_group"]
    assert (num_dn, groups) == (12, 3)
    assert content.shape == (2, 12, 16) and boxes_unact.shape == (2, 12, 4)
    assert mask.shape == (22, 22)
    assert mask[num_dn:, :num_dn].all() and not mask[num_dn:, num_dn:].any()
    group = torch.arange(num_dn) // 4
    assert torch.equal(mask[:num_dn, :num_dn], group[:, None] != group[None, :])
    assert make_denoising_group([{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}],
                                80, 10, embed) is None


def test_box_ops_known_values() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    assert torch.equal(box_area(a), torch.tensor([4.0, 1.0]))
    iou, union = box_iou(a, b)
    assert torch.allclose(iou[0], torch.tensor([1 / 7, 0.0, 1.0]))
    assert torch.allclose(union[0], torch.tensor([7.0, 5.0, 4.0]))
    giou = generalized_box_iou(a, b)
    assert torch.allclose(giou[0], torch.tensor([1 / 7 - 2 / 9, -(9 - 5) / 9, 1.0]))
    assert torch.allclose(giou[1, 1], torch.tensor(-7 / 9))  # disjoint unit boxes in a 3x3 hull
    cxcywh = torch.tensor([[0.5, 0.5, 0.2, 0.4]])
    assert torch.allclose(box_cxcywh_to_xyxy(cxcywh), torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    assert torch.allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(cxcywh)), cxcywh)
    assert torch.allclose(torch.sigmoid(inverse_sigmoid(torch.tensor([0.25, 0.5]))), torch.tensor([0.25, 0.5]))


def test_weighting_function_and_integral() -> None:
    up, reg_scale = torch.tensor([0.5]), torch.tensor([4])
    w = weighting_function(32, up, reg_scale)
    assert w.shape == (33,) and w.dtype == torch.float32 and w[16] == 0
    assert torch.allclose(w[[0, -1]], torch.tensor([-4.0, 4.0]))
    assert torch.allclose(w, -w.flip(0)) and (w.diff() > 0).all()
    hi_precision = weighting_function(32, up.double(), reg_scale)
    assert hi_precision.dtype == torch.float64 and (w - hi_precision.float()).abs().max() < 1e-6
    assert weighting_function(32, up.bfloat16(), reg_scale).dtype == torch.float32  # never below float32
    corners = torch.full((1, 4 * 33), -1e4)
    for edge, bin_ in enumerate([0, 10, 16, 32]):
        corners[0, edge * 33 + bin_] = 1e4
    assert torch.allclose(integral(corners, w), w[[0, 10, 16, 32]].unsqueeze(0))
    assert integral(corners.bfloat16(), w).dtype == torch.bfloat16


def test_fdr_round_trip() -> None:
    g = torch.Generator().manual_seed(0)
    up, reg_scale, reg_max = torch.tensor([0.5]), torch.tensor([4]), 32
    w = weighting_function(reg_max, up, reg_scale)
    points = torch.cat([0.3 + 0.4 * torch.rand(50, 2, generator=g), 0.1 + 0.2 * torch.rand(50, 2, generator=g)], 1)
    offsets = torch.rand(50, 4, generator=g) * 5.8 - 1.9  # inside the bins' range [-4, 4], width > 0
    boxes = distance2bbox(points, offsets, reg_scale)  # cxcywh
    index, weight_right, weight_left = bbox2distance(points, box_cxcywh_to_xyxy(boxes), reg_max, reg_scale, up)
    left = index.long()
    recovered = (w[left] * weight_left + w[left + 1] * weight_right).reshape(50, 4)
    assert torch.allclose(recovered, offsets, atol=1e-4)
    assert torch.allclose(distance2bbox(points, recovered, reg_scale), boxes, atol=1e-5)
    assert distance2bbox(points.bfloat16(), offsets.bfloat16(), reg_scale).dtype == torch.bfloat16
    # far outside the range: clamped to the end bins
    far = box_cxcywh_to_xyxy(points.clone()) + torch.tensor([-10.0, -10.0, 10.0, 10.0])
    index, weight_right, _ = bbox2distance(points, far, reg_max, reg_scale, up)
    assert torch.allclose(index, torch.full_like(index, reg_max - 0.1)) and (weight_right == 1).all()


def test_deformable_attention_samples_where_the_reference_formula_says() -> None:
    """The broadcast-friendly grid arithmetic equals 2 * (center + offset * size * scale / points) - 1."""
    from deim_edge.models.decoder_layers import MSDeformableAttention

    torch.manual_seed(0)
    attn = MSDeformableAttention(32, 4, [3, 2]).eval()
    torch.nn.init.normal_(attn.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(attn.attention_weights.weight, std=0.5)
    query, boxes = torch.randn(2, 5, 32), torch.rand(2, 5, 1, 4)
    value = [torch.randn(8, 8, 6, 6), torch.randn(8, 8, 3, 3)]
    offsets = attn.sampling_offsets(query).reshape(2, 5, 4, 5, 2)
    weights = attn.attention_weights(query).reshape(2, 5, 4, 5).softmax(-1)
    scale = torch.tensor([1 / 3] * 3 + [1 / 2] * 2).unsqueeze(-1)
    locations = boxes[:, :, None, :, :2] + offsets * scale * boxes[:, :, None, :, 2:] * attn.offset_scale
    grids = (2 * locations - 1).permute(0, 2, 1, 3, 4).flatten(0, 1)
    samples = [torch.nn.functional.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
               for v, g in zip(value, grids.split([3, 2], dim=-2))]
    expected = (torch.cat(samples, -1) * weights.permute(0, 2, 1, 3).reshape(8, 1, 5, 5)).sum(-1)
    expected = expected.reshape(2, 32, 5).permute(0, 2, 1)
    with torch.no_grad():
        torch.testing.assert_close(attn(query, boxes, value), expected, rtol=1e-5, atol=1e-6)
