"""DEIM matcher and losses: hand-computed cases, and parity with the public DEIMv2 criterion
(tests/data/losses/*.npz, written by tools/make_loss_vectors.py)."""
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deim_edge.models.deimv2 import build_model
from deim_edge.training import DEIMLoss, HungarianMatcher
from deim_edge.training.losses import box_losses, ddf_loss, ddf_terms, fgl_loss, mal_loss
from deim_edge.training.matcher import dense_assignment, union_indices
from deim_edge.variants import get_variant

sys.path.insert(0, str(Path(__file__).parent))
from parity_weights import fill_parity_weights, parity_input  # noqa: E402

DATA = Path(__file__).parent / "data" / "losses"


def _targets(labels, boxes):
    return [{"labels": torch.tensor(labels, dtype=torch.int64), "boxes": torch.tensor(boxes)}]


@pytest.fixture(scope="module", params=["deimv2-atto", "deimv2-s"])
def parity_case(request):
    """(variant, stored arrays, our training outputs, targets) for one stored variant."""
    variant = request.param
    data = np.load(DATA / f"{variant}.npz")
    size, seed = int(data["size"]), int(data["seed"])
    labels = torch.from_numpy(data["labels"]).split(data["sizes"].tolist())
    boxes = torch.from_numpy(data["boxes"]).split(data["sizes"].tolist())
    targets = [{"labels": lab, "boxes": box} for lab, box in zip(labels, boxes)]
    model = fill_parity_weights(build_model(variant, input_size=size), seed).train()
    torch.manual_seed(seed)
    outputs = model(parity_input((size, size), seed), targets)
    return variant, data, outputs, targets


def test_parity_with_reference_criterion(parity_case):
    variant, data, outputs, targets = parity_case
    criterion = DEIMLoss(80, get_variant(variant).recipe)
    for epoch in data["epochs"].tolist():
        expected = {k.split("/", 1)[1]: float(data[k]) for k in data.files if k.startswith(f"e{epoch}/")}
        with torch.no_grad():
            losses = criterion(outputs, targets, epoch=epoch)
        assert set(losses) == set(expected)
        for key, value in expected.items():
            # 1e-5 absolute, widened by float32 resolution for the large random-weight MAL values
            assert abs(losses[key].item() - value) <= 1e-5 + 1e-6 * abs(value), (variant, epoch, key)


def test_fgl_ddf_only_for_full_variants(parity_case):
    variant, _, outputs, targets = parity_case
    recipe = get_variant(variant).recipe
    with torch.no_grad():
        keys = set(DEIMLoss(80, recipe)(outputs, targets))
    assert any("fgl" in k or "ddf" in k for k in keys) == recipe.use_fgl_ddf
    assert variant != "deimv2-atto" or not recipe.use_fgl_ddf
    assert {"loss_mal", "loss_bbox", "loss_giou", "loss_mal_pre", "loss_mal_enc_0", "loss_mal_dn_pre"} <= keys


def test_matcher_two_by_two():
    matcher = HungarianMatcher(change_epoch=5)
    # Before the switch, with neutral logits, the boxes decide: targets listed in swapped order.
    boxes = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]]])  # [1, 2, 4]
    targets = _targets([0, 1], [[0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]])
    src, tgt = matcher({"pred_logits": torch.zeros(1, 2, 2), "pred_boxes": boxes}, targets, epoch=0)[0]
    assert dict(zip(src.tolist(), tgt.tolist())) == {0: 1, 1: 0}
    # After it, both queries sit equally on both targets: the class probability decides.
    boxes = torch.tensor([[[0.51, 0.5, 0.2, 0.2], [0.51, 0.5, 0.2, 0.2]]])
    logits = torch.tensor([[[-4.0, 4.0], [4.0, -4.0]]])  # query 0 says class 1, query 1 class 0
    targets = _targets([0, 1], [[0.5, 0.5, 0.2, 0.2], [0.52, 0.5, 0.2, 0.2]])
    src, tgt = matcher({"pred_logits": logits, "pred_boxes": boxes}, targets, epoch=5)[0]
    assert dict(zip(src.tolist(), tgt.tolist())) == {0: 1, 1: 0}
    iou = 0.19 / 0.21  # 0.01 offset on a 0.2-wide box: overlap 0.19 * 0.2, union 0.21 * 0.2
    cost = matcher.cost_matrix(logits[0], boxes[0], targets[0]["labels"], targets[0]["boxes"], epoch=5)
    p = torch.sigmoid(torch.tensor([[-4.0, 4.0], [4.0, -4.0]]))
    assert torch.allclose(cost, -p * iou ** 4, atol=1e-6)


def test_union_indices_keeps_most_frequent_target():
    t = torch.tensor
    main = [(t([0, 1]), t([0, 1]))]
    others = [[(t([0, 2]), t([0, 1]))], [(t([0, 1]), t([1, 1]))]]
    src, tgt = union_indices(main, others)[0]
    assert dict(zip(src.tolist(), tgt.tolist())) == {0: 0, 1: 1, 2: 1}


