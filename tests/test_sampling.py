"""The gather form of the decoder's bilinear sampling equals grid_sample (zero padding, align_corners=False)."""
import pytest

torch = pytest.importorskip("torch")

from deim_edge.errors import ConfigError  # noqa: E402
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


@pytest.mark.parametrize("variant,size", [("deimv2-atto", 320), ("deimv2-pico", 640)])
def test_model_outputs_match_with_gather_sampling(variant, size):
    from deim_edge import get_variant
    from deim_edge.models import build_model

    torch.manual_seed(0)
    model = build_model(get_variant(variant), input_size=size).deploy()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        grid = model(x)
        gather = model.set_sampling("gather")(x)
    for key in ("pred_logits", "pred_boxes"):
        assert torch.allclose(grid[key], gather[key], atol=1e-5)


def test_unknown_sampling_is_refused():
    from deim_edge import get_variant
    from deim_edge.models import build_model

    with pytest.raises(ConfigError, match="grid, gather"):
        build_model(get_variant("deimv2-atto"), input_size=320).set_sampling("bicubic")
