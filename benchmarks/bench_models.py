"""CPU latency of every DEIMv2 variant at batch 1, with parameter counts and FLOPs.

    python benchmarks/bench_models.py [--variants atto pico ...] [--rounds 10] [--threads 1]
    python benchmarks/bench_models.py --artifacts onnx onnx-int8 openvino openvino-int8 \
        --out benchmarks/results/variants-cpu.md

Without --artifacts: the PyTorch forward of each deploy-mode model. With --artifacts: each variant (seeded random
weights, BatchNorm statistics from random images, at its own input size) exported to those targets and timed end
to end through Detector by the benchmark harness, all artifacts interleaved round by round in one run at
--threads. The INT8 artifacts quantize the detr recipe's layers (backbone and encoder, decoder float) calibrated
on --calib-size synthetic images, without the sensitivity search: random weights have no accuracy to keep, so
this is the speed of the recipe itself (a trained model's search may move a few layers back to float).
Variants are timed interleaved, round by round, so a noisy shared machine slows them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from deim_edge import VARIANTS, get_variant
from deim_edge.models import build_model, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=10, help="timed forwards per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--artifacts", nargs="+", choices=ARTIFACT_TARGETS,
                        help="time exported artifacts of these targets instead of the PyTorch forward")
    parser.add_argument("--calib-size", type=int, default=16, help="synthetic calibration images for INT8")
    parser.add_argument("--out", help="with --artifacts: the Markdown table (and .json, artifacts in a folder beside)")
    args = parser.parse_args()
    if args.artifacts:
        return time_artifacts(args)
    torch.set_num_threads(args.threads)

    variants = [get_variant(v) for v in args.variants]
    rows = {}
    for v in variants:
        train = build_model(v)
        n_train = sum(p.numel() for p in train.parameters())
        model = train.deploy()
        rows[v.name] = {"model": model, "x": torch.rand(1, 3, v.input_size, v.input_size), "times": [],
                        "train": n_train, "deploy": sum(p.numel() for p in model.parameters()),
                        "gflops": flops(model) / 1e9}
        print(f"built {v.name}", flush=True)

    with torch.no_grad():
        for _ in range(args.warmup):
            for r in rows.values():
                r["model"](r["x"])
        for i in range(args.rounds):
            for r in rows.values():
                start = time.perf_counter()
                r["model"](r["x"])
                r["times"].append(1000 * (time.perf_counter() - start))
            print(f"\rround {i + 1}/{args.rounds}", end="", flush=True)
    print()

    first = statistics.median(rows[variants[0].name]["times"])
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch 1, deploy mode, {args.rounds} rounds")
    print(f"{'variant':<14}{'input':>6}{'params train':>14}{'params deploy':>15}{'GFLOPs':>9}{'(table)':>9}"
          f"{'p50 ms':>9}{'p90 ms':>9}{'ratio':>7}")
    for v in variants:
        r = rows[v.name]
        times = sorted(r["times"])
        p50 = statistics.median(times)
        p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
        print(f"{v.name:<14}{v.input_size:>6}{r['train']:>14,}{r['deploy']:>15,}{r['gflops']:>9.3f}"
              f"{v.published.gflops:>9.3f}{p50:>9.1f}{p90:>9.1f}{p50 / first:>7.2f}")


ARTIFACT_TARGETS = ("onnx", "onnx-int8", "openvino", "openvino-int8")
SUFFIX = {"onnx": ".onnx", "onnx-int8": "-int8.onnx", "openvino": ".xml", "openvino-int8": "-int8.xml"}


def write_artifacts(variant: str, folder: Path, targets: list[str], calib_size: int) -> dict[str, Path]:
    """The variant's artifacts of `targets` in `folder` (see the module docstring for the INT8 ones)."""
    import onnx

    from deim_edge.calibration.data import load_calibration
    from deim_edge.calibration.qdq import QdqQuantizer
    from deim_edge.calibration.recipe import make_plan
    from deim_edge.export import export
    from deim_edge.export.onnx import INT8_HOOKS as ONNX_INT8_HOOKS
    from deim_edge.export.openvino_int8 import INT8_HOOKS as OPENVINO_INT8_HOOKS, write_int8_ir
    from deim_edge.export.weights import random_model
    from deim_edge.formats import read_metadata
    from deim_edge.formats.onnx import embed

    model = random_model(variant)
    paths = {"onnx": export(model, "onnx", out=folder / f"{variant}.onnx")}
    if "openvino" in targets:
        paths["openvino"] = export(model, "openvino", out=folder / f"{variant}.xml")
    int8 = [t for t in targets if t.endswith("-int8")]
    if int8:
        proto = onnx.load(str(paths["onnx"]))
        metadata = read_metadata(paths["onnx"])
        int8_metadata = metadata.with_(precision="int8", extra={**metadata.extra, "int8": {
            "recipe": "detr", "search": "none (random weights: speed only)", "calibration": f"{calib_size} synthetic"}})
        batches = load_calibration("synthetic", metadata, calib_size, progress=False).batches()
        plan = make_plan(proto, "detr", activation_products=ONNX_INT8_HOOKS.activation_products)
        if "onnx-int8" in int8:
            with QdqQuantizer(proto, batches, plan.op_types, progress=False) as quantizer:
                qdq = quantizer.quantize(plan.nodes)
            embed(qdq, int8_metadata)
            paths["onnx-int8"] = folder / f"{variant}{SUFFIX['onnx-int8']}"
            onnx.save(qdq, str(paths["onnx-int8"]))
        if "openvino-int8" in int8:
            ov_plan = make_plan(proto, "detr", activation_products=OPENVINO_INT8_HOOKS.activation_products)
            paths["openvino-int8"] = write_int8_ir(proto, batches, ov_plan.nodes, "minmax",
                                                   folder / f"{variant}{SUFFIX['openvino-int8']}", int8_metadata)
    return {t: paths[t] for t in targets}