def test_dense_assignment_takes_the_best_aligned_anchors_inside_each_box():
    # A 4 x 4 grid of anchors (centres at 0.125, 0.375, ...); anchor index = row * 4 + column.
    c = (torch.arange(4) + 0.5) / 4
    centres = torch.stack(torch.meshgrid(c, c, indexing="xy"), -1).reshape(16, 2)
    valid = torch.ones(16, dtype=torch.bool)
    boxes = torch.cat([centres, torch.full((16, 2), 0.25)], 1).unsqueeze(0)  # each anchor predicts its cell
    logits = torch.full((1, 16, 2), -4.0)
    logits[0, [0, 5], 0] = 4.0  # anchors 0 and 5 are confident of class 0
    targets = _targets([0, 1], [[0.25, 0.25, 0.5, 0.5],  # covers anchors 0, 1, 4, 5
                                [0.9, 0.9, 0.02, 0.02]])  # smaller than a cell, no centre inside
    src, tgt = dense_assignment(logits, boxes, centres, valid, targets, k=2)[0]
    assert dict(zip(src.tolist(), tgt.tolist())) == {0: 0, 5: 0, 15: 1}  # best two inside; the nearest anchor
    assert len(dense_assignment(logits, boxes, centres, valid, targets, k=10)[0][0]) == 5  # all four inside
    # An anchor inside two boxes keeps the one its predicted box overlaps most.
    overlapping = _targets([0, 0], [[0.125, 0.125, 0.25, 0.25], [0.2, 0.2, 0.4, 0.4]])
    src, tgt = dense_assignment(logits, boxes, centres, valid, overlapping, k=1)[0]
    assert dict(zip(src.tolist(), tgt.tolist())) == {0: 0}  # anchor 0's box is the first target exactly
    assert [len(i) for i in dense_assignment(logits, boxes, centres, valid, _targets([], []), k=2)[0]] == [0, 0]


def test_dense_terms_only_when_asked():
    variant = get_variant("deimv2-atto")
    model = build_model(variant, num_classes=1, input_size=320).train()
    targets = _targets([0, 0], [[0.3, 0.3, 0.1, 0.1], [0.7, 0.6, 0.2, 0.3]])
    torch.manual_seed(0)
    images = torch.rand(1, 3, 320, 320)
    assert "enc_dense" not in model(images, targets)
    model.decoder.dense_supervision = True
    outputs = model(images, targets)
    assert outputs["enc_dense"]["pred_logits"].shape == (1, 500, 1)  # 20 x 20 + 10 x 10 anchors
    assert not any(k.endswith("_dense") for k in DEIMLoss(1, variant.recipe)(outputs, targets))
    recipe = dataclasses.replace(variant.recipe, dense_positives=10, dense_epochs=3)
    terms = DEIMLoss(1, recipe)(outputs, targets)
    assert {"loss_mal_dense", "loss_bbox_dense", "loss_giou_dense"} <= set(terms)
    terms["loss_giou_dense"].backward()
    assert model.decoder.enc_bbox_head.layers[-1].weight.grad.abs().sum() > 0  # (its last layer starts at zero)


def test_mal_tiny_case():
    logits = torch.tensor([[[0.5, -1.0], [2.0, 0.0]]])  # [1, 2 queries, 2 classes]
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])
    targets = _targets([1], [[0.6, 0.5, 0.2, 0.2]])  # IoU with query 0: 1/3
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    gamma = 1.5
    p = torch.sigmoid(logits[0]).tolist()
    bce = lambda x, y: -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))
    expected = (p[0][0] ** gamma * bce(0.5, 0.0) + bce(-1.0, (1 / 3) ** gamma)
                + p[1][0] ** gamma * bce(2.0, 0.0) + p[1][1] ** gamma * bce(0.0, 0.0))
    got = mal_loss(logits, boxes, targets, indices, num_boxes=1.0, num_classes=2, gamma=gamma)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_box_losses_known_boxes():
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]]])
    targets = _targets([0], [[0.6, 0.5, 0.2, 0.2]])
    l1, giou = box_losses(boxes, targets, [(torch.tensor([0]), torch.tensor([0]))], num_boxes=2.0)
    assert l1.item() == pytest.approx(0.1 / 2, abs=1e-6)  # only cx is off, by 0.1
    assert giou.item() == pytest.approx((1 - 1 / 3) / 2, abs=1e-6)  # IoU 1/3, hull == union


def test_fgl_positive_and_ddf_zero_against_itself():
    torch.manual_seed(0)
    corners = torch.randn(1, 3, 4 * 33)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.1, 0.1]]])
    targets = _targets([0], [[0.55, 0.5, 0.2, 0.2]])
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    bins = (torch.tensor([3.5, 10.2, 16.0, 31.9]), torch.full((4,), 0.3), torch.full((4,), 0.7))
    assert fgl_loss(corners, boxes, targets, indices, 1.0, bins).item() > 0
    logits = torch.randn(1, 3, 80)
    per_edge, mask = ddf_terms(corners, boxes, corners, logits, targets, indices)
    assert mask.tolist() == [True] * 4 + [False] * 8
    assert per_edge.abs().max().item() < 1e-5  # float32 rounding of KL(p || p)
    assert ddf_terms(corners, boxes, torch.randn_like(corners), logits, targets, indices)[0].min().item() >= 0
    assert ddf_loss(per_edge, mask, torch.tensor(2.0), torch.tensor(3.0)).abs().item() < 1e-5
