"""The ground-floor services: media sources (listing image and video files, reading frames, frames spread
over a video), accuracy (validation sets, category mapping, COCO scoring with known AP), input sizes, and the
synthetic scene generator, all importable without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from deim_edge.accuracy import METRICS, ValSet, category_mapping, score
from deim_edge.errors import ConfigError, ImageError
from deim_edge.media import Video, image_files, is_image, is_video, media_files, read_image
from deim_edge.metadata import COCO_CLASSES
from deim_edge.results import COCO80_TO_91, Detections
from deim_edge.sizes import as_hw
from deim_edge.synthetic import SHAPES, class_names, draw_scene


def _touch_image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 12, 3), value, np.uint8))
    return path


def _write_video(path: Path, frames: int = 20, fps: float = 10) -> Path:
    """`frames` flat grey frames, frame i at brightness 10 i (MJPG keeps that within a few levels)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 10, np.uint8))
    writer.release()
    return path


# ---------------------------------------------------------------------------------------------- media

def test_folders_are_listed_flat_or_recursively_sorted_and_filtered(tmp_path):
    _touch_image(tmp_path / "b.png")
    _touch_image(tmp_path / "a.JPG")
    _touch_image(tmp_path / "sub" / "c.jpg")
    _touch_image(tmp_path / "sub" / "deeper" / "d.webp")
    (tmp_path / "notes.txt").write_text("not an image")
    _write_video(tmp_path / "clip.avi", frames=2)
    assert [p.name for p in image_files([tmp_path])] == ["a.JPG", "b.png"]
    assert [p.relative_to(tmp_path).as_posix() for p in image_files([tmp_path], recursive=True)] == [
        "a.JPG", "b.png", "sub/c.jpg", "sub/deeper/d.webp"]
    assert [p.name for p in media_files([tmp_path])] == ["a.JPG", "b.png", "clip.avi"]
    # files named directly come first as given, folders in place
    assert [p.name for p in media_files([tmp_path / "clip.avi", tmp_path / "sub"])] == ["clip.avi", "c.jpg"]
    assert is_image("x.TIFF") and is_video("x.MKV") and not is_image("x.avi") and not is_video("x.txt")


def test_unknown_suffixes_missing_paths_and_empty_folders_are_clear_errors(tmp_path):
    (tmp_path / "frame.pgm").write_bytes(b"P5 1 1 255 \x00")  # OpenCV reads it, the lists do not name it
    _write_video(tmp_path / "clip.avi", frames=2)
    assert media_files([tmp_path / "frame.pgm"]) == [tmp_path / "frame.pgm"]  # named directly: taken
    assert read_image(tmp_path / "frame.pgm").shape == (1, 1, 3)
    with pytest.raises(ImageError, match="clip.avi is not one of the images"):
        image_files([tmp_path / "clip.avi"])
    with pytest.raises(ImageError, match="not found: .*nothing"):
        media_files([tmp_path / "nothing"])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ImageError, match=r"no images \(.*\) in .*empty$"):
        image_files([tmp_path / "empty"])
    with pytest.raises(ImageError, match="empty or its subfolders"):
        image_files([tmp_path / "empty"], recursive=True)


def test_read_image_gives_bgr_or_none(tmp_path):
    path = tmp_path / "ünïcode" / "x.png"
    path.parent.mkdir()
    image = np.zeros((4, 6, 3), np.uint8)
    image[..., 2] = 200  # red, in BGR
    cv2.imencode(".png", image)[1].tofile(str(path))
    np.testing.assert_array_equal(read_image(path), image)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    assert read_image(tmp_path / "broken.jpg") is None
    assert read_image(tmp_path / "missing.jpg") is None


def test_video_frames_in_order_and_spread_evenly(tmp_path):
    path = _write_video(tmp_path / "clip.avi")
    with Video(path) as video:
        assert video.fps == pytest.approx(10) and video.frame_count == 20
        frames = list(video)
    assert len(frames) == 20 and frames[0].shape == (48, 64, 3) and frames[0].dtype == np.uint8
    assert [round(float(f.mean()) / 10) for f in frames] == list(range(20))
    with Video(path) as video:
        spread = list(video.spread(5))
    assert [i for i, _ in spread] == [0, 5, 10, 14, 19]  # first and last included
    assert [round(float(f.mean()) / 10) for _, f in spread] == [0, 5, 10, 14, 19]
    with Video(path) as video:
        assert [i for i, _ in video.spread(50)] == list(range(20))  # a shorter video gives every frame
    with pytest.raises(ImageError, match="cannot open the video"):
        Video(tmp_path / "missing.mp4")


# ---------------------------------------------------------------------------------------------- accuracy

def _coco_set(tmp_path: Path) -> ValSet:
    """Two 100x100 images; image 1 holds one 10x10 box of category 7, image 2 one of category 3."""
    (tmp_path / "val").mkdir()
    for name in ("a.jpg", "b.jpg"):
        _touch_image(tmp_path / "val" / name)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 100},
                   {"id": 2, "file_name": "b.jpg", "height": 100, "width": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 10, 10], "area": 100,
                         "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [50, 50, 10, 10], "area": 100,
                         "iscrowd": 0}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}))
    return ValSet.find(tmp_path)


