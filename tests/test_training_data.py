"""COCO-format dataset (label mapping, bad data counted and reported once) and the synthetic set."""
import json
import warnings

import cv2
import numpy as np
import pytest

from deim_edge.errors import ConfigError, DeimEdgeError
from deim_edge.synthetic import SHAPES, draw_scene
from deim_edge.training.data import CocoDetection, DatasetWarning, make_synthetic_coco
from deim_edge.training.data.synthetic import CATEGORY_IDS


def _write_image(path, image):
    ok, data = cv2.imencode(path.suffix, image)
    assert ok
    data.tofile(str(path))


def _write_json(path, images, annotations, categories):
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _image(i, name, h=40, w=60):
    return {"id": i, "file_name": name, "height": h, "width": w}


def _ann(i, image_id, cat, bbox, **extra):
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": bbox, **extra}


CATS = [{"id": 20, "name": "c"}, {"id": 3, "name": "a"}, {"id": 11, "name": "b"}]


def test_arbitrary_category_ids_map_to_contiguous_labels(tmp_path):
    _write_image(tmp_path / "x.png", np.full((40, 60, 3), 100, np.uint8))
    anns = [_ann(1, 5, 20, [1, 2, 10, 10]), _ann(2, 5, 3, [0, 0, 5, 5]), _ann(3, 5, 11, [30, 20, 4, 6])]
    ds = CocoDetection(tmp_path, _write_json(tmp_path / "a.json", [_image(5, "x.png")], anns, CATS))
    assert ds.class_names == ("a", "b", "c") and ds.category_ids == (3, 11, 20) and ds.num_classes == 3
    image, target = ds[0]
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8
    assert target["labels"].tolist() == [2, 0, 1] and target["labels"].dtype == np.int64
    np.testing.assert_array_equal(target["boxes"], [[1, 2, 11, 12], [0, 0, 5, 5], [30, 20, 34, 26]])
    assert target["boxes"].dtype == np.float32
    assert target["image_id"] == 5 and target["orig_size"] == (40, 60)
    assert ds.image_ids == [5] and sorted(ds.coco.getCatIds()) == [3, 11, 20]


