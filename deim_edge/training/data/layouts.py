"""Detection datasets in the three layouts people have -- COCO, Pascal VOC and YOLO -- read as COCO dicts.

`read_dataset(folder)` finds the layout and returns one `Split` per split it holds (train, val, ...), each an
image folder and a COCO dict whose `file_name`s are relative to it. All splits share one category list
(ids 1..C in class order), so a validation split always matches its training split.

  COCO  annotations/instances_<split>.json beside <split>/ image folders (instances_train2017.json with
        train2017/ works too).
  VOC   Annotations/*.xml with JPEGImages/, split by ImageSets/Main/<split>.txt (all in 'train' without
        them); or <split>/ folders with each image's .xml beside it; or .xml files beside their images in
        the folder itself. Classes: the <name>s found, sorted. Box corners are taken as pixel coordinates.
  YOLO  data.yaml (ultralytics: 'path', 'train', 'val', 'names') or images/<split>/ + labels/<split>/ with
        classes.txt; one line 'class cx cy w h' (normalized) per box, in labels/ mirroring images/.
"""
from __future__ import annotations

import dataclasses
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2

from ...errors import ConfigError
from ...fileio import atomic_path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_NAMES = ("train", "val", "valid", "test")


@dataclasses.dataclass
class Split:
    """One split: images under `images`, annotations as a COCO dict (file_name relative to `images`)."""

    name: str
    images: Path
    coco: dict
    source: Path | None = None  # the COCO JSON file it was read from (COCO layout only)

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in sorted(self.coco["categories"], key=lambda c: c["id"])]