def _dets(boxes: list[list[float]], scores: list[float], labels: list[int]) -> Detections:
    return Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(scores, np.float32),
                      np.asarray(labels, np.int64))


def test_coco_scoring_gives_the_known_ap(tmp_path):
    pytest.importorskip("faster_coco_eval", reason="COCO scoring needs faster-coco-eval or pycocotools")
    val = _coco_set(tmp_path)
    gt, image_ids = val.ground_truth()
    assert image_ids == [1, 2]
    ids = category_mapping(("cat", "dog"), gt.loadCats(gt.getCatIds()))
    assert ids == [3, 7]
    perfect = score(gt, {1: _dets([[10, 10, 20, 20]], [0.9], [1]), 2: _dets([[50, 50, 60, 60]], [0.8], [0])}, ids)
    assert set(perfect) == set(METRICS)
    assert perfect["AP"] == perfect["AP50"] == perfect["AP75"] == perfect["APs"] == 1.0
    assert perfect["APm"] == perfect["APl"] == -1.0  # no medium or large ground truth
    # "dog" at IoU 0.62 (6.2 of 10 rows): matched at IoU 0.50, 0.55, 0.60, 3 of the 10 thresholds; "cat" exact
    loose = score(gt, {1: _dets([[10, 10, 20, 16.2]], [0.9], [1]), 2: _dets([[50, 50, 60, 60]], [0.8], [0])}, ids)
    assert loose["AP50"] == 1.0 and loose["AP75"] == pytest.approx((0.0 + 1.0) / 2)
    assert loose["AP"] == pytest.approx((0.3 + 1.0) / 2)
    # "dog" found (a false positive ranked below the hit costs nothing), "cat" missed: AP 1 and 0
    missed = score(gt, {1: _dets([[10, 10, 20, 20], [70, 70, 80, 80]], [0.9, 0.5], [1, 1])}, ids, image_ids)
    assert missed["AP"] == pytest.approx(0.5)
    assert score(gt, {}, ids) == {m: 0.0 for m in METRICS}
    with pytest.raises(ConfigError, match="not in the dataset"):
        score(gt, {3: _dets([], [], [])}, ids)


def test_valset_finds_coco_folders_and_limits_images(tmp_path):
    val = _coco_set(tmp_path)
    assert val.annotations.name == "instances_val.json" and val.images.name == "val"
    limited = ValSet.find(annotations=val.annotations, images=val.images, max_images=1)
    pytest.importorskip("faster_coco_eval")
    assert limited.ground_truth()[1] == [1]
    with pytest.raises(ConfigError, match="instances_val.json"):
        ValSet.find(tmp_path / "val")
    with pytest.raises(ConfigError, match="at least 1"):
        ValSet.find(tmp_path, max_images=0)


def test_category_mapping_by_name_position_and_coco_ids():
    cats = [{"id": 9, "name": "b"}, {"id": 4, "name": "a"}]
    assert category_mapping(("a", "b"), cats) == [4, 9]  # by name
    assert category_mapping(("x", "y"), cats) == [4, 9]  # by position: categories sorted by id
    coco = [{"id": i, "name": f"c{i}"} for i in COCO80_TO_91[:5]]
    assert category_mapping(COCO_CLASSES, coco) == list(COCO80_TO_91)
    with pytest.raises(ConfigError, match="cannot match the model's 3 classes"):
        category_mapping(("x", "y", "z"), cats)


# ---------------------------------------------------------------------------------------------- sizes, synthetic

def test_as_hw():
    assert as_hw(320) == (320, 320) and as_hw(np.int64(64)) == (64, 64)
    assert as_hw((240, 320)) == (240, 320) and as_hw([96]) == (96, 96)
    for bad in ((1, 2, 3), "big", None, True):
        with pytest.raises(ConfigError, match="one int or"):
            as_hw(bad)


def test_synthetic_scenes_are_deterministic_and_checked():
    a = draw_scene(np.random.default_rng(5), 64, 96, 6)
    b = draw_scene(np.random.default_rng(5), 64, 96, 6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    image, boxes, labels, instances = a
    assert image.shape == (64, 96, 3) and boxes.shape == (len(labels), 4) and instances.max() == len(labels)
    assert class_names(3) == SHAPES[:3]
    with pytest.raises(ConfigError, match="num_classes must be 1..6"):
        draw_scene(np.random.default_rng(0), 32, 32, 7)


def test_ground_floor_services_import_and_run_without_torch():
    code = textwrap.dedent("""
        import sys, warnings

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError(f"torch is blocked in this test ({name})")
                return None

        sys.meta_path.insert(0, NoTorch())
        import numpy as np
        import deim_edge.accuracy, deim_edge.media, deim_edge.sizes, deim_edge.bench.accuracy
        from deim_edge.synthetic import draw_scene
        from deim_edge.calibration.data import load_calibration
        from deim_edge.metadata import ArtifactMetadata

        image = draw_scene(np.random.default_rng(0), 48, 64, 4)[0]
        assert image.shape == (48, 64, 3)
        warnings.simplefilter("ignore")
        meta = ArtifactMetadata(input_size=(64, 96), class_names=("a", "b"))
        calibration = load_calibration("synthetic", meta, size=2, progress=False)
        assert calibration.inputs.shape == (2, 3, 64, 96)
        assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
