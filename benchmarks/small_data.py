"""DEIMv2 against YOLO11n on a small real dataset, from scratch, for equal wall time on one core each.

The data: the aerial tree-crown photographs with Pascal VOC boxes that ship inside the `deepforest` wheel
(PyPI, deepforest 2.1.0, its deepforest/data folder; NEON imagery, ~1000 boxes), one class 'Tree'.
  train     the top 1920 rows of 2019_YELL_2_528000_4978000_image_crop2 (Yellowstone), 320 px tiles
  held-out  the rest of that image (unseen ground), 2019_YELL_2_541000_4977000_image_crop (another place
            at the site), OSBS_029 (Florida) and SOAP_061 (California, Alive/Dead merged into Tree)
Tiles come from `deim_edge.training.data.tiles` (no overlap; boxes cut at a border kept when half is visible).

    python benchmarks/small_data.py prepare --out runs/forest          # download the wheel, tile, COCO layout
    python benchmarks/small_data.py deim --data runs/forest --variant deimv2-atto --minutes 20 --out runs/forest-atto
    /path/to/yolo-venv/bin/python benchmarks/small_data_yolo.py --data runs/forest --minutes 20 --out runs/forest-yolo
    python benchmarks/small_data.py table runs/forest runs/forest-yolo runs/forest-atto ... --png table.png

`deim` and the YOLO script each pin themselves to one core (taskset when present, and one torch thread);
run them side by side so both share the machine alike. Both pick their best epoch on the held-out split
(ultralytics' best.pt by its fitness, deim-edge's best.pth by AP), and `table` scores every run's
detections (score >= 0.001, at most 100 per tile) with the one evaluator, deim_edge.accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import cv2

WHEEL = "deepforest==2.1.0"
TRAIN_ROWS = 1920  # of the Yellowstone crop2 image: the tiles above train, the band below is held out
TILE = 320


def _download_data(cache: Path) -> Path:
    """deepforest/data of the wheel (pip download, no dependencies), extracted under cache."""
    data = cache / "deepforest" / "data"
    if data.is_dir():
        return data
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d", str(cache), "-q"], check=True)
    wheel = next(cache.glob("deepforest-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extractall(cache, [n for n in z.namelist() if n.startswith("deepforest/data/")])
    return data


def prepare(out: Path, cache: Path) -> None:
    """out/ in COCO layout: train/ and val/ tiles with annotations/instances_{train,val}.json."""
    from deim_edge.training.data.layouts import Split, read_dataset
    from deim_edge.training.data.tiles import tile_dataset

    data = _download_data(cache)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "voc"
        source.mkdir()
        for xml in data.glob("*.xml"):
            shutil.copy(xml, source)
            for image in data.glob(xml.stem + ".*"):
                shutil.copy(image, source)
        _, splits = read_dataset(source)
        coco = splits["train"].coco
        coco["categories"] = [{"id": 1, "name": "Tree"}]
        for ann in coco["annotations"]:
            ann["category_id"] = 1
        train_images, held_images = [], []
        for entry in coco["images"]:
            if not entry["file_name"].startswith("2019_YELL_2_528000"):
                held_images.append(entry)
                continue
            image = cv2.imread(str(source / entry["file_name"]))
            for name, rows, images in (("top", slice(0, TRAIN_ROWS), train_images),
                                       ("bottom", slice(TRAIN_ROWS, None), held_images)):
                band = image[rows]
                path = source / f"{Path(entry['file_name']).stem}_{name}.png"
                cv2.imwrite(str(path), band)
                images.append({"id": 1000 + len(train_images) + len(held_images),
                               "file_name": path.name, "height": band.shape[0],
                               "width": band.shape[1], "offset": rows.start, "of": entry["id"]})
        anns = []
        for entry in train_images + held_images:
            if "of" not in entry:
                continue
            for ann in coco["annotations"]:
                if ann["image_id"] != entry["of"]:
                    continue
                x, y, w, h = ann["bbox"]
                y1, y2 = y - entry["offset"], y + h - entry["offset"]
                if y2 <= 0 or y1 >= entry["height"]:
                    continue
                anns.append({**ann, "id": len(anns) + 1, "image_id": entry["id"], "bbox": [x, y1, w, h]})
        for entry in held_images:
            if "of" not in entry:
                anns += [{**a, "id": len(anns) + 1 + i} for i, a in
                         enumerate(a for a in coco["annotations"] if a["image_id"] == entry["id"])]

        def split(name: str, images: list[dict]) -> Split:
            ids = {e["id"] for e in images}
            return Split(name, source, {"images": images, "annotations": [a for a in anns if a["image_id"] in ids],
                                        "categories": coco["categories"]})

        # a band's boxes cut by the band edge are handled by the tiler as any tile border (the band is its tile)
        report = tile_dataset({"train": split("train", train_images), "val": split("val", held_images)}, out,
                              TILE, overlap=0.0)
    for name, counts in report.items():
        print(f"{name}: {counts['tiles']} tiles, {counts['boxes']} boxes")


def deim(args: argparse.Namespace) -> None:
    """Train a DEIMv2 variant on the prepared data, one core, then write its held-out detections."""
    cmd = [sys.executable, "-m", "deim_edge.train", "--variant", args.variant, "--data", str(args.data),
           "--imgsz", str(TILE), "--time", str(args.minutes), "--workers", "0", "--out", str(args.out),
           "--no-progress", *args.extra]
    start = time.perf_counter()
    _one_core(cmd)
    minutes = (time.perf_counter() - start) / 60
    detections(args.out / "best.pth", args.data, args.out / "detections.json")
    epochs = sum(1 for _ in open(args.out / "log.txt"))
    name = f"{args.variant.removeprefix('deimv2-').capitalize()} (deim-edge{''.join(' ' + a for a in args.extra)})"
    (args.out / "run.json").write_text(json.dumps({"name": name, "epochs": epochs,
                                                   "minutes": round(minutes, 1)}))


def _one_core(cmd: list[str]) -> None:
    """Run cmd on one core (taskset when it exists) with one thread for torch and OpenMP."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    core = os.environ.get("CORE", "0")
    prefix = ["taskset", "-c", core] if shutil.which("taskset") else []
    print(" ".join(prefix + cmd), flush=True)
    subprocess.run(prefix + cmd, env=env, check=True)


