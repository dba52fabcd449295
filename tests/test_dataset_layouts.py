"""Datasets in COCO, Pascal VOC and YOLO layout read as the same COCO dicts; the tiler's grid, border cuts and CLI."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from deim_edge.errors import ConfigError
from deim_edge.training.data.layouts import Split, read_dataset, write_coco_layout
from deim_edge.training.data.tiles import cut_boxes, tile_dataset, tile_starts

# two images per split; boxes as (class, x1, y1, x2, y2) in pixels
W, H = 64, 48
BOXES = {"a": [("cat", 4, 6, 30, 40)], "b": [("dog", 10, 10, 20, 30), ("cat", 40, 2, 60, 22)]}


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((H, W, 3), 128, np.uint8))


def _voc_xml(name: str, image: str) -> str:
    objects = "".join(f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                      f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for c, x1, y1, x2, y2 in BOXES[name])
    hard = "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax>" \
           "<ymax>3</ymax></bndbox></object>"
    return f"<annotation><filename>{image}</filename><size><width>{W}</width><height>{H}</height></size>" \
           f"{objects}{hard}</annotation>"


def make_voc(root: Path) -> Path:
    for name in BOXES:
        _image(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{name}.xml").write_text(_voc_xml(name, f"{name}.jpg"))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")
    return root


def make_yolo(root: Path, names=("cat", "dog")) -> Path:
    for split in ("train", "val"):
        for name in BOXES:
            _image(root / "images" / split / f"{name}.png")
            lines = [f"{names.index(c)} {(x1 + x2) / 2 / W} {(y1 + y2) / 2 / H} {(x2 - x1) / W} {(y2 - y1) / H}"
                     for c, x1, y1, x2, y2 in BOXES[name]]
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{name}.txt").write_text("\n".join(lines))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {list(names)}\n")
    return root


def _boxes(split: Split) -> dict[str, list]:
    """{image stem: sorted [(class name, x1, y1, x2, y2)]} of a split."""
    names = {c["id"]: c["name"] for c in split.coco["categories"]}
    files = {e["id"]: Path(e["file_name"]).stem for e in split.coco["images"]}
    out = {stem: [] for stem in files.values()}
    for a in split.coco["annotations"]:
        x, y, w, h = a["bbox"]
        out[files[a["image_id"]]].append((names[a["category_id"]], *np.round([x, y, x + w, y + h], 4)))
    return {k: sorted(v) for k, v in out.items()}


def test_voc_and_yolo_read_as_the_same_boxes(tmp_path):
    voc_layout, voc = read_dataset(make_voc(tmp_path / "voc"))
    yolo_layout, yolo = read_dataset(make_yolo(tmp_path / "yolo"))
    assert (voc_layout, yolo_layout) == ("voc", "yolo")
    assert set(voc) == set(yolo) == {"train", "val"}
    expected = {k: sorted((c, *map(float, b)) for c, *b in v) for k, v in BOXES.items()}
    assert _boxes(voc["train"]) == _boxes(yolo["train"]) == expected  # the difficult box is skipped
    assert voc["train"].coco["info"]["difficult_skipped"] == 2
    assert voc["train"].class_names == yolo["val"].class_names == ["cat", "dog"]
    assert all(e["width"] == W and e["height"] == H for e in yolo["train"].coco["images"])


def test_voc_with_xml_beside_the_images_and_coco_round_trip(tmp_path):
    root = tmp_path / "flat"
    for name in BOXES:
        _image(root / f"{name}.png")
        (root / f"{name}.xml").write_text(_voc_xml(name, f"{name}.png"))
    layout, splits = read_dataset(root)
    assert layout == "voc" and list(splits) == ["train"]
    paths = write_coco_layout(splits, tmp_path / "coco" / "annotations")
    (tmp_path / "coco" / "train").symlink_to(root)
    layout, again = read_dataset(tmp_path / "coco")
    assert layout == "coco" and _boxes(again["train"]) == _boxes(splits["train"])
    assert Path(paths["train"][1]).name == "instances_train.json"


def test_yolo_with_classes_txt_and_no_yaml(tmp_path):
    root = make_yolo(tmp_path / "y")
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("cat\ndog\n")
    assert read_dataset(root)[1]["train"].class_names == ["cat", "dog"]


@pytest.mark.parametrize("breakage, message", [
    ("class", "class 5 is not among the 2 named classes"),
    ("fields", "expected 'class cx cy w h'"),
    ("names", "needs its class names"),
])
def test_yolo_errors_name_the_file_and_line(tmp_path, breakage, message):
    root = make_yolo(tmp_path / "y")
    label = root / "labels" / "train" / "a.txt"
    if breakage == "class":
        label.write_text("5 0.5 0.5 0.1 0.1\n")
    elif breakage == "fields":
        label.write_text("0 0.5 half 0.1 0.1\n")
    else:
        (root / "data.yaml").write_text("train: images/train\n")
    with pytest.raises(ConfigError, match=message):
        read_dataset(root)


def test_voc_errors(tmp_path):
    root = make_voc(tmp_path / "voc")
    (root / "Annotations" / "a.xml").write_text("<annotation><filename>a.jpg")
    with pytest.raises(ConfigError, match="a.xml is not valid XML"):
        read_dataset(root)
    root = make_voc(tmp_path / "voc2")
    (root / "JPEGImages" / "b.jpg").unlink()
    with pytest.raises(ConfigError, match="its image 'b.jpg' is not in"):
        read_dataset(root)
    with pytest.raises(ConfigError, match="in no layout"):
        read_dataset(tmp_path)


def test_tile_starts_cover_the_side_without_padding():
    assert tile_starts(100, 320, 0.2) == [0]
    assert tile_starts(1000, 320, 0.0) == [0, 320, 640, 680]
    starts = tile_starts(2299, 320, 0.25)
    assert starts[0] == 0 and starts[-1] == 2299 - 320 and all(b - a <= 240 for a, b in zip(starts, starts[1:]))


def test_cut_boxes_keeps_mostly_inside_and_masks_the_rest():
    boxes = np.array([[10, 10, 20, 20], [90, 10, 110, 20], [95, 10, 130, 20], [200, 0, 210, 5]], np.float32)
    kept, masked = cut_boxes(boxes, 0, 0, 100, 100, min_visible=0.5)
    assert kept.tolist() == [True, True, False, False]
    assert masked.tolist() == [False, False, True, False]  # the last one is not in the tile at all


def test_tiler_writes_coco_tiles_and_fills_cut_objects(tmp_path):
    image = np.zeros((100, 150, 3), np.uint8)
    image[:, :, 1] = 200
    image[40:60, 70:90] = 255  # an object across the tile border at x = 80
    cv2.imwrite(str(tmp_path / "big.png"), image)
    coco = {"images": [{"id": 1, "file_name": "big.png", "width": 150, "height": 100}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [70, 40, 20, 20]},
                            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]}],
            "categories": [{"id": 1, "name": "thing"}]}
    report = tile_dataset({"train": Split("train", tmp_path, coco)}, tmp_path / "tiles", size=80, overlap=0.0,
                          min_visible=0.6, keep_empty=True, progress=False)
    assert report["train"]["tiles"] == 4  # x at 0 and 70, y at 0 and 20
    out = json.loads((tmp_path / "tiles" / "annotations" / "instances_train.json").read_text())
    tiles = {(e["x"], e["y"]): e for e in out["images"]}
    by_tile = {}
    for a in out["annotations"]:
        by_tile.setdefault(a["image_id"], []).append(a["bbox"])
    assert by_tile[tiles[70, 0]["id"]] == [[0.0, 40.0, 20.0, 20.0]]  # wholly inside the tile at x = 70
    assert tiles[0, 0]["id"] in by_tile and [70.0, 40.0, 10.0, 20.0] not in by_tile[tiles[0, 0]["id"]]
    left = cv2.imread(str(tmp_path / "tiles" / "train" / tiles[0, 0]["file_name"]))
    assert (left[40:60, 70:80] != 255).all()  # half of it showed at the border: filled, not left unlabelled
    with pytest.raises(ConfigError, match="is not empty"):
        tile_dataset({"train": Split("train", tmp_path, coco)}, tmp_path / "tiles", size=80)


def test_tile_cli(tmp_path):
    root = make_yolo(tmp_path / "y")
    result = subprocess.run([sys.executable, "-m", "deim_edge", "tile", str(root), "--out", str(tmp_path / "t"),
                             "--size", "32", "--overlap", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train:" in result.stdout and "COCO layout" in result.stdout
    layout, splits = read_dataset(tmp_path / "t")
    assert layout == "coco" and set(splits) == {"train", "val"} and splits["train"].coco["annotations"]


def test_the_dataset_readers_and_the_tiler_need_no_torch():
    code = ("import sys, deim_edge.training.data.layouts, deim_edge.training.data.tiles; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
