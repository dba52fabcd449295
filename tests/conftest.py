"""Shared test setup: one torch thread (the CI machine is a shared 2-core box where two threads
mostly wait on each other), and the official state-dict listings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deim_edge.compare import match_queries, query_rows

DATA = Path(__file__).parent / "data"
BUNDLED = Path(__file__).parents[1] / "deim_edge" / "assets" / "deimv2-atto-synthetic.pth"  # Atto @320, 4 shapes


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def trained_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled synthetic-shapes Atto (320, circle/square/triangle/ring) as ONNX with a dynamic batch, exported
    once per session: the model the analytics tests track, count and slice with."""
    pytest.importorskip("torch", reason="exporting the bundled checkpoint needs torch")
    pytest.importorskip("onnxruntime", reason="running the export needs ONNX Runtime")
    from deim_edge.export import export

    return export(BUNDLED, "onnx", out=tmp_path_factory.mktemp("trained") / "atto.onnx", dynamic_batch=True)


Listing = dict[str, tuple[tuple[int, ...], str]]


def read_listing(variant: str, mode: str, prefix: str = "") -> Listing:
    """{key: (shape, dtype)} of an official state dict in file order, e.g. read_listing('deimv2-pico',
    'deploy', prefix='decoder.'); only keys under `prefix`, with the prefix removed."""
    rows = {}
    short = variant.removeprefix("deimv2-")
    for line in (DATA / "state_dicts" / f"{short}_{mode}.tsv").read_text().splitlines():
        name, shape, dtype = line.split("\t")
        if name.startswith(prefix):
            rows[name[len(prefix):]] = (tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype)
    return rows


def listing(module) -> Listing:
    """The same {key: (shape, dtype)} view of a module's state dict."""
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()}


def assert_same_detections(a, b, box_atol: float, score_atol: float = 1e-5) -> None:
    """Two Detections hold the same detections. Both come sorted by score, so rows whose scores tie
    within score_atol may trade places (runtimes round a sigmoid differently); nothing else may differ."""
    assert len(a) == len(b), f"{len(a)} vs {len(b)} detections"
    np.testing.assert_allclose(a.scores, b.scores, atol=score_atol, rtol=0)
    unused = np.ones(len(b), bool)
    for i in range(len(a)):
        close = (unused & (b.labels == a.labels[i]) & (np.abs(b.scores - a.scores[i]) <= score_atol)
                 & (np.abs(b.xyxy - a.xyxy[i]).max(axis=1) <= box_atol))
        assert close.any(), f"detection {i} ({a.labels[i]}, {a.scores[i]:.6f}, {a.xyxy[i]}) has no match"
        unused[np.argmax(close)] = False


def assert_same_queries(out: dict, logits: np.ndarray, boxes: np.ndarray, atol: float = 1e-4,
                        rtol: float = 0.0) -> None:
    """Outputs equal within atol + rtol*|ref|, query by query. Queries come sorted by encoder score,
    so two whose scores tie to float precision may trade places; that is the only freedom allowed."""
    ours = query_rows([np.asarray(out["pred_logits"]), np.asarray(out["pred_boxes"])])  # [B, Q, C+4]; torch or numpy
    ref = query_rows([logits, boxes])
    q = ours.shape[1]
    for b in range(ours.shape[0]):
        match, cost = match_queries(ours[b], ref[b], rtol)
        assert len(set(match.tolist())) == q, "queries differ, not just their order"
        assert cost.max() <= atol
        assert (match != np.arange(q)).sum() <= max(2, q // 20), "too many queries changed places"