def detections(checkpoint: Path, data: Path, out: Path) -> None:
    """COCO-format results (image_id, category_id, bbox, score) of a checkpoint on the held-out tiles."""
    import torch

    from deim_edge import Detector

    torch.set_num_threads(1)
    gt = json.loads((data / "annotations" / "instances_val.json").read_text())
    detector = Detector(str(checkpoint), conf=0.001, max_det=100)
    results = []
    for entry in gt["images"]:
        results += detector(str(data / "val" / entry["file_name"])).to_coco(entry["id"], category_ids=[1])
    out.write_text(json.dumps(results))


SITES = {"Yellowstone, unseen ground": "2019_YELL_2_528000", "Yellowstone, another place": "2019_YELL_2_541000",
         "Florida (OSBS)": "OSBS", "California (SOAP)": "SOAP"}


def score(data: Path, results: Path, source_prefix: str = "") -> dict[str, float]:
    """COCO AP and AP50 of a results file on the held-out tiles (those cut from images whose name starts with
    `source_prefix`), by deim_edge.accuracy's evaluator."""
    import contextlib
    import io

    from deim_edge.accuracy import coco_api

    coco_cls, eval_cls = coco_api()
    full = json.loads((data / "annotations" / "instances_val.json").read_text())
    images = [e for e in full["images"] if e["source"].startswith(source_prefix)]
    ids = {e["id"] for e in images}
    found = [r for r in json.loads(results.read_text()) if r["image_id"] in ids]
    if not found:
        return {"AP": 0.0, "AP50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = coco_cls()
        gt.dataset = {**full, "images": images, "annotations": [a for a in full["annotations"] if a["image_id"] in ids]}
        gt.createIndex()
        e = eval_cls(gt, gt.loadRes(found), "bbox")
        e.evaluate(), e.accumulate(), e.summarize()
    return {"AP": float(e.stats[0]), "AP50": float(e.stats[1])}


def table(data: Path, runs: list[Path], png: Path | None = None) -> None:
    """One markdown row per run folder (its detections.json and run.json): AP and AP50 on all held-out tiles,
    AP50 per site; with `png`, the same as grouped bars."""
    print("| run | AP | AP50 | " + " | ".join(f"AP50 {site}" for site in SITES) + " | epochs | minutes |")
    print("|---" * (5 + len(SITES)) + "|")
    rows = []
    for run in runs:
        metrics = score(data, run / "detections.json")
        sites = [score(data, run / "detections.json", prefix)["AP50"] for prefix in SITES.values()]
        info = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
        name = info.get("name", run.name)
        rows.append((name, [metrics["AP50"], *sites]))
        print(f"| {name} | {metrics['AP']:.3f} | {metrics['AP50']:.3f} | "
              + " | ".join(f"{v:.3f}" for v in sites) + f" | {info.get('epochs', '?')} | {info.get('minutes', '?')} |")
    if png is not None:
        _bars(rows, png)


def _bars(rows: list[tuple[str, list[float]]], png: Path) -> None:
    """AP50 overall and per site, one bar per run in each group."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from deim_edge.fileio import atomic_path

    groups = ["all held-out", *SITES]
    fig = Figure(figsize=(11, 4))
    ax = fig.subplots()
    width = 0.8 / len(rows)
    for k, (name, values) in enumerate(rows):
        ax.bar([g + k * width for g in range(len(groups))], values, width, label=name)
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups, fontsize=8)
    ax.set(ylabel="AP50", title="held-out AP50 after 20 minutes of one CPU core, from scratch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--out", type=Path, default=Path("runs/forest"))
    p.add_argument("--cache", type=Path, default=Path("runs/deepforest-wheel"))
    p = commands.add_parser("deim")
    p.add_argument("--data", type=Path, default=Path("runs/forest"))
    p.add_argument("--variant", default="deimv2-atto")
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("extra", nargs="*", help="more deim_edge.train arguments (after --)")
    p = commands.add_parser("table")
    p.add_argument("data", type=Path)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--png", type=Path, help="also draw the table as bars here")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out, args.cache)
    elif args.command == "deim":
        deim(args)
    else:
        table(args.data, args.runs, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
