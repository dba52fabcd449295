"""The YOLO11n side of benchmarks/small_data.py: ultralytics' own trainer, from scratch, with its `time=` budget.

Runs in its own environment (ultralytics needs torchvision; never in deim-edge's pins or CI):
    python3 -m venv yolo-venv && yolo-venv/bin/pip install torch==2.14.1 torchvision==0.29.1 ultralytics
    CORE=1 yolo-venv/bin/python benchmarks/small_data_yolo.py --data runs/forest --minutes 20 --out runs/forest-yolo

Converts the prepared COCO-layout tiles to ultralytics' layout (labels beside links to the images), trains
`yolo11n.yaml` (no pretrained weights) at 320 on one core with ultralytics' defaults otherwise, then writes
best.pt's held-out detections (conf 0.001, at most 100 per tile) as COCO results to OUT/detections.json and
OUT/run.json; `small_data.py table` scores them with deim-edge's evaluator.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")


def to_yolo_layout(data: Path, out: Path) -> Path:
    """data (COCO layout, one class) as out/images/{train,val} links + out/labels/{train,val}/*.txt; data.yaml."""
    for split in ("train", "val"):
        coco = json.loads((data / "annotations" / f"instances_{split}.json").read_text())
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        boxes: dict[int, list] = {}
        for ann in coco["annotations"]:
            boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
        for entry in coco["images"]:
            link = out / "images" / split / entry["file_name"]
            if not link.exists():
                link.symlink_to((data / split / entry["file_name"]).resolve())
            w, h = entry["width"], entry["height"]
            lines = [f"0 {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
                     for x, y, bw, bh in boxes.get(entry["id"], [])]
            (out / "labels" / split / Path(entry["file_name"]).with_suffix(".txt").name).write_text("\n".join(lines))
    yaml = out / "data.yaml"
    yaml.write_text(f"path: {out.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: Tree\n")
    return yaml


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/forest"))
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--model", default="yolo11n.yaml")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    core = os.environ.get("CORE", "1")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(core)})

    import torch
    from ultralytics import YOLO

    torch.set_num_threads(1)
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    yaml = to_yolo_layout(args.data, out / "dataset")
    start = time.perf_counter()
    model = YOLO(args.model)
    model.train(data=str(yaml), imgsz=args.imgsz, time=args.minutes / 60, epochs=1000, device="cpu", workers=0,
                pretrained=False, amp=False, plots=False, project=str(out), name="train", exist_ok=True,
                verbose=False)
    minutes = (time.perf_counter() - start) / 60
    best = YOLO(str(out / "train" / "weights" / "best.pt"))
    coco = json.loads((args.data / "annotations" / "instances_val.json").read_text())
    results = []
    for entry in coco["images"]:
        r = best.predict(str(args.data / "val" / entry["file_name"]), imgsz=args.imgsz, conf=0.001, max_det=100,
                         device="cpu", verbose=False)[0]
        for (x1, y1, x2, y2), score in zip(r.boxes.xyxy.tolist(), r.boxes.conf.tolist()):
            results.append({"image_id": entry["id"], "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "score": score})
    (out / "detections.json").write_text(json.dumps(results))
    epochs = sum(1 for _ in open(out / "train" / "results.csv")) - 1
    (out / "run.json").write_text(json.dumps({"name": f"YOLO11n ({args.model})", "epochs": epochs,
                                              "minutes": round(minutes, 1)}))
    print(f"done: {epochs} epochs in {minutes:.1f} min; detections in {out / 'detections.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
