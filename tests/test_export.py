"""ONNX export: CLI round trip, embedded metadata, RAW and TOPK outputs against PyTorch, dynamic
batch, clear errors for bad input, and no file left behind by a failing export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import deim_edge.export.onnx as onnx_target  # noqa: E402
from conftest import assert_same_queries  # noqa: E402
from deim_edge.compare import query_agreement, query_rows  # noqa: E402
from deim_edge.errors import ExportError  # noqa: E402
from deim_edge.export import ExportWarning, export, get_target  # noqa: E402
from deim_edge.export.__main__ import main  # noqa: E402
from deim_edge.export.weights import random_model  # noqa: E402
from deim_edge.metadata import METADATA_KEY, RAW, TOPK, ArtifactMetadata  # noqa: E402

VARIANT = "deimv2-atto"
SIZE = (256, 320)  # non-square: catches height/width swaps


def read_metadata(path: Path) -> ArtifactMetadata:
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return ArtifactMetadata.from_json(props[METADATA_KEY])


def run_onnx(path: Path, images: np.ndarray) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, {"images": images})


def images_for(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (batch, 3, *SIZE)).astype(np.float32)


def torch_outputs(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """logits and cxcywh boxes of the model the random-weights export builds."""
    model = random_model(VARIANT, input_size=SIZE).deploy()
    with torch.no_grad():
        out = model(torch.from_numpy(images))
    return out["pred_logits"].numpy(), out["pred_boxes"].numpy()


def decode(logits: np.ndarray, boxes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The contract's decode, in numpy: top-k of sigmoid scores over queries x classes, xyxy boxes."""
    b, _, c = logits.shape
    scores = (1 / (1 + np.exp(-logits))).reshape(b, -1)
    index = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    query = index // c
    cx, cy, w, h = np.moveaxis(np.take_along_axis(boxes, query[..., None], axis=1), -1, 0)
    return (np.take_along_axis(scores, index, axis=1), index % c,
            np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1))


def assert_same_detections(got: list[np.ndarray], logits: np.ndarray, boxes: np.ndarray, k: int) -> None:
    """Same scores, labels and boxes; where the order differs the scores tie within 1e-5."""
    scores, labels, xyxy = decode(logits, boxes, k)
    wide_scores, wide_labels, wide_xyxy = decode(logits, boxes, k + 20)  # a tie may cross the k boundary
    np.testing.assert_allclose(got[0], scores, atol=1e-5)
    assert got[1].dtype == np.int64
    for b in range(len(scores)):
        differ = np.nonzero((got[1][b] != labels[b]) | (np.abs(got[2][b] - xyxy[b]).max(-1) > 1e-5))[0]
        assert len(differ) <= 0.02 * k
        for i in differ:
            tied = np.nonzero(np.abs(wide_scores[b] - scores[b][i]) <= 1e-5)[0]
            assert any(wide_labels[b][j] == got[1][b][i] and np.abs(wide_xyxy[b][j] - got[2][b][i]).max() <= 1e-5
                       for j in tied)


def test_cli_round_trip_topk(tmp_path: Path, capfd) -> None:
    names = [f"thing{i}" for i in range(80)]
    (tmp_path / "names.json").write_text(json.dumps(names))
    out = tmp_path / "atto.onnx"
    assert main(["--variant", VARIANT, "--imgsz", *map(str, SIZE), "--out", str(out),
                 "--class-names", str(tmp_path / "names.json")]) == 0
    err = capfd.readouterr().err
    assert "RANDOM weights" in err and "tracing" in err and "simplifying" in err and "checking" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atto.onnx", "names.json"]  # no temporary files left

    meta = read_metadata(out)
    assert (meta.variant, meta.input_size, meta.output, meta.batch, meta.max_det, meta.precision) == (
        VARIANT, SIZE, TOPK, 1, 300, "fp32")
    assert meta.class_names == tuple(names) and meta.mean is None and meta.std is None

    proto = onnx.load(str(out))
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["scores", "labels", "boxes"]
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, *SIZE]
    ops = [n.op_type for n in proto.graph.node]
    assert "Shape" not in ops and "Cast" not in ops  # static shapes leave no shape arithmetic

    images = images_for(1)
    got = run_onnx(out, images)
    assert [g.shape for g in got] == [(1, 300), (1, 300), (1, 300, 4)]
    assert_same_detections(got, *torch_outputs(images), k=300)


