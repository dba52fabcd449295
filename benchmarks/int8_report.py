"""INT8 report: every INT8 target of a checkpoint, with the naive quantize-everything baseline next to the
recipe, against the FP32 PyTorch model on the same held-out images; then their speed against the FP32 artifacts,
interleaved in one benchmark run.

    python benchmarks/int8_report.py --checkpoint deim_edge/assets/deimv2-atto-synthetic.pth --out runs/int8-atto
    python benchmarks/int8_report.py --checkpoint runs/learn-pico/pico-synthetic.pth --out runs/int8-pico

Without --calib-data / --val-data it uses the synthetic shapes set the committed checkpoints were trained on:
calibration on its training images (seed 0), accuracy on 200 held-out images of another seed. Writes
report.json, report.md and report.png into --out (exports under --out/artifacts); --phase accuracy or speed runs one half.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

from deim_edge.bench.harness import benchmark
from deim_edge.bench.pick import format_picks, pick
from deim_edge.bench.report import format_table
from deim_edge.errors import DeimEdgeError
from deim_edge.export import export
from deim_edge.fileio import atomic_path

INT8_TARGETS = ("onnx-int8", "openvino-int8", "tflite-int8", "trt-int8")
FP32_OF = {"onnx-int8": "onnx", "openvino-int8": "openvino", "tflite-int8": "tflite"}  # timed pairs
NAMES = ["circle", "square", "triangle", "ring"]


def synthetic_data(root: Path, imgsz: int) -> tuple[str, str]:
    """(calibration folder, held-out COCO folder) of the synthetic shapes set."""
    from deim_edge.training.data import make_synthetic_coco

    train = make_synthetic_coco(root / "train-set", num_images=300, image_size=imgsz, seed=0)
    make_synthetic_coco(root / "heldout", num_images=1000, image_size=imgsz, seed=1, split_val=0.2)
    return str(train.train_images), str(root / "heldout")


def accuracy(args, calib: str, val: str, out: Path) -> list[dict]:
    rows = []
    for target in args.targets:
        for recipe in args.recipes:
            start = time.perf_counter()
            path = out / "artifacts" / f"{recipe}-{target}{'.engine' if target == 'trt-int8' else ''}"
            path = path if target == "trt-int8" else path.with_suffix(_suffix(target))
            try:
                written = export(args.checkpoint, target, out=path, imgsz=args.imgsz, class_names=args.class_names,
                                 calib_data=calib, calib_size=args.calib_size, val_data=val, recipe=recipe,
                                 max_drop=args.max_drop if recipe == "detr" else None, progress=True)
            except DeimEdgeError as e:  # e.g. a naive INT8 model that does not even run
                rows.append({"target": target, "recipe": recipe, "error": str(e)})
                print(json.dumps(rows[-1]), flush=True)
                continue
            report = json.loads(written.with_name(written.name + ".accuracy.json").read_text())
            acc, int8 = report["accuracy"], report.get("int8", {})
            rows.append({"target": target, "recipe": recipe, "artifact": str(written), "AP": acc["AP"],
                         "AP50": acc["AP50"], "reference_AP": acc["reference_AP"], "drop": acc["drop"],
                         "matched": acc["matched"], "mean_iou": acc["mean_iou"], "score_error": acc["score_error"],
                         "measured": acc.get("measured"), "int8_nodes": int8.get("int8_nodes"),
                         "float_layers": int8.get("float_layers"), "tflite_mode": int8.get("tflite_mode"),
                         "minutes": round((time.perf_counter() - start) / 60, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def speed(args, out: Path, rows: list[dict], val: str | None) -> dict:
    """FP32 and recipe INT8 artifacts of each timed pair, interleaved in one run, 1 thread, with the official
    export (--official) and an openvino-fp16 IR (bf16 where the CPU has it) beside them; then --pick's choice."""
    pairs: list[tuple[str, str]] = []  # (FP32 artifact, INT8 artifact) of one backend
    for target, fp32 in FP32_OF.items():
        int8 = next((r["artifact"] for r in rows if r["target"] == target and r["recipe"] == "detr" and "artifact" in r),
                    None)
        if int8 is None:
            continue
        path = out / "artifacts" / f"fp32-{fp32}{_suffix(fp32)}"
        if not path.exists():
            export(args.checkpoint, fp32, out=path, imgsz=args.imgsz, class_names=args.class_names, progress=True)
        pairs.append((str(path), int8))
    half = out / "artifacts" / "fp16-openvino.xml"
    if not half.exists():  # its accuracy measured by the gate when held-out data is given
        export(args.checkpoint, "openvino-fp16", out=half, imgsz=args.imgsz, class_names=args.class_names,
               val_data=val, progress=True)
    artifacts = ([args.official] if args.official else []) + [p for pair in pairs for p in pair] + [str(half)]
    record = benchmark(artifacts, duration=args.duration, threads=(1,), progress=True)
    by_path = {r["artifact"] if "artifact" in r else r["name"]: r for r in record["rows"]}
    speedups = {}
    for fp32, int8 in pairs:
        a, b = _row(by_path, fp32), _row(by_path, int8)
        speedups[Path(int8).name] = {
            stage: round(a["latency_ms"][stage]["p50"] / b["latency_ms"][stage]["p50"], 3)
            for stage in ("inference", "end_to_end") if stage in a["latency_ms"] and stage in b["latency_ms"]}
        speedups[Path(int8).name].update({"fp32_p50_ms": a["latency_ms"]["inference"]["p50"],
                                          "int8_p50_ms": b["latency_ms"]["inference"]["p50"]})
    picks = pick(record, args.max_drop, baseline=args.official)
    print(format_picks(picks, args.max_drop))
    return {"speedup_fp32_over_int8_p50": speedups, "rounds": record["rows"][0].get("runs"), "picks": picks,
            "table": format_table(record), "bench": record}