def time_artifacts(args: argparse.Namespace) -> None:
    from deim_edge.bench.device import cpu_facts
    from deim_edge.bench.harness import benchmark
    from deim_edge.bench.report import precision_label
    from deim_edge.fileio import atomic_path

    out = Path(args.out) if args.out else None
    folder = out.with_suffix("") if out else Path(tempfile.mkdtemp(prefix="deim-edge-variants-"))
    folder.mkdir(parents=True, exist_ok=True)
    variants = [get_variant(v) for v in args.variants]
    files: dict[str, dict[str, Path]] = {}
    for v in variants:
        start = time.perf_counter()
        files[v.name] = write_artifacts(v.name, folder, args.artifacts, args.calib_size)
        print(f"exported {v.name} in {time.perf_counter() - start:.0f} s", flush=True)
    order = [str(p) for v in variants for p in files[v.name].values()]
    report = benchmark(order, runs=args.rounds, warmup=args.warmup, threads=(args.threads,), progress=True)
    rows = {r["artifact"]: r for r in report["rows"]}
    cpu = cpu_facts()
    lines = [f"# CPU latency of the eight variants, FP32 and INT8 ({args.threads} thread(s), batch 1)", "",
             f"CPU: {cpu.get('model')}, ISA: {' '.join(cpu.get('isa') or [])}; {report['settings']['rounds']} "
             f"interleaved rounds; p50 end to end (preprocess + inference + decode) in ms, from Detector", "",
             "| variant | input | params (deploy) | GFLOPs | " + " | ".join(args.artifacts) + " | best INT8 over ORT FP32 |",
             "|---|---|---|---|" + "---|" * len(args.artifacts) + "---|"]
    for v in variants:
        cells, p50 = [], {}
        for target, path in files[v.name].items():
            row = rows[str(path)]
            if row["status"] != "ok":
                cells.append(f"{row['status']}: {row['error']}")
                continue
            p50[target] = row["latency_ms"]["end_to_end"]["p50"]
            ran_in = precision_label(row).partition(" ")[2]  # "(bf16)" where float ops ran in another precision
            cells.append(f"{p50[target]:.1f} {ran_in}".rstrip())
        best = min((p50[t] for t in p50 if t.endswith("-int8")), default=None)
        gain = f"{p50['onnx'] / best:.2f}x" if best and "onnx" in p50 else "-"
        lines.append(f"| {v.name} | {v.input_size} | {v.published.params_deploy / 1e6:.2f}M | {v.published.gflops:.2f} | "
                     + " | ".join(cells) + f" | {gain} |")
    lines += ["", "INT8: the detr recipe's layers (backbone + encoder) calibrated on synthetic images, no sensitivity "
              "search (random weights). A bracket names the precision the runtime ran the float ops in.", ""]
    text = "\n".join(lines)
    print(text)
    if out:
        with atomic_path(out) as tmp:
            tmp.write_text(text)
        with atomic_path(out.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