def test_raw_dynamic_batch_agrees_with_torch_and_topk(tmp_path: Path) -> None:
    model = random_model(VARIANT, input_size=SIZE)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    raw = export(model, out=tmp_path / "raw.onnx", decode="host", dynamic_batch=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training is False
    meta = read_metadata(raw)
    assert (meta.output, meta.batch, meta.input_size) == (RAW, None, SIZE)
    assert [o.name for o in onnx.load(str(raw)).graph.output] == ["logits", "boxes"]
    for batch in (1, 3):
        images = images_for(batch, seed=batch)
        logits, boxes = torch_outputs(images)
        got_logits, got_boxes = run_onnx(raw, images)
        # queries matched, not compared by position: near-tied queries may trade places between runtimes
        assert_same_queries({"pred_logits": got_logits, "pred_boxes": got_boxes}, logits, boxes)
        # the host decode of the RAW file gives the TOPK file's detections
        assert_same_detections(list(decode(got_logits, got_boxes, 300)), logits, boxes, k=300)


@pytest.mark.parametrize("argv, message", [
    (["--target", "tflite-int4"], "unknown export target 'tflite-int4'; choose one of: onnx, openvino"),
    (["--imgsz", "300"], "not a multiple of 32"),
    (["--imgsz", "320", "--max-det", "0"], "max_det must be at least 1"),
    (["--checkpoint", "{tmp}/missing.pth"], "checkpoint not found"),
    (["--checkpoint", "{tmp}/corrupt.pth"], "not a PyTorch checkpoint"),
    (["--class-names", "{tmp}/names.txt"], "3 class names given, but the model has 80 classes"),
    (["--opset", "13"], "opset 13 is not supported"),
    (["--out", "{tmp}/atto.bin"], "must end with .onnx"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path, capfd, argv, message) -> None:
    (tmp_path / "corrupt.pth").write_bytes(b"\x80\x02not really a pickle")
    (tmp_path / "names.txt").write_text("cat\ndog\n\nbird\n")
    argv = [a.format(tmp=tmp_path) for a in argv]
    out = tmp_path / "atto.onnx"
    code = main(["--variant", VARIANT, *argv, *([] if "--out" in argv else ["--out", str(out)])])
    err = capfd.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*.onnx*")) and not list(tmp_path.glob(".*.tmp"))


def test_opset_check_happens_before_tracing(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(onnx_target, "_trace", lambda *a, **k: pytest.fail("traced with a bad opset"))
    with pytest.raises(ExportError, match="use 16 to 20"), pytest.warns(ExportWarning, match="RANDOM weights"):
        export(None, variant=VARIANT, imgsz=320, out=tmp_path / "a.onnx", opset=21)


@pytest.mark.parametrize("failure, code", [(KeyboardInterrupt, 130), (ExportError("disk on fire"), 2)])
def test_failing_export_leaves_no_file(tmp_path: Path, monkeypatch, capfd, failure, code) -> None:
    def half_written(model, metadata, out_path, options):
        Path(out_path).write_bytes(b"half an onnx file")
        raise failure

    monkeypatch.setattr(onnx_target, "export_onnx", half_written)
    out = tmp_path / "atto.onnx"
    assert main(["--variant", VARIANT, "--imgsz", "320", "--out", str(out)]) == code
    assert "Traceback" not in capfd.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_interrupted_save_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    """The real pipeline, stopped while onnx.save writes."""
    def interrupted_save(proto, path, *args, **kwargs):
        Path(path).write_bytes(proto.SerializeToString()[:1000])
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_target.onnx, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt), pytest.warns(ExportWarning, match="RANDOM weights"):
        export(None, variant=VARIANT, imgsz=320, out=tmp_path / "atto.onnx", simplify=False, verify=False)
    assert list(tmp_path.iterdir()) == []


def test_list_targets_and_options(capsys) -> None:
    assert main(["--list-targets"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("onnx"))
    assert ".onnx" in line and "yes" in line
    onnx_spec = get_target("ONNX")
    assert onnx_spec.resolve_options({"opset": 18}) == {"opset": 18, "simplify": True, "verify": True}
    with pytest.raises(ExportError, match="does not take option.*fp16.*its options are: opset, simplify, verify"):
        onnx_spec.resolve_options({"fp16": True})


def test_query_matching_forgives_reordered_ties_but_not_wrong_outputs() -> None:
    rng = np.random.default_rng(0)
    scores = np.sort(rng.uniform(0, 1, (1, 50)))[:, ::-1].copy()
    labels = rng.integers(0, 80, (1, 50))
    labels[0, 1] = (labels[0, 0] + 1) % 80  # two detections of one query: same box, different labels
    boxes = rng.uniform(0, 1, (1, 50, 4)).astype(np.float32)
    boxes[0, 1] = boxes[0, 0]
    rows = query_rows([scores, labels, boxes])
    assert query_agreement(rows, rows, atol=1e-3) == 1.0
    swapped = rows[:, [1, 0, *range(2, 50)]]
    assert query_agreement(swapped, rows, atol=1e-3) == 1.0
    assert query_agreement(query_rows([scores, labels, boxes + 0.01]), rows, atol=1e-3) == 0.0
    assert query_agreement(query_rows([scores, (labels + 1) % 80, boxes]), rows, atol=1e-3) == 0.0