@pytest.fixture
def bad_set(tmp_path):
    """A set with one of every kind of bad data, and the expected counts."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    color = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    _write_image(folder / "good.png", color)
    _write_image(folder / "gray.png", color[..., 0])
    _write_image(folder / "rgba.png", np.dstack([color, np.full((40, 60), 128, np.uint8)]))
    _write_image(folder / "empty.png", color)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    images = [_image(1, "good.png"), _image(2, "gray.png"), _image(3, "rgba.png"), _image(4, "empty.png"),
              _image(5, "broken.jpg"), _image(6, "missing.png"), {"id": 7}, _image(1, "good.png")]
    anns = [
        _ann(1, 1, 3, [10, 10, 20, 20]),
        _ann(2, 1, 3, [10, 10, 0, 20]),  # zero width
        _ann(3, 1, 3, [10, 10, 5, -3]),  # negative height
        _ann(4, 1, 3, [100, 100, 10, 10]),  # outside the 60x40 image
        _ann(5, 1, 11, [50, 30, 20, 20]),  # partly outside: clipped to 50,30,60,40
        _ann(6, 1, 99, [1, 1, 5, 5]),  # unknown category
        _ann(7, 1, 3, [1, 1, 5, 5], iscrowd=1),
        _ann(8, 2, 20, [0, 0, 30, 30]),
        _ann(9, 3, 20, [0, 0, 30, 30]),
        _ann(10, 5, 20, [0, 0, 30, 30]),
        _ann(11, 77, 20, [0, 0, 30, 30]),  # unknown image id
        {"id": 12, "image_id": 1, "category_id": [3], "bbox": [1, 1, 5, 5]},  # category of the wrong type
        _ann(13, 1, 3, [1, 2, "3", 4]),  # box of the wrong type
    ]
    path = _write_json(tmp_path / "bad.json", images, anns, CATS)
    expected = {"image_missing": 1, "image_malformed": 2, "image_empty": 1, "ann_malformed": 2,
                "ann_unknown_image": 1, "ann_unknown_category": 1, "ann_crowd": 1, "ann_degenerate": 2,
                "ann_outside": 1, "ann_clipped": 1}
    return folder, path, expected


def test_bad_data_is_counted_and_reported_once(bad_set):
    folder, path, expected = bad_set
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(folder, path)
    assert [w.category for w in caught] == [DatasetWarning]
    assert {k: v for k, v in ds.counts.items() if v} == expected
    report = ds.report()
    assert "1 images whose file is missing" in report and "1 iscrowd annotations" in report
    assert "2 boxes with zero, negative or non-finite size" in report and "1 boxes clipped" in report
    assert ds.image_ids == [1, 2, 3, 4, 5]
    _, target = ds[0]
    np.testing.assert_array_equal(target["boxes"], [[10, 10, 30, 30], [50, 30, 60, 40]])
    assert target["labels"].tolist() == [0, 1]
    gray, _ = ds[1]
    rgba, _ = ds[2]
    assert gray.shape == rgba.shape == (40, 60, 3)
    assert (gray[..., 0] == gray[..., 1]).all()
    assert ds[3][1]["boxes"].shape == (0, 4) and ds[3][1]["labels"].shape == (0,)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):  # the broken file: the next readable sample instead, one warning in all
            _, target = ds[4]
            assert target["image_id"] == 1
    assert [w.category for w in caught] == [DatasetWarning]
    assert ds.counts["image_unreadable"] == 1 and ds.counts["image_grayscale"] == 1
    assert ds.counts["image_alpha"] == 1
    assert "could not be decoded" in ds.report()


def test_clean_set_gives_no_warning_and_non_ascii_paths_work(tmp_path):
    folder = tmp_path / "bilder ü 画像"
    folder.mkdir()
    _write_image(folder / "straße.png", np.zeros((40, 60, 3), np.uint8))
    path = _write_json(folder / "ann ü.json", [_image(1, "straße.png")], [_ann(1, 1, 3, [1, 1, 5, 5])], CATS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = CocoDetection(folder, path)
    assert ds[0][0].shape == (40, 60, 3)


def test_unreadable_first_images_are_dropped_at_construction(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8garbage")
    _write_image(tmp_path / "c.png", np.zeros((40, 60, 3), np.uint8))
    images = [_image(1, "a.jpg"), _image(2, "b.jpg"), _image(3, "c.png")]
    anns = [_ann(i, i, 3, [1, 1, 5, 5]) for i in (1, 2, 3)]
    with pytest.warns(DatasetWarning, match="2 images whose file could not be decoded"):
        ds = CocoDetection(tmp_path, _write_json(tmp_path / "a.json", images, anns, CATS))
    assert ds.image_ids == [3]


def test_no_usable_image_is_a_clear_error(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"junk")
    images = [_image(1, "missing.png"), _image(2, "broken.jpg")]
    anns = [_ann(1, 1, 3, [1, 1, 5, 5]), _ann(2, 2, 3, [1, 1, 5, 5])]
    with pytest.raises(ConfigError, match="no usable image") as info:
        CocoDetection(tmp_path, _write_json(tmp_path / "a.json", images, anns, CATS))
    assert "1 images whose file is missing" in str(info.value)
    assert "1 images whose file could not be decoded" in str(info.value)


def test_no_usable_box_is_a_clear_error(tmp_path):
    _write_image(tmp_path / "x.png", np.zeros((40, 60, 3), np.uint8))
    anns = [_ann(1, 1, 99, [1, 1, 5, 5]), _ann(2, 1, 3, [1, 1, 0, 0])]
    with pytest.raises(DeimEdgeError, match="has a usable box"):
        CocoDetection(tmp_path, _write_json(tmp_path / "a.json", [_image(1, "x.png")], anns, CATS))


@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "is an object with"),
    ('{"images": [], "annotations": []}', "no 'categories' list"),
    ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list, found dict"),
    ('{"images": [], "annotations": [], "categories": []}', "'categories' is empty"),
    ('{"images": [], "annotations": [], "categories": [{"name": "x"}]}', "integer 'id'"),
    ("{not json", "not valid JSON"),
])
def test_malformed_json_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "a.json").write_text(content)
    with pytest.raises(ConfigError, match=message):
        CocoDetection(tmp_path, tmp_path / "a.json")


def test_missing_json_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        CocoDetection(tmp_path, tmp_path / "none.json")


def test_synthetic_boxes_are_exact(tmp_path):
    paths = make_synthetic_coco(tmp_path, num_images=6, image_size=(96, 128), num_classes=6, seed=3,
                                split_val=0.5, image_format="png")
    data = json.loads(paths.train_json.read_text())
    image_entry = data["images"][0]
    index = image_entry["id"] - 1  # image ids are index + 1
    rng = np.random.default_rng([3, index])
    image, boxes, labels, instances = draw_scene(rng, 96, 128, 6)
    stored = cv2.imread(str(paths.train_images / image_entry["file_name"]))[..., ::-1]
    np.testing.assert_array_equal(stored, image)
    anns = [a for a in data["annotations"] if a["image_id"] == image_entry["id"]]
    assert len(anns) == len(boxes) > 0
    for k, (ann, box, label) in enumerate(zip(anns, boxes, labels)):
        x1, y1, x2, y2 = box.astype(int)
        assert ann["bbox"] == [x1, y1, x2 - x1, y2 - y1] and ann["category_id"] == CATEGORY_IDS[label]
        mine = instances == k + 1
        assert mine[y1:y2, x1:x2].sum() == mine.sum() == ann["area"]  # every pixel inside the box
        for edge in (mine[y1, x1:x2], mine[y2 - 1, x1:x2], mine[y1:y2, x1], mine[y1:y2, x2 - 1]):
            assert edge.any()  # and each edge row/column touches the shape: the box is tight
        colors = image[mine]
        assert (colors == colors[0]).all()  # one flat colour per shape


def test_synthetic_set_is_deterministic_and_loads(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", num_images=20, size_range=(64, 160), seed=7)
    b = make_synthetic_coco(tmp_path / "b", num_images=20, size_range=(64, 160), seed=7)
    c = make_synthetic_coco(tmp_path / "c", num_images=20, size_range=(64, 160), seed=8)
    assert a.train_json.read_bytes() == b.train_json.read_bytes() != c.train_json.read_bytes()
    assert a.val_json.read_bytes() == b.val_json.read_bytes()
    files = sorted(p.name for p in a.train_images.iterdir())
    assert len(files) == 16 and len(list(a.val_images.iterdir())) == 4
    assert all((a.train_images / f).read_bytes() == (b.train_images / f).read_bytes() for f in files)
    assert not list(tmp_path.rglob("*.tmp*"))

    from faster_coco_eval import COCO
    coco = COCO(str(a.val_json))
    assert coco.getCatIds() == list(CATEGORY_IDS[:4]) and len(coco.getImgIds()) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = CocoDetection(a.train_images, a.train_json)
    assert ds.class_names == SHAPES[:4] and ds.category_ids == CATEGORY_IDS[:4] and len(ds) == 16
    for i in range(len(ds)):
        image, target = ds[i]
        h, w = target["orig_size"]
        assert image.shape == (h, w, 3) and 64 <= h <= 160 and 64 <= w <= 160
        assert len(target["boxes"]) > 0 and target["labels"].max() < 4
        assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
        assert (target["boxes"][:, 2] <= w).all() and (target["boxes"][:, 3] <= h).all()


def test_synthetic_rejects_bad_options(tmp_path):
    with pytest.raises(ConfigError, match="num_classes must be"):
        make_synthetic_coco(tmp_path, num_images=2, num_classes=7)
    with pytest.raises(ConfigError, match="image_format"):
        make_synthetic_coco(tmp_path, num_images=2, image_format="gif")