def read_dataset(folder: str | os.PathLike) -> tuple[str, dict[str, Split]]:
    """(layout name, {split name: Split}) of a dataset folder in COCO, VOC or YOLO layout."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"dataset folder {root} does not exist")
    if (root / "annotations").is_dir() and any((root / "annotations").glob("instances_*.json")):
        return "coco", _coco_splits(root)
    if (root / "data.yaml").is_file() or (root / "labels").is_dir():
        return "yolo", _yolo_splits(root)
    if (root / "Annotations").is_dir() or any(root.glob("*.xml")) or any(
            (root / s).is_dir() and any((root / s).glob("*.xml")) for s in SPLIT_NAMES):
        return "voc", _voc_splits(root)
    raise ConfigError(f"{root} is in no layout deim-edge reads: expected annotations/instances_<split>.json (COCO), "
                      "Annotations/*.xml or .xml files beside the images (Pascal VOC), or data.yaml / "
                      "images/ + labels/ (YOLO)")


def write_coco_layout(splits: dict[str, Split], out: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Each split's COCO dict written to out/instances_<split>.json; returns {split: (images dir, json path)}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, split in splits.items():
        path = out / f"instances_{name}.json"
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(split.coco))
        paths[name] = (str(split.images), str(path))
    return paths


def _split_name(name: str) -> str:
    return "val" if name == "valid" else name


# --- COCO ------------------------------------------------------------------------------------------------

def _coco_splits(root: Path) -> dict[str, Split]:
    splits = {}
    for path in sorted((root / "annotations").glob("instances_*.json")):
        name = path.stem[len("instances_"):]
        images = root / name
        if not images.is_dir():
            continue
        try:
            coco = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc})") from None
        key = _split_name(name[:-4] if name[-4:].isdigit() else name)  # train2017 -> train
        splits[key] = Split(key, images, coco, path)
    if "train" not in splits:
        raise ConfigError(f"{root}/annotations has no instances_train.json with a train/ image folder beside it")
    return splits


# --- Pascal VOC ------------------------------------------------------------------------------------------

def _voc_object(obj: ET.Element, xml_path: Path) -> tuple[str, list[float]] | None:
    """(class name, [x1, y1, x2, y2]) of an <object>, None when it has no name or box."""
    name = (obj.findtext("name") or "").strip()
    box = obj.find("bndbox")
    if not name or box is None:
        return None
    try:
        corners = [float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
    except (TypeError, ValueError):
        raise ConfigError(f"{xml_path}: an <object> '{name}' has a <bndbox> without numeric xmin/ymin/xmax/ymax")
    return name, corners


def _voc_file(xml_path: Path, image_dirs: list[Path]) -> tuple[Path, list[tuple[str, list[float]]], int,
                                                                 tuple[int, int] | None]:
    """(image path, objects, difficult objects skipped, (h, w) from <size> or None) of one VOC XML file."""
    try:
        tree = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise ConfigError(f"{xml_path} is not valid XML ({exc})") from None
    filename = (tree.findtext("filename") or "").strip()
    candidates = [d / filename for d in image_dirs if filename] + [
        xml_path.with_suffix(s) for s in IMAGE_SUFFIXES] + [d / (xml_path.stem + s) for d in image_dirs
                                                            for s in IMAGE_SUFFIXES]
    image = next((p for p in candidates if p.is_file()), None)
    if image is None:
        raise ConfigError(f"{xml_path}: its image '{filename or xml_path.stem}' is not in "
                          f"{', '.join(str(d) for d in image_dirs)}")
    try:
        size = (int(tree.findtext("size/height")), int(tree.findtext("size/width")))
    except (TypeError, ValueError):
        size = None
    size = size if size and min(size) > 0 else None
    objects, difficult = [], 0
    for obj in tree.findall("object"):
        if (obj.findtext("difficult") or "0").strip() == "1":
            difficult += 1
            continue
        parsed = _voc_object(obj, xml_path)
        if parsed is not None:
            objects.append(parsed)
    return image, objects, difficult, size


def _voc_splits(root: Path) -> dict[str, Split]:
    groups: dict[str, tuple[list[Path], list[Path]]] = {}  # split -> (xml files, image folders)
    if (root / "Annotations").is_dir():
        xmls = sorted((root / "Annotations").glob("*.xml"))
        image_dirs = [d for d in (root / "JPEGImages", root / "images", root / "Annotations") if d.is_dir()]
        sets = root / "ImageSets" / "Main"
        lists = {p.stem: p for p in sets.glob("*.txt") if p.stem in SPLIT_NAMES} if sets.is_dir() else {}
        if lists:
            by_stem = {p.stem: p for p in xmls}
            for name, listing in lists.items():
                stems = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
                missing = [s for s in stems if s not in by_stem]
                if missing:
                    raise ConfigError(f"{listing} names {len(missing)} images without an XML in Annotations/ "
                                      f"(first: {missing[0]})")
                groups[_split_name(name)] = ([by_stem[s] for s in stems], image_dirs)
        else:
            groups["train"] = (xmls, image_dirs)
    else:
        for name in SPLIT_NAMES:
            if (root / name).is_dir() and any((root / name).glob("*.xml")):
                groups[_split_name(name)] = (sorted((root / name).glob("*.xml")), [root / name])
        if not groups:
            groups["train"] = (sorted(root.glob("*.xml")), [root])
    parsed = {name: [_voc_file(x, dirs) for x in xmls] for name, (xmls, dirs) in groups.items()}
    classes = sorted({cls for files in parsed.values() for _, objects, _, _ in files for cls, _ in objects})
    if not classes:
        raise ConfigError(f"{root}: no <object> with a <name> and <bndbox> in any XML file")
    splits = {}
    for name, files in parsed.items():
        image_root = Path(os.path.commonpath([str(image.parent) for image, *_ in files])) if files else root
        entries = [(image.relative_to(image_root).as_posix(), objects, size or _image_size(image))
                   for image, objects, _, size in files]  # the image is decoded only when <size> is missing
        coco = _coco_dict(entries, classes)
        coco["info"] = {"difficult_skipped": sum(d for _, _, d, _ in files)}
        splits[name] = Split(name, image_root, coco)
    return splits


# --- YOLO ------------------------------------------------------------------------------------------------

def _yolo_names(root: Path) -> tuple[list[str], dict]:
    """Class names and the data.yaml contents ({} without one)."""
    config: dict = {}
    if (root / "data.yaml").is_file():
        import yaml

        try:
            config = yaml.safe_load((root / "data.yaml").read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{root / 'data.yaml'} is not valid YAML ({exc})") from None
        names = config.get("names")
        if isinstance(names, dict):
            names = [names[k] for k in sorted(names)]
        if isinstance(names, list) and names:
            return [str(n) for n in names], config
    for candidate in ("classes.txt", "obj.names", "classes.names"):
        if (root / candidate).is_file():
            names = [line.strip() for line in (root / candidate).read_text().splitlines() if line.strip()]
            if names:
                return names, config
    raise ConfigError(f"{root}: a YOLO dataset needs its class names: data.yaml with 'names', or classes.txt")


def _labels_for(image: Path) -> Path:
    """The label file of an image: the last 'images' folder in its path replaced by 'labels', suffix .txt."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _yolo_boxes(label_file: Path, width: int, height: int, num_classes: int) -> list[tuple[int, list[float]]]:
    """(class index, [x1, y1, x2, y2] pixels) per line of a YOLO label file (none when the file is missing)."""
    if not label_file.is_file():
        return []
    boxes = []
    for number, line in enumerate(label_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            cls, cx, cy, w, h = int(fields[0]), *(float(v) for v in fields[1:5])
        except (ValueError, TypeError):
            raise ConfigError(f"{label_file}:{number}: expected 'class cx cy w h', found {line.strip()!r}") from None
        if len(fields) != 5:
            raise ConfigError(f"{label_file}:{number}: expected 5 fields 'class cx cy w h' (segmentation "
                              f"polygons are not read), found {len(fields)}")
        if not 0 <= cls < num_classes:
            raise ConfigError(f"{label_file}:{number}: class {cls} is not among the {num_classes} named classes")
        boxes.append((cls, [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                            (cy + h / 2) * height]))
    return boxes


def _yolo_splits(root: Path) -> dict[str, Split]:
    names, config = _yolo_names(root)
    path = config.get("path")
    base = root if not path else Path(str(path)) if Path(str(path)).is_absolute() else root / str(path)
    folders = {}
    for name in SPLIT_NAMES:
        if isinstance(config.get(name), str):
            folders[_split_name(name)] = base / config[name]
        elif (root / "images" / name).is_dir():
            folders[_split_name(name)] = root / "images" / name
    if not folders and (root / "images").is_dir():
        folders["train"] = root / "images"
    if "train" not in folders:
        raise ConfigError(f"{root}: no training images found (data.yaml 'train', or images/train/)")
    splits = {}
    for name, folder in folders.items():
        if not folder.is_dir():
            raise ConfigError(f"{root}: the {name} images folder {folder} does not exist")
        entries = []
        for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            size = _image_size(image)
            if size is None:
                continue  # unreadable: CocoDetection counts missing files; skipping keeps the JSON honest
            h, w = size
            boxes = _yolo_boxes(_labels_for(image), w, h, len(names))
            entries.append((image.relative_to(folder).as_posix(), [(names[c], b) for c, b in boxes], (h, w)))
        splits[name] = Split(name, folder, _coco_dict(entries, names))
    return splits


# --- shared ----------------------------------------------------------------------------------------------

def _image_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file, None when it cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return None if image is None else image.shape[:2]


def _coco_dict(entries: list, classes: list[str]) -> dict:
    """A COCO dict from (file_name, [(class name, x1y1x2y2)], (h, w) or None) entries; category ids 1..C."""
    category = {name: i + 1 for i, name in enumerate(classes)}
    images, annotations = [], []
    for image_id, entry in enumerate(entries, 1):
        file_name, objects, size = entry
        record = {"id": image_id, "file_name": file_name}
        if size is not None:
            record["height"], record["width"] = int(size[0]), int(size[1])
        images.append(record)
        for cls, (x1, y1, x2, y2) in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category[cls],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i, "name": n} for n, i in category.items()]}
