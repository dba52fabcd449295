"""Tracking, counting and slicing sit on Detector, so they work with every artifact: the same rendered video
(tests/moving_shapes.py) tracked and counted, and a frame sliced, through ONNX Runtime in a process where torch
cannot be imported, through OpenVINO, and through the PyTorch checkpoint; the ids, counts and sliced boxes agree
with ONNX Runtime's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLED

pytest.importorskip("supervision", reason="the analytics extra: pip install 'deim-edge[analytics]'")
pytest.importorskip("trackers", reason="the analytics extra: pip install 'deim-edge[analytics]'")

TESTS = Path(__file__).parent
FRAMES = 90  # of the rendered video: the circle and the ring cross the line, the triangle visits the zone

# one run: track the first FRAMES frames, count them, slice frame 40; the figures as one JSON line on stdout
RUN = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import moving_shapes
    from deim_edge import Detector
    from deim_edge.counting import LineCounter, ZoneCounter

    truth = moving_shapes.render(0)
    frames = truth.frames[:{frames}]
    det = Detector({model!r}, **{options!r})
    line = LineCounter(*moving_shapes.LINE)
    zone = ZoneCounter(moving_shapes.ZONE)
    ids = []
    for frame, dets in det.track(frames):
        line.update(dets)
        zone.update(dets)
        ids.append(sorted(t for t in dets.tracker_id.tolist() if t >= 0))
    sliced = Detector({model!r}, slice=160, overlap=0.25, **{options!r})(frames[40])
    print(json.dumps({{"ids": ids, "line": line.counts, "zone": zone.counts, "sliced": len(sliced),
                      "torch": "torch" in sys.modules and sys.modules["torch"] is not None}}))
""")


def run_analytics(model: Path, options: dict | None = None, block_torch: bool = False) -> dict:
    """RUN in a fresh interpreter (torch made unimportable with `block_torch`); its JSON line."""
    code = RUN.format(tests=str(TESTS), frames=FRAMES, model=str(model), options=options or {})
    if block_torch:
        code = "import sys\nsys.modules['torch'] = None\n" + code
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def onnx_run(trained_onnx: Path) -> dict:
    return run_analytics(trained_onnx, {"threads": 1}, block_torch=True)


def test_onnx_runs_tracking_counting_and_slicing_without_torch(onnx_run: dict):
    assert not onnx_run["torch"]
    tracked = [frame for frame in onnx_run["ids"] if frame]
    assert len(tracked) > 0.8 * FRAMES, "most frames should have a tracked object"
    assert onnx_run["line"]["in"] >= 2 and onnx_run["zone"]["visits"] >= 1, (onnx_run["line"], onnx_run["zone"])
    assert onnx_run["sliced"] > 0


def same_story(run: dict, reference: dict) -> None:
    """Two runs tracked and counted alike: the same counts, ids on nearly the same frames, and slices found."""
    assert run["line"] == reference["line"] and run["zone"]["visits"] == reference["zone"]["visits"], \
        (run["line"], reference["line"], run["zone"], reference["zone"])
    agree = np.mean([len(a) == len(b) for a, b in zip(run["ids"], reference["ids"])])
    assert agree > 0.9, f"tracked objects per frame agree on only {agree:.0%} of frames"
    assert abs(run["sliced"] - reference["sliced"]) <= 2


def test_openvino_artifact_tracks_counts_and_slices_like_onnx(onnx_run: dict, tmp_path: Path):
    pytest.importorskip("openvino", reason="the openvino extra")
    from deim_edge.export import export

    xml = export(BUNDLED, "openvino", out=tmp_path / "atto.xml", dynamic_batch=True)
    same_story(run_analytics(xml, {"threads": 1}, block_torch=True), onnx_run)


def test_pytorch_checkpoint_tracks_counts_and_slices_like_onnx(onnx_run: dict):
    pytest.importorskip("torch", reason="the torch extra")
    same_story(run_analytics(BUNDLED), onnx_run)
