"""The NPU forms of the model's operators: the bilinear sampling as gathers equals grid_sample (zero padding,
align_corners=False), the top-k by comparisons equals torch.topk, and the whole model gives the same outputs."""
import pytest

torch = pytest.importorskip("torch")

from deim_edge.errors import ConfigError  # noqa: E402
from deim_edge.models.ranking import take_top, top_onehot, topk_values  # noqa: E402
from deim_edge.models.sampling import sample  # noqa: E402


@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (16, 32, 20, 20), (3, 4, 1, 1), (1, 2, 40, 3)])
def test_gather_equals_grid_sample_on_random_points_in_and_out_of_range(shape):
    torch.manual_seed(sum(shape))
    value = torch.randn(*shape)
    grid = torch.rand(shape[0], 30, 4, 2) * 3 - 1.5  # a third of the points outside [-1, 1]
    grid[0, 0, :] = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [1e4, -1e4], [-1.0 - 1 / shape[3], 0.0]])  # edges, far out
    expected = sample(value, grid, "grid")
    got = sample(value, grid, "gather")
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


def test_gather_has_gradients_like_grid_sample():
    torch.manual_seed(1)
    value0, grid0 = torch.randn(2, 4, 6, 6), torch.rand(2, 5, 3, 2) * 2.4 - 1.2
    grads = []
    for form in ("grid", "gather"):
        value, grid = value0.clone().requires_grad_(), grid0.clone().requires_grad_()
        sample(value, grid, form).square().sum().backward()
        grads.append((value.grad, grid.grad))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-5)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-4)


def _stable_topk(t, k, dim=-1):
    """torch.topk with ties in index order (ONNX TopK's rule)."""
    values, indices = torch.sort(t, dim=dim, descending=True, stable=True)
    return torch.return_types.topk((values.narrow(dim, 0, k), indices.narrow(dim, 0, k)))


@pytest.mark.parametrize("variant,size", [("deimv2-atto", 320), ("deimv2-pico", 640)])
def test_model_outputs_match_with_npu_ops(variant, size, monkeypatch):
    from deim_edge import get_variant
    from deim_edge.models import build_model

    torch.manual_seed(0)
    model = build_model(get_variant(variant), input_size=size).deploy()
    with torch.no_grad():  # a fresh model scores all anchors alike (zero-initialized heads): ties topk orders freely
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn_like(p) * 0.02)
    x = torch.rand(1, 3, size, size)
    # anchors outside the valid mask all score alike; torch.topk orders ties freely, ONNX's TopK (and the
    # comparisons) by the lower index: the reference takes them in that order too
    monkeypatch.setattr(torch, "topk", _stable_topk)
    with torch.no_grad():
        grid = model(x)
        npu = model.set_ops("npu")(x)
    for key in ("pred_logits", "pred_boxes"):
        assert torch.allclose(grid[key], npu[key], atol=1e-5)


def test_unknown_ops_are_refused():
    from deim_edge import get_variant
    from deim_edge.models import build_model

    with pytest.raises(ConfigError, match="default, npu"):
        build_model(get_variant("deimv2-atto"), input_size=320).set_ops("gpu")


@pytest.mark.parametrize("n,k", [(33, 4), (500, 100), (2000, 200)])
def test_top_onehot_equals_topk(n, k):
    torch.manual_seed(n)
    x = torch.randn(3, n)
    onehot = top_onehot(x, k)
    expected = torch.topk(x, k, dim=-1)
    assert torch.equal(onehot.argmax(-1), expected.indices)
    assert torch.equal(onehot.sum(-1), torch.ones(3, k))
    assert torch.equal(topk_values(x, k), expected.values)
    rows = torch.randn(1, n, 5)
    gathered = rows.expand(3, -1, -1).gather(1, expected.indices[..., None].expand(-1, -1, 5))
    assert torch.equal(take_top(onehot, rows), gathered)


def test_top_onehot_breaks_ties_by_the_lower_index():
    x = torch.tensor([[1.0, 3.0, 3.0, 0.5, 3.0]])
    assert top_onehot(x, 4).argmax(-1).tolist() == [[1, 2, 4, 0]]
    assert topk_values(x, 4).tolist() == [[3.0, 3.0, 3.0, 1.0]]
