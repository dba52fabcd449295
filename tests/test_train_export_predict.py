"""The walk a user makes with their own data, on the command line with no extra flags: train on a 1-class and a
3-class dataset in VOC, YOLO and COCO layout, export best.pth, predict with the artifact; and one trained model
exported to every target this machine can build, each artifact run (where its runtime runs here)."""
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from deim_edge.training.data import make_synthetic_coco

SIZE = 160  # Atto's 100 queries need at least 160 px
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CLASSES = {1: ["square"], 3: ["circle", "square", "triangle"]}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The synthetic shapes set in COCO layout (4 classes), the source of every layout below."""
    root = tmp_path_factory.mktemp("shapes")
    make_synthetic_coco(root, num_images=12, image_size=SIZE, seed=3, split_val=0.25)
    return root


def _split(shapes: Path, split: str, classes: list[str]) -> tuple[list[dict], dict[int, list]]:
    """(image entries, {image id: [(class name, x1, y1, x2, y2)]}) of a split, keeping only `classes`."""
    coco = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    boxes = {e["id"]: [] for e in coco["images"]}
    for a in coco["annotations"]:
        if names[a["category_id"]] in classes:
            x, y, w, h = a["bbox"]
            boxes[a["image_id"]].append((names[a["category_id"]], x, y, x + w, y + h))
    return coco["images"], boxes


def write_layout(shapes: Path, root: Path, layout: str, classes: list[str]) -> Path:
    """The shapes set, only `classes`, written in `layout` as its tools would write it."""
    for split in ("train", "val"):
        images, boxes = _split(shapes, split, classes)
        if layout == "coco":
            (root / "annotations").mkdir(parents=True, exist_ok=True)
            shutil.copytree(shapes / split, root / split)
            ann = [{"id": i + 1, "image_id": image_id, "category_id": classes.index(c) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                   for i, (image_id, (c, x1, y1, x2, y2)) in
                   enumerate((k, b) for k, bs in boxes.items() for b in bs)]
            cats = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
            (root / "annotations" / f"instances_{split}.json").write_text(
                json.dumps({"images": images, "annotations": ann, "categories": cats}))
        elif layout == "voc":
            for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
                (root / d).mkdir(parents=True, exist_ok=True)
            for e in images:
                shutil.copy(shapes / split / e["file_name"], root / "JPEGImages")
                objects = "".join(f"<object><name>{c}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}"
                                  f"</xmax><ymax>{y2}</ymax></bndbox></object>" for c, x1, y1, x2, y2 in boxes[e["id"]])
                (root / "Annotations" / f"{Path(e['file_name']).stem}.xml").write_text(
                    f"<annotation><filename>{e['file_name']}</filename>{objects}</annotation>")
            (root / "ImageSets" / "Main" / f"{split}.txt").write_text(
                "".join(f"{Path(e['file_name']).stem}\n" for e in images))
        else:
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            for e in images:
                shutil.copy(shapes / split / e["file_name"], root / "images" / split)
                w, h = e["width"], e["height"]
                (root / "labels" / split / f"{Path(e['file_name']).stem}.txt").write_text("".join(
                    f"{classes.index(c)} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n"
                    for c, x1, y1, x2, y2 in boxes[e["id"]]))
            (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {classes}\n")
    return root


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "deim_edge", *args], capture_output=True, text=True, env=ENV,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def train(data: Path, out: Path) -> Path:
    cli("train", "--variant", "deimv2-atto", "--data", str(data), "--imgsz", str(SIZE), "--epochs", "1", "--batch", "4",
        "--workers", "0", "--out", str(out), "--no-progress")
    return out / "best.pth"


@pytest.mark.parametrize("layout", ["coco", "voc", "yolo"])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_train_export_predict_with_no_extra_flags(shapes, tmp_path, layout, num_classes):
    pytest.importorskip("onnxruntime")
    classes = CLASSES[num_classes]
    data = write_layout(shapes, tmp_path / layout, layout, classes)
    best = train(data, tmp_path / "run")
    assert (tmp_path / "run" / "dataset.txt").read_text().startswith("dataset check")
    cli("export", "--checkpoint", str(best), "--target", "onnx", "--out", str(tmp_path / "model.onnx"))
    image = next(p for p in sorted(data.rglob("*.jpg")))
    result = cli("predict", str(tmp_path / "model.onnx"), str(image), "--conf", "0")
    records = json.loads(result.stdout)  # {source: [{"box", "score", "label", "name"}, ...]}
    found = {d["name"] for detections in records.values() for d in detections}
    assert found and found <= set(classes)


# every target whose exporter runs here, and whether its runtime runs here too
TARGETS = ["onnx", "onnx-int8", "openvino", "openvino-fp16", "openvino-int8", "tflite", "tflite-fp16", "tflite-int8",
           "coreml", "coreml-int8"]


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    root = tmp_path_factory.mktemp("walk")
    data = write_layout(shapes, root / "yolo", "yolo", CLASSES[3])
    return data, train(data, root / "run")


@pytest.mark.parametrize("target", TARGETS)
def test_a_trained_model_reaches_every_target(trained, tmp_path, target):
    from deim_edge import Detector
    from deim_edge.errors import MissingDependencyError
    from deim_edge.export import export
    from deim_edge.export.registry import get_target

    data, best = trained
    try:
        get_target(target).require()
    except MissingDependencyError as e:
        pytest.skip(str(e))
    int8 = {"calib_data": str(data / "images" / "train"), "calib_size": 8} if target.endswith("int8") else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(best, target, out=tmp_path, **int8)
    if target.startswith("coreml"):
        pytest.skip(f"{path.name} written; Core ML runs only on macOS")
    detector = Detector(path, conf=0.0)
    assert detector.metadata.class_names == tuple(CLASSES[3]) and detector.metadata.input_size == (SIZE, SIZE)
    found = detector(str(next((data / "images" / "val").iterdir())))
    assert len(found) and set(found.class_names) <= set(CLASSES[3])