def _row(by_path: dict, path: str) -> dict:
    for key, row in by_path.items():
        if str(key).endswith(Path(path).name):
            return row
    raise KeyError(path)


def _suffix(target: str) -> str:
    return {"onnx": ".onnx", "openvino": ".xml", "tflite": ".tflite"}[target.split("-")[0]]


def markdown(result: dict) -> str:
    lines = [f"# INT8 report: {result['checkpoint']}", "",
             "| target | recipe | AP | FP32 AP | drop (AP points) | FP32 detections matched | mean IoU | "
             "INT8 nodes | layers kept float | minutes |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = {t: i for i, t in enumerate(INT8_TARGETS)}
    for r in sorted(result.get("accuracy", []), key=lambda r: (order.get(r["target"], 9), r["recipe"] != "naive")):
        if "error" in r:
            lines.append(f"| {r['target']} | {r['recipe']} | export failed: {r['error'][:160]} |||||||| ")
            continue
        lines.append(f"| {r['target']}{' (' + r['tflite_mode'] + ')' if r.get('tflite_mode') else ''} | "
                     f"{r['recipe']} | {r['AP']:.4f} | {r['reference_AP']:.4f} | {r['drop']:.2f} | "
                     f"{r['matched']:.1%} | {r['mean_iou']} | {r['int8_nodes']} | "
                     f"{', '.join(r['float_layers'] or []) or '-'} | {r['minutes']} |")
    if "speed" in result:
        cpu = result["speed"]["bench"]["device"]["cpu"]
        lines += ["", f"Speed: 1 thread, one interleaved run on {cpu.get('model')} ({' '.join(cpu.get('isa') or [])}); "
                  "FP32 artifacts run in f32 (OpenVINO too), INT8 and FP16 IRs' float ops in the CPU's fastest "
                  "precision.", "",
                  "| INT8 artifact | FP32 p50 ms | INT8 p50 ms | speedup (inference) | speedup (end to end) |",
                  "|---|---|---|---|---|"]
        for name, s in result["speed"]["speedup_fp32_over_int8_p50"].items():
            lines.append(f"| {name} | {s['fp32_p50_ms']} | {s['int8_p50_ms']} | {s.get('inference')} | "
                         f"{s.get('end_to_end')} |")
        if result["speed"].get("table"):
            lines += ["", "```", result["speed"]["table"], "```"]
        if result["speed"].get("picks"):
            lines += ["", "```", format_picks(result["speed"]["picks"], result.get("max_drop", 0.5)), "```"]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """report.png: AP of FP32, the naive baseline and the recipe per target; FP32/INT8 speedup per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.get("accuracy", [])
    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    recipes = [r for r in ("naive", "detr") if any(row["recipe"] == r for row in rows)]
    for i, recipe in enumerate(recipes):
        aps = [next((r.get("AP", 0) for r in rows if r["target"] == t and r["recipe"] == recipe), 0) for t in targets]
        axes[0].bar([x + 0.27 * i for x in range(len(targets))], aps, 0.27, label=f"INT8 {recipe}")
    measured = [r for r in rows if "reference_AP" in r]
    if measured:
        axes[0].axhline(measured[0]["reference_AP"], color="k", linestyle="--", label="FP32 PyTorch")
    axes[0].set_xticks([x + 0.135 * (len(recipes) - 1) for x in range(len(targets))], targets)
    axes[0].set_ylabel("COCO AP (held-out)")
    axes[0].legend()
    speed = result.get("speed", {}).get("speedup_fp32_over_int8_p50", {})
    axes[1].bar(list(speed), [s.get("inference", 0) for s in speed.values()])
    axes[1].axhline(1.0, color="k", linestyle="--")
    axes[1].set_ylabel("FP32 p50 / INT8 p50 (1 thread)")
    axes[1].tick_params(axis="x", labelrotation=15)
    fig.suptitle(f"INT8: {result['checkpoint']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="deim_edge/assets/deimv2-atto-synthetic.pth")
    p.add_argument("--class-names", nargs="+", default=NAMES)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--calib-data")
    p.add_argument("--calib-size", type=int, default=200)
    p.add_argument("--val-data")
    p.add_argument("--targets", nargs="+", default=list(INT8_TARGETS))
    p.add_argument("--recipes", nargs="+", default=["naive", "detr"])
    p.add_argument("--duration", type=float, default=60.0, help="seconds of interleaved timing")
    p.add_argument("--phase", choices=("all", "accuracy", "speed"), default="all")
    p.add_argument("--max-drop", type=float, default=0.5,
                   help="AP points the detr exports may lose (their search's budget) and --pick allows")
    p.add_argument("--official", help="the official FP32 ONNX export of the same weights "
                                      "(benchmarks/bench_official_onnx.py --keep DIR), timed as --pick's baseline")
    p.add_argument("--out", default="runs/int8")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")
    result_path = out / "report.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    result["checkpoint"], result["max_drop"] = args.checkpoint, args.max_drop
    calib, val = args.calib_data, args.val_data
    if calib is None or val is None:
        synthetic = synthetic_data(out / "data", args.imgsz)
        calib, val = calib or synthetic[0], val or synthetic[1]
    if args.phase in ("all", "accuracy"):
        rows = accuracy(args, calib, val, out)
        done = {(r["target"], r["recipe"]) for r in rows}  # a rerun of some targets replaces their rows only
        result["accuracy"] = [r for r in result.get("accuracy", []) if (r["target"], r["recipe"]) not in done] + rows
    if args.phase in ("all", "speed"):
        result["speed"] = speed(args, out, result.get("accuracy", []), val)
    with atomic_path(result_path) as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=str))
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(markdown(result))
    plot(result, out / "report.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
