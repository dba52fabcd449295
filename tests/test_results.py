"""Detections: construction, indexing, filtering, JSON and COCO converters, drawing."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from conftest import DATA
from deim_edge.errors import ConfigError, ImageError
from deim_edge.metadata import COCO_CLASSES
from deim_edge.results import COCO80_TO_91, Detections, class_color

NAMES = ("person", "car", "dog")


def _dets() -> Detections:
    return Detections(xyxy=[[10, 20, 110, 220], [50.5, 60.25, 70.75, 90], [0, 0, 5, 5]],
                      scores=[0.9, 0.5, 0.2], labels=[0, 2, 1], names=NAMES, image_size=(240, 320))


def test_fields_are_typed_arrays():
    d = _dets()
    assert d.xyxy.dtype == np.float32 and d.xyxy.shape == (3, 4)
    assert d.scores.dtype == np.float32 and d.labels.dtype == np.int64
    assert d.names == NAMES and d.image_size == (240, 320) and len(d) == 3
    assert d.class_names == ["person", "dog", "car"]


def test_mismatched_lengths_refused():
    with pytest.raises(ConfigError, match="one row per detection"):
        Detections(np.zeros((2, 4)), np.zeros(3), np.zeros(2))


def test_empty():
    d = Detections.empty(NAMES, (10, 20))
    assert len(d) == 0 and d.xyxy.shape == (0, 4) and d.names == NAMES and d.image_size == (10, 20)
    assert d.to_json() == "[]" and d.to_coco(1) == [] and d.class_names == []
    assert len(d.filter(conf=0.5, classes=["dog"])) == 0


def test_indexing_returns_detections():
    d = _dets()
    masked = d[d.scores > 0.3]
    assert isinstance(masked, Detections) and len(masked) == 2 and masked.names == NAMES
    assert masked.image_size == (240, 320)
    np.testing.assert_array_equal(d[np.array([2, 0])].labels, [1, 0])
    np.testing.assert_array_equal(d[[1]].xyxy, d.xyxy[1:2])
    assert len(d[1:]) == 2 and len(d[0]) == 1 and d[-1].class_names == ["car"]


def test_filter_by_conf_and_classes():
    d = _dets()
    np.testing.assert_array_equal(d.filter(conf=0.5).labels, [0, 2])  # at least conf
    np.testing.assert_array_equal(d.filter(classes=[1, 2]).labels, [2, 1])
    np.testing.assert_array_equal(d.filter(classes=["dog", "person"]).labels, [0, 2])
    np.testing.assert_array_equal(d.filter(classes="dog").labels, [2])
    np.testing.assert_array_equal(d.filter(conf=0.6, classes=["dog"]).labels, [])
    assert len(d.filter()) == 3
    with pytest.raises(ConfigError, match="unknown class name 'cat'"):
        d.filter(classes=["cat"])


def test_labels_without_names_are_shown_as_numbers():
    d = Detections([[0, 0, 1, 1], [0, 0, 2, 2]], [0.5, 0.4], [1, 7], names=("a", "b"))
    assert d.class_names == ["b", "7"]


def test_to_json_and_to_dict():
    records = json.loads(_dets().to_json())
    assert records[1] == {"box": [50.5, 60.25, 70.75, 90.0], "score": 0.5, "label": 2, "name": "dog"}
    assert [r["name"] for r in records] == ["person", "dog", "car"]
    assert records[0]["score"] == 0.9  # rounded, not 0.8999999761581421
    as_dict = _dets().to_dict()
    assert as_dict["image_size"] == [240, 320] and as_dict["detections"] == records


def test_to_coco_gives_xywh_boxes():
    records = _dets().to_coco(image_id=42)
    assert records[1]["image_id"] == 42 and records[1]["category_id"] == 2
    np.testing.assert_allclose(records[1]["bbox"], [50.5, 60.25, 20.25, 29.75])
    np.testing.assert_allclose(records[0]["bbox"], [10, 20, 100, 200])
    assert records[0]["score"] == pytest.approx(0.9)
    assert set(records[0]) == {"image_id", "category_id", "bbox", "score"}
    json.dumps(records)  # plain Python types only


def test_to_coco_category_ids():
    d = Detections([[0, 0, 1, 1]] * 3, [0.5] * 3, [0, 11, 79], names=COCO_CLASSES)
    assert [r["category_id"] for r in d.to_coco(1, COCO80_TO_91)] == [1, 13, 90]
    assert [r["category_id"] for r in d.to_coco(1, {0: 7, 11: 8, 79: 9})] == [7, 8, 9]
    with pytest.raises(ConfigError, match="label 79"):
        d.to_coco(1, list(range(12)))


def test_coco80_to_91():
    assert len(COCO80_TO_91) == len(COCO_CLASSES) == 80
    assert COCO80_TO_91[0] == 1 and COCO80_TO_91[-1] == 90
    assert list(COCO80_TO_91) == sorted(set(COCO80_TO_91))
    assert set(range(1, 91)) - set(COCO80_TO_91) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


def test_draw_returns_a_new_annotated_image():
    image = cv2.imread(str(DATA / "images" / "chelsea.jpg"))  # BGR, as OpenCV reads
    before = image.copy()
    d = Detections([[40, 30, 200, 250], [300, 100, 440, 280]], [0.88, 0.4], [15, 16], names=COCO_CLASSES,
                   image_size=image.shape[:2])
    out = d.draw(image)
    assert out is not image and out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(image, before)  # input untouched
    changed = np.any(out != image, axis=2)
    assert changed.sum() > 500
    assert changed[30, 40:200].any() and changed[100:280, 440].any()  # box edges
    assert not changed[150, 100]  # inside the box: untouched
    np.testing.assert_array_equal(d.draw(image, show_labels=False)[0, 0], image[0, 0])


def test_draw_colors_follow_the_channel_order():
    image = np.zeros((100, 100, 3), np.uint8)
    d = Detections([[10, 10, 90, 90]], [0.9], [3], image_size=(100, 100))
    bgr = d.draw(image, thickness=3, show_labels=False)
    rgb = d.draw(image, color="RGB", thickness=3, show_labels=False)
    np.testing.assert_array_equal(bgr[50, 10], class_color(3)[::-1])
    np.testing.assert_array_equal(rgb[50, 10], class_color(3))


def test_draw_accepts_views_and_empty_detections():
    image = np.random.default_rng(0).integers(0, 256, (50, 80, 3), dtype=np.uint8)
    view = image[:, ::-1]
    out = Detections.empty(NAMES, (50, 80)).draw(view)
    np.testing.assert_array_equal(out, view)
    assert out.flags.c_contiguous and not np.shares_memory(out, image)


def test_draw_refuses_wrong_images():
    d = _dets()
    with pytest.raises(ImageError, match="320x240"):
        d.draw(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ImageError, match="HxWx3 uint8"):
        d.draw(np.zeros((240, 320), np.uint8))
    with pytest.raises(ConfigError, match="color"):
        d.draw(np.zeros((240, 320, 3), np.uint8), color="HSV")


def test_class_colors_are_stable_and_distinct():
    colors = [class_color(i) for i in range(80)]
    assert colors == [class_color(i) for i in range(80)]
    assert len(set(colors)) == 80
    assert all(0 <= v <= 255 for c in colors for v in c)
