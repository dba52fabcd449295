"""Detector over ONNX Runtime and PyTorch: parity on real photographs, host vs in-graph decode,
official DEIMv2 ONNX files, batches, a torch-free runtime, bad input and the predict command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import DATA, assert_same_detections, assert_same_queries
from parity_weights import fill_parity_weights

from deim_edge import Detector
from deim_edge.errors import ConfigError, ImageError, ModelFileError
from deim_edge.export import export
from deim_edge.metadata import OFFICIAL, TOPK
from deim_edge.models import build_model, save_checkpoint

PHOTOS = sorted((DATA / "images").glob("*.jpg"))
CASES = [("deimv2-atto", 320), ("deimv2-pico", 640)]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def artifacts(request, tmp_path_factory):
    """A model with non-trivial weights, its checkpoint, and its ONNX exports with both decodes."""
    name, size = request.param
    folder = tmp_path_factory.mktemp(name)
    model = fill_parity_weights(build_model(name, input_size=size)).eval()
    checkpoint = save_checkpoint(folder / f"{name}.pth", model, ema=model)
    graph = export(checkpoint, "onnx", variant=name, out=folder / f"{name}.onnx", decode="graph")
    host = export(checkpoint, "onnx", variant=name, out=folder / f"{name}-raw.onnx", decode="host",
                  dynamic_batch=True)
    return {"model": model, "pth": checkpoint, "graph": graph, "host": host, "size": size}


def test_photos_are_committed_with_their_sources():
    assert len(PHOTOS) >= 3
    sources = (DATA / "images" / "SOURCES.md").read_text()
    assert all(p.name in sources for p in PHOTOS)


def test_onnx_runtime_equals_pytorch_on_photos(artifacts):
    onnx_det = Detector(artifacts["host"], conf=0.0)
    torch_det = Detector(artifacts["pth"], conf=0.0)
    for photo in PHOTOS:
        batch, _ = onnx_det.preprocess([cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)])
        ours = onnx_det.infer(batch)
        with torch.no_grad():
            ref = artifacts["model"](torch.from_numpy(batch))
        got = {"pred_logits": torch.from_numpy(ours["logits"]), "pred_boxes": torch.from_numpy(ours["boxes"])}
        assert_same_queries(got, ref["pred_logits"].numpy(), ref["pred_boxes"].numpy(), atol=1e-4)
        # the top-100 detections through each runtime's whole path
        a, b = onnx_det(str(photo))[:100], torch_det(str(photo))[:100]
        assert_same_detections(a, b, box_atol=0.01)


def test_host_decode_equals_graph_decode(artifacts):
    host, graph = Detector(artifacts["host"], conf=0.0), Detector(artifacts["graph"], conf=0.0)
    assert host.metadata.output != graph.metadata.output == TOPK
    for photo in PHOTOS:
        a, b = host(str(photo)), graph(str(photo))
        assert len(a) == 300
        assert_same_detections(a, b, box_atol=1e-3, score_atol=1e-6)


def test_batches_equal_single_images(artifacts):
    for path in (artifacts["graph"], artifacts["host"]):  # static batch 1, dynamic batch
        det = Detector(path, conf=0.1)
        singles = [det(str(p)) for p in PHOTOS]
        batched = det([str(p) for p in PHOTOS])
        for s, b in zip(singles, batched):
            assert_same_detections(s, b, box_atol=1e-3)


def test_filters_by_conf_and_class(artifacts):
    everything = Detector(artifacts["graph"], conf=0.0)(str(PHOTOS[0]))
    kept = Detector(artifacts["graph"], conf=0.3, classes=["person", 2])(str(PHOTOS[0]))
    expected = everything[(everything.scores >= 0.3) & np.isin(everything.labels, [0, 2])]
    np.testing.assert_array_equal(kept.labels, expected.labels)
    with pytest.raises(ConfigError, match="unknown class 'unicorn'"):
        Detector(artifacts["graph"], classes=["unicorn"])


class OfficialExport(torch.nn.Module):
    """The interface of the public DEIMv2 ONNX export: images + orig_target_sizes (w, h) in,
    labels, boxes (xyxy pixels) and scores out."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images, orig_target_sizes):
        out = self.model(images)
        cx, cy, w, h = out["pred_boxes"].unbind(-1)
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        boxes = boxes * orig_target_sizes.repeat(1, 2).unsqueeze(1)
        scores, index = torch.topk(out["pred_logits"].sigmoid().flatten(1), 300, dim=-1)
        classes = out["pred_logits"].shape[-1]
        boxes = boxes.gather(1, (index // classes).unsqueeze(-1).repeat(1, 1, 4))
        return index % classes, boxes, scores


def test_official_onnx_files_run_unchanged(artifacts, tmp_path: Path):
    size = artifacts["size"]
    path = tmp_path / "official.onnx"
    model = build_model("deimv2-atto" if size == 320 else "deimv2-pico", input_size=size)
    model.load_state_dict(artifacts["model"].state_dict())
    torch.onnx.export(OfficialExport(model.deploy()), (torch.rand(1, 3, size, size), torch.tensor([[size, size]])),
                      str(path), input_names=["images", "orig_target_sizes"],
                      output_names=["labels", "boxes", "scores"],
                      dynamic_axes={"images": {0: "N"}, "orig_target_sizes": {0: "N"}}, opset_version=17, dynamo=False)
    official = Detector(path, conf=0.0)
    assert official.metadata.output == OFFICIAL and official.metadata.resize == "letterbox"
    assert official.metadata.variant == model.variant.name  # told apart by weight shapes
    ours = Detector(artifacts["graph"], conf=0.0, resize="letterbox")  # same weights, same preprocessing
    for photo in PHOTOS:
        assert_same_detections(official(str(photo))[:100], ours(str(photo))[:100], box_atol=0.01)


def test_runtime_needs_no_torch(artifacts):
    code = f"""
import sys
sys.modules["torch"] = None  # importing torch now fails
from deim_edge import Detector
dets = Detector({str(artifacts['graph'])!r}, conf=0.0)({str(PHOTOS[0])!r})
assert len(dets) == 300 and "torch" not in [m for m in sys.modules if sys.modules[m] is not None]
print(len(dets))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "300"


def test_other_pixel_formats_match_rgb(artifacts):
    det = Detector(artifacts["graph"], conf=0.2)
    bgr = cv2.imread(str(PHOTOS[0]))
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    reference = det(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))
    for image in (gray, gray[..., None], np.dstack([cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), np.full_like(gray, 255)]),
                  cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR).astype(np.uint16) * 257):
        assert_same_detections(det(image), reference, box_atol=1e-3)
    flipped = np.ascontiguousarray(bgr[:, ::-1])
    np.testing.assert_allclose(det(bgr[:, ::-1]).xyxy, det(flipped).xyxy)  # a non-contiguous view
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    np.testing.assert_allclose(det(rgb, color="RGB").xyxy, det(bgr).xyxy)


def test_bad_model_files_are_model_file_errors(artifacts, tmp_path: Path):
    with pytest.raises(ModelFileError, match="not found"):
        Detector(tmp_path / "absent.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(Path(artifacts["graph"]).read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a loadable ONNX model"):
        Detector(truncated)
    text = tmp_path / "notes.onnx"
    text.write_text("hello")
    with pytest.raises(ModelFileError):
        Detector(text)
    with pytest.raises(ModelFileError, match="known suffixes"):
        Detector(DATA / "images" / "SOURCES.md")
    with pytest.raises(ModelFileError, match="unknown backend"):
        Detector(artifacts["graph"], backend="tensorflow-js")


def test_bad_images_are_image_errors(artifacts):
    det = Detector(artifacts["graph"])
    with pytest.raises(ImageError, match="SOURCES.md"):
        det(str(DATA / "images" / "SOURCES.md"))
    with pytest.raises(ImageError):
        det(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ImageError):
        det([])


def test_predict_command_writes_annotated_images_video_and_json(artifacts, tmp_path: Path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 240))
    for photo in PHOTOS * 2:
        writer.write(cv2.resize(cv2.imread(str(photo)), (320, 240)))
    writer.release()
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "deim_edge", "predict", str(artifacts["graph"]),
                             str(DATA / "images"), str(video), "--save", str(out), "--conf", "0.3"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "predict: " in result.stderr  # progress
    records = json.loads((out / "detections.json").read_text())
    assert len(records) == len(PHOTOS) + 1
    for photo in PHOTOS:
        annotated = cv2.imread(str(out / photo.name))
        assert annotated.shape == cv2.imread(str(photo)).shape
    frames = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(frames.get(cv2.CAP_PROP_FRAME_COUNT)) == len(PHOTOS) * 2
    assert len(records[str(video)]) == len(PHOTOS) * 2
    bad = subprocess.run([sys.executable, "-m", "deim_edge", "predict", str(artifacts["graph"]),
                          str(tmp_path / "nope")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr
