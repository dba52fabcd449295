"""Tests of the DEIMv2 decoder, its box helpers, FDR math and denoising queries."""
from pathlib import Path

import pytest
import torch

from deim_edge.models.box_ops import (box_area, box_cxcywh_to_xyxy, box_iou, box_xyxy_to_cxcywh,
                                      generalized_box_iou, inverse_sigmoid)
from deim_edge.models.decoder import DEIMv2Decoder
from deim_edge.models.denoising import make_denoising_group
from deim_edge.models.fdr import bbox2distance, distance2bbox, integral, weighting_function

DATA = Path(__file__).parent / "data" / "state_dicts"

# hidden, queries, strides, points, layers, ffn, gateway/no shared head, eval size
VARIANTS = {
    "atto": (64, 100, (16, 32), (4, 2), 3, 160, False, 320),
    "femto": (96, 150, (16, 32), (4, 2), 3, 256, False, 416),
    "pico": (112, 200, (16, 32), (4, 2), 3, 320, False, 640),
    "n": (128, 300, (16, 32), (6, 6), 3, 512, True, 640),
    "s": (192, 300, (8, 16, 32), (3, 6, 3), 4, 512, True, 640),
    "m": (256, 300, (8, 16, 32), (3, 6, 3), 4, 512, True, 640),
    "l": (224, 300, (8, 16, 32), (3, 6, 3), 4, 1792, True, 640),
    "x": (256, 300, (8, 16, 32), (3, 6, 3), 6, 2048, True, 640),
}


def make_decoder(name: str, size: tuple[int, int] | None = None) -> DEIMv2Decoder:
    hidden, queries, strides, points, layers, ffn, gateway, eval_size = VARIANTS[name]
    return DEIMv2Decoder(num_classes=80, hidden_dim=hidden, num_queries=queries, feat_channels=[hidden] * len(strides),
                         feat_strides=list(strides), num_levels=len(strides), num_points=list(points), nhead=8,
                         num_layers=layers, dim_feedforward=ffn, eval_spatial_size=size or (eval_size, eval_size),
                         use_gateway=gateway, share_bbox_head=not gateway)


def perturb(module: torch.nn.Module, seed: int = 0) -> None:
    """Move every float parameter off its (often zero) init so all paths matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.is_floating_point() and name != "up":
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def feats_for(decoder: DEIMv2Decoder, h: int, w: int, batch: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, decoder.hidden_dim, h // s, w // s, generator=g) for s in decoder.feat_strides]


def listing(module: torch.nn.Module) -> list[tuple[str, str, str]]:
    return [("decoder." + k, str(tuple(v.shape)), str(v.dtype).removeprefix("torch."))
            for k, v in module.state_dict().items()]


def tsv_rows(name: str, kind: str) -> list[tuple[str, str, str]]:
    rows = [tuple(line.split("\t")) for line in (DATA / f"{name}_{kind}.tsv").read_text().splitlines()]
    return [r for r in rows if r[0].startswith("decoder.")]


def deploy(decoder: DEIMv2Decoder) -> None:
    decoder.eval()
    for m in list(decoder.modules()):
        if hasattr(m, "convert_to_deploy"):
            m.convert_to_deploy()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_state_dict_matches_official_listing(name: str) -> None:
    decoder = make_decoder(name)
    assert listing(decoder) == tsv_rows(name, "train")
    deploy(decoder)
    assert listing(decoder) == tsv_rows(name, "deploy")


def test_shared_bbox_head_is_one_module() -> None:
    shared = make_decoder("atto").dec_bbox_head
    assert shared[0] is shared[1] is shared[2]
    separate = make_decoder("n").dec_bbox_head
    assert separate[0] is not separate[1]


@pytest.mark.parametrize("name", ["atto", "s"])
def test_eval_outputs_and_deploy_equivalence(name: str) -> None:
    torch.manual_seed(0)
    decoder = make_decoder(name)
    perturb(decoder)
    decoder.eval()
    size = VARIANTS[name][-1]
    feats = feats_for(decoder, size, size)
    with torch.no_grad():
        out = decoder(feats)
        assert set(out) == {"pred_logits", "pred_boxes"}
        assert out["pred_logits"].shape == (2, decoder.num_queries, 80)
        assert out["pred_boxes"].shape == (2, decoder.num_queries, 4)
        assert torch.isfinite(out["pred_boxes"]).all()
        deploy(decoder)
        deployed = decoder(feats)
    for key in out:
        assert (out[key] - deployed[key]).abs().max() <= 1e-5


def test_anchors_rebuilt_for_another_size() -> None:
    decoder = make_decoder("atto")
    perturb(decoder)
    decoder.eval()
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


def make_targets(counts: tuple[int, ...], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"labels": torch.randint(0, 80, (n,), generator=g),
             "boxes": torch.cat([0.2 + 0.6 * torch.rand(n, 2, generator=g), 0.05 + 0.3 * torch.rand(n, 2, generator=g)],
                                dim=1)} for n in counts]


def test_training_outputs_with_denoising() -> None:
    torch.manual_seed(0)
    decoder = make_decoder("n")
    perturb(decoder)
    decoder.train()
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
    assert w.shape == (33,) and w[16] == 0
    assert torch.allclose(w[[0, -1]], torch.tensor([-4.0, 4.0]))
    assert torch.allclose(w, -w.flip(0)) and (w.diff() > 0).all()
    hi_precision = weighting_function(32, up.double(), reg_scale.double()).float()
    assert (w - hi_precision).abs().max() < 1e-6
    corners = torch.full((1, 4 * 33), -1e4)
    for edge, bin_ in enumerate([0, 10, 16, 32]):
        corners[0, edge * 33 + bin_] = 1e4
    assert torch.allclose(integral(corners, w), w[[0, 10, 16, 32]].unsqueeze(0))


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
    # far outside the range: clamped to the end bins
    far = box_cxcywh_to_xyxy(points.clone()) + torch.tensor([-10.0, -10.0, 10.0, 10.0])
    index, weight_right, _ = bbox2distance(points, far, reg_max, reg_scale, up)
    assert torch.allclose(index, torch.full_like(index, reg_max - 0.1)) and (weight_right == 1).all()
