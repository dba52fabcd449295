"""`python -m deim_edge predict` with --track and --slice: a video of moving shapes comes out annotated, with
a JSON-lines file of its frames whose track ids follow each shape; a large image tile by tile finds more than
whole; bad options are one line before the model loads; Ctrl-C leaves no half-written video or JSON lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import BUNDLED
from test_bad_input_predict import one_error_line
from test_slicing import large_scene, overlaps

from deim_edge import Detector
from deim_edge.__main__ import main
from deim_edge.media import Video
from deim_edge import synthetic
from deim_edge.tracking import Tracker

pytest.importorskip("supervision")
pytest.importorskip("trackers")

FRAMES, SIDE = 40, 320


def shape_of_size(rng: np.random.Generator, shape: str, low: int, high: int) -> np.ndarray:
    """The mask, cropped to its extent, of one synthetic shape `low`..`high` pixels across in a 320x320 frame."""
    while True:
        mask = synthetic.random_shape_mask(rng, shape, 320, 320)
        ys, xs = np.nonzero(mask)
        if low <= max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 <= high:
            return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def moving_shapes_video(path: Path) -> list[np.ndarray]:
    """A FRAMES-frame MJPG video of a circle moving right along the bottom and a square moving down on the right
    (their paths never cross) over a still textured background; returns each frame's true boxes [2,4] (circle,
    square)."""
    rng = np.random.default_rng(3)
    background = synthetic.background(rng, SIDE, SIDE)[..., ::-1]  # BGR
    contrast = tuple(int(v) for v in 255 - background.reshape(-1, 3).mean(0))  # far from the background's colour
    shapes = [(shape_of_size(rng, "circle", 70, 90), (10, 210), (5, 0)),
              (shape_of_size(rng, "square", 70, 90), (215, 10), (0, 2))]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (SIDE, SIDE))
    boxes = []
    for i in range(FRAMES):
        frame, frame_boxes = background.copy(), []
        for mask, (x0, y0), (dx, dy) in shapes:
            x, y = x0 + dx * i, y0 + dy * i
            frame[y:y + mask.shape[0], x:x + mask.shape[1]][mask] = contrast
            frame_boxes.append([x, y, x + mask.shape[1], y + mask.shape[0]])
        writer.write(frame)
        boxes.append(np.array(frame_boxes, np.float32))
    writer.release()
    return boxes


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    return path, moving_shapes_video(path)


@pytest.fixture(scope="module")
def tracked(trained_onnx, video, tmp_path_factory) -> Path:
    """The save folder of `predict --track` over the video."""
    out = tmp_path_factory.mktemp("tracked") / "out"
    assert main(["predict", str(trained_onnx), str(video[0]), "--track", "--threads", "1", "--save", str(out)]) == 0
    return out


def test_the_annotated_video_has_every_frame(tracked):
    with Video(tracked / "clip.mp4") as annotated:
        assert sum(1 for _ in annotated) == FRAMES
    assert sorted(p.name for p in tracked.iterdir()) == ["clip.jsonl", "clip.mp4", "detections.json"]


def test_the_json_lines_hold_one_frame_a_line_with_track_ids(tracked, video):
    lines = [json.loads(line) for line in (tracked / "clip.jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert json.loads((tracked / "detections.json").read_text()) == {str(video[0]): [r["detections"] for r in lines]}
    records = [d for line in lines for d in line["detections"]]
    assert records and all(set(d) == {"box", "score", "label", "name", "track"} for d in records)
    assert all(d["track"] >= 0 or d["score"] >= 0.25 for d in records)


def test_each_moving_shape_keeps_one_track_id(tracked, video):
    """From the third frame on (a track is confirmed after two), the detection on each shape carries one id in
    nearly every frame, a different one for each shape."""
    lines = [json.loads(line) for line in (tracked / "clip.jsonl").read_text().splitlines()]
    ids: list[list[int]] = [[], []]
    for line, truth in zip(lines[2:], video[1][2:]):
        boxes = np.array([d["box"] for d in line["detections"]], np.float32).reshape(-1, 4)
        iou = overlaps(truth, boxes)[0]
        for k in range(2):
            on = [line["detections"][j]["track"] for j in np.nonzero(iou[k] >= 0.5)[0]]
            ids[k].append(max(on, key=on.count) if on else -1)
    print(f"\ntrack ids on the circle {ids[0]}\non the square {ids[1]}")
    for k in range(2):
        most = max(set(ids[k]), key=ids[k].count)
        assert most >= 0 and ids[k].count(most) >= 0.9 * len(ids[k])
    assert max(set(ids[0]), key=ids[0].count) != max(set(ids[1]), key=ids[1].count)


def test_slice_finds_more_small_objects_in_a_large_image(trained_onnx, tmp_path):
    image, boxes, _, _ = large_scene(seed=5)
    image, boxes = image[:1280, :1280], boxes[(boxes[:, 2] <= 1280) & (boxes[:, 3] <= 1280)]
    path = tmp_path / "large.png"
    cv2.imwrite(str(path), image[..., ::-1])
    counts = {}
    for name, options in {"whole": [], "sliced": ["--slice", "320", "--overlap", "0.2"]}.items():
        json_path = tmp_path / f"{name}.json"
        assert main(["predict", str(trained_onnx), str(path), "--threads", "1", "--json", str(json_path),
                     *options]) == 0
        found = json.loads(json_path.read_text())[str(path)]
        iou = overlaps(boxes, np.array([d["box"] for d in found], np.float32).reshape(-1, 4))[0]
        counts[name] = int((iou.max(1, initial=0) >= 0.5).sum())
    print(f"\nof {len(boxes)} objects in 1280x1280, found whole {counts['whole']}, with --slice 320 {counts['sliced']}")
    assert counts["sliced"] >= 0.7 * len(boxes) and counts["sliced"] >= counts["whole"] + 0.4 * len(boxes)


@pytest.mark.parametrize("options, says", [
    (["--slice", "10"], "at least 32"), (["--slice", "640", "--overlap", "1.5"], "overlap is a fraction"),
    (["--slice", "640", "480", "3"], "one side or (width, height)"), (["--overlap", "0.2"], "give --slice too"),
    (["--track"], "--track follows objects across the frames of videos")])
def test_bad_options_are_one_line_before_the_model_loads(options, says, tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Detector, "__init__", no_model)
    image = tmp_path / "image.jpg"
    cv2.imwrite(str(image), np.zeros((64, 64, 3), np.uint8))
    assert main(["predict", str(BUNDLED), str(image), *options, "--save", str(tmp_path / "out")]) == 2
    assert says in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_track_on_a_folder_with_images_names_them(video, tmp_path, capsys):
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "clip.avi").write_bytes(video[0].read_bytes())
    cv2.imwrite(str(folder / "still.png"), np.zeros((64, 64, 3), np.uint8))
    assert main(["predict", str(BUNDLED), str(folder), "--track"]) == 2
    assert "1 input(s) are not videos (" + str(folder / "still.png") in one_error_line(capsys.readouterr().err)


def test_ctrl_c_mid_video_leaves_no_half_video_or_json_lines(trained_onnx, video, tmp_path, capsys, monkeypatch):
    """Interrupted on the second video's fifth frame: the first video's outputs stay, none of the second's."""
    second = tmp_path / "second.avi"
    second.write_bytes(video[0].read_bytes())
    update, calls = Tracker.update, []

    def interrupt(self, detections, conf=None):
        calls.append(1)
        if len(calls) == FRAMES + 5:
            raise KeyboardInterrupt
        return update(self, detections, conf)

    monkeypatch.setattr(Tracker, "update", interrupt)
    out = tmp_path / "out"
    assert main(["predict", str(trained_onnx), str(video[0]), str(second), "--track", "--save", str(out)]) == 130
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "clip.mp4", "detections.errors.json",
                                                     "detections.json"]
    assert list(json.loads((out / "detections.json").read_text())) == [str(video[0])]
    assert len((out / "clip.jsonl").read_text().splitlines()) == FRAMES


def test_track_without_the_extra_names_it_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trackers", None)  # import trackers now fails
    video = tmp_path / "clip.avi"
    moving_shapes_video(video)
    assert main(["predict", "no-such-model.onnx", str(video), "--track"]) == 2
    assert "deim-edge[analytics]" in one_error_line(capsys.readouterr().err)
