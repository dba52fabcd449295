"""`python -m deim_edge demo`: end to end with a small budget (export, detect, agreement with ONNX Runtime,
annotated images, benchmark), its export cache, a checkpoint's class names, which targets it skips and
why, and the agreement measure itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from deim_edge.demo import CHECKPOINT, MIN_COMPARED, agreement, plan
from deim_edge.errors import ConfigError
from deim_edge.results import Detections

pytest.importorskip("onnxruntime", reason="the demo compares every backend with ONNX Runtime")
pytest.importorskip("onnx", reason="the demo exports ONNX")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the CI machine is a shared 2-core box
SAMPLES = sorted((Path(__file__).parents[1] / "deim_edge" / "assets" / "samples").glob("*.jpg"))


def run_demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deim_edge", "demo", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=900, env=ENV)


def test_demo_runs_end_to_end(tmp_path):
    targets = ["onnx"] + (["openvino"] if any(r.target == "openvino" and r.status == "pending"
                                              for r in plan(["onnx", "openvino"])) else [])
    result = run_demo("--out", str(tmp_path), "--targets", *targets, "--budget", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    said = "trained checkpoint" if CHECKPOINT.is_file() else "RANDOM weights"
    assert said in result.stdout
    assert "p50 ms" in result.stdout  # the benchmark table

    summary = json.loads((tmp_path / "demo.json").read_text())
    assert [t["status"] for t in summary["targets"]] == ["ran"] * len(targets)
    assert len(summary["samples"]) == len(SAMPLES) == 3
    for target in targets:
        drawn = sorted((tmp_path / "images" / target).glob("*.jpg"))
        assert [p.name for p in drawn] == [p.name for p in SAMPLES]
        assert cv2.imread(str(drawn[0])).shape == cv2.imread(str(SAMPLES[0])).shape
    if "openvino" in targets:  # fp32 OpenVINO finds what ONNX Runtime finds
        a = summary["agreement"]["targets"]["openvino"]
        assert a["compared"] >= 3 * MIN_COMPARED and a["agreed"] == a["compared"] and a["max_score_diff"] < 1e-3
        assert "agreement with ONNX Runtime" in result.stdout

    report = json.loads((tmp_path / "bench.json").read_text())
    assert [r["status"] for r in report["rows"]] == ["ok"] * len(targets)
    assert report["settings"]["duration_s"] == 1 and report["rows"][0]["runs"] >= 3
    assert (tmp_path / "bench.png").read_bytes()[:4] == b"\x89PNG"

    again = run_demo("--out", str(tmp_path), "--targets", "onnx", "--budget", "0.5")  # the export is cached
    assert again.returncode == 0, again.stderr
    assert "onnx: reusing" in again.stderr and "exporting to onnx" not in again.stderr


def test_demo_uses_the_checkpoints_class_names(tmp_path):
    torch = pytest.importorskip("torch")
    from deim_edge.export.weights import random_model

    model = random_model("deimv2-atto", num_classes=3)
    names = ["apple", "pear", "plum"]
    checkpoint = tmp_path / "fruit.pth"
    torch.save({"model": model.state_dict(), "class_names": names}, checkpoint)
    result = run_demo("--out", str(tmp_path / "out"), "--targets", "onnx", "--budget", "0.5",
                      "--checkpoint", str(checkpoint))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"trained checkpoint {checkpoint}" in result.stdout
    report = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert report["rows"][0]["metadata"]["class_names"] == names
    assert report["rows"][0]["name"] == "fruit-onnx.onnx"


def test_targets_that_cannot_run_here_are_skipped_with_a_reason():
    runs = {r.target: r for r in plan(None)}
    assert runs["onnx"].status == "pending"
    for target in ("coreml", "coreml-fp32"):
        if sys.platform != "darwin":
            assert runs[target].status == "skipped" and "macOS" in runs[target].reason
    for target in ("trt-fp32", "trt-fp16"):
        if not Path("/dev/nvidia0").exists() and not Path("/etc/nv_tegra_release").exists():
            assert runs[target].status == "skipped" and ("TensorRT" in runs[target].reason
                                                         or "GPU" in runs[target].reason)
    with pytest.raises(ConfigError, match="include the onnx target"):
        plan(["openvino"])


def _dets(boxes, scores, labels) -> Detections:
    return Detections(np.array(boxes, np.float32), np.array(scores, np.float32), np.array(labels))


def test_agreement_needs_the_same_label_and_iou():
    ref = _dets([[0, 0, 100, 100], [200, 200, 300, 300]], [0.9, 0.8], [0, 1])
    same = _dets([[200, 200, 300, 300], [0, 0, 100, 101]], [0.8, 0.89], [1, 0])  # reordered, 1 px off
    assert agreement([ref], [same], conf=0.5) == {"compared": 2, "agreed": 2, "max_score_diff": 0.01,
                                                  "min_iou": 0.9901}
    relabelled = _dets([[0, 0, 100, 100], [200, 200, 300, 300]], [0.9, 0.8], [0, 2])
    shifted = _dets([[20, 0, 120, 100], [200, 200, 300, 300]], [0.9, 0.8], [0, 1])
    assert agreement([ref], [relabelled], conf=0.5)["agreed"] == 1
    assert agreement([ref], [shifted], conf=0.5)["agreed"] == 1
    assert agreement([ref], [Detections.empty()], conf=0.5) == {"compared": 2, "agreed": 0, "max_score_diff": 0.0,
                                                                "min_iou": None}
