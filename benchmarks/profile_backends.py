"""Where the time goes, per backend, measured by each runtime's own profiler at 1 thread.

    python benchmarks/profile_backends.py runs/int8-atto/artifacts/fp32-onnx.onnx \
        runs/int8-atto/artifacts/detr-onnx-int8.onnx runs/int8-atto/artifacts/fp32-openvino.xml \
        runs/int8-atto/artifacts/detr-openvino-int8.xml runs/int8-atto/artifacts/detr-tflite-int8.tflite \
        --out benchmarks/results/profile-atto.md

- .onnx: ONNX Runtime's profiler (SessionOptions.enable_profiling), kernel time per op type as ONNX Runtime
  runs it after its graph rewrites (QLinearConv where a Q/DQ pair fused, DequantizeLinear/QuantizeLinear where a
  chain breaks), per model part (backbone, encoder, decoder) and per precision (int8 kernels or float).
- .xml: OpenVINO's performance counters (PERF_COUNT): time per executed op with its kernel and precision
  (e.g. brgconv_avx512_core_vnni_I8 vs jit_avx512_FP32), per part and precision.
- .tflite: LiteRT's Python API has no op profiler; the report counts what XNNPACK takes (the ops between each
  delegate partition's inputs and outputs) and lists the ops left to LiteRT's own kernels with their tensor
  types, and the whole-model time.

The report names the CPU and its ISA flags (VNNI, AVX512, BF16, AMX, NEON dot product) it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from deim_edge.bench.device import cpu_facts
from deim_edge.fileio import atomic_path

PARTS = ("backbone", "encoder", "decoder")
INT8_KERNEL = re.compile(r"(^QLinear|^MatMulInteger|^ConvInteger|^DynamicQuantize|QGemm|QAttention|_I8$|_U8$|"
                         r"_i8$|_u8$)")


def part_of(name: str) -> str:
    """backbone / encoder / decoder from a node's PyTorch module scope; 'other' (input/output handling, decode)."""
    for part in PARTS:
        if f"/{part}/" in name or name.startswith(f"{part}.") or f"model.{part}" in name:
            return part
    return "other"


def _input(shape) -> np.ndarray:
    dims = [int(d) if isinstance(d, (int, np.integer)) and d > 0 else 1 for d in shape]  # symbolic: 1
    return np.random.default_rng(0).random(dims, dtype=np.float32)


def profile_onnx(path: Path, runs: int) -> dict:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as folder:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(folder, "ort")
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        feed = {i.name: _input(i.shape) for i in session.get_inputs()}
        for _ in range(5):
            session.run(None, feed)
        start = time.perf_counter()
        for _ in range(runs):
            session.run(None, feed)
        wall_ms = (time.perf_counter() - start) * 1000 / (runs + 5)
        events = json.loads(Path(session.end_profiling()).read_text())
    # (op, part, precision) -> total µs over all runs (warm-up runs included, same for every op)
    times: dict[tuple[str, str, str], float] = defaultdict(float)
    count: dict[tuple[str, str, str], int] = defaultdict(int)
    calls = 0
    for e in events:
        if e.get("cat") == "Session" and e.get("name") == "model_run":
            calls += 1
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        precision = "int8" if INT8_KERNEL.search(op) else ("q/dq" if op in ("QuantizeLinear", "DequantizeLinear")
                                                           else "float")
        key = (op, part_of(e["name"]), precision)
        times[key] += e["dur"]
        count[key] += 1
    calls = max(calls, 1)
    rows = [{"op": k[0], "part": k[1], "precision": k[2], "ms": v / calls / 1000, "nodes": count[k] // calls}
            for k, v in times.items()]
    return {"runtime": "onnxruntime", "wall_ms": wall_ms, "rows": rows}


def profile_openvino(path: Path, runs: int) -> dict:
    import openvino as ov

    from deim_edge.runtimes.openvino import OpenVinoRuntime

    # the float precision deim-edge runs this IR in (FP32: f32; fp16, and INT8 where its export allowed: bf16 here)
    precision = OpenVinoRuntime(path, threads=1).float_precision or "f32"
    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1,
                                                      "PERFORMANCE_HINT": "LATENCY",
                                                      "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()
    feed = {compiled.inputs[0]: _input(list(compiled.inputs[0].shape))}
    for _ in range(5):
        request.infer(feed)
    times: dict[tuple[str, str, str], float] = defaultdict(float)
    count: dict[tuple[str, str, str], int] = defaultdict(int)
    start = time.perf_counter()
    for _ in range(runs):
        request.infer(feed)
        for info in request.get_profiling_info():
            if info.status != info.Status.EXECUTED:
                continue
            exec_type = info.exec_type
            suffix = exec_type.rsplit("_", 1)[-1].upper()
            kernel = {"I8": "int8", "U8": "int8", "BF16": "bf16", "F16": "fp16", "FP16": "fp16"}.get(suffix, "float")
            key = (f"{info.node_type} [{exec_type}]", part_of(info.node_name), kernel)
            times[key] += info.real_time.total_seconds() * 1000
            count[key] += 1
    wall_ms = (time.perf_counter() - start) * 1000 / runs
    rows = [{"op": k[0], "part": k[1], "precision": k[2], "ms": v / runs, "nodes": count[k] // runs}
            for k, v in times.items()]
    return {"runtime": f"openvino (float ops in {precision})", "wall_ms": wall_ms, "rows": rows}


def profile_tflite(path: Path, runs: int) -> dict:
    from deim_edge.runtimes.tflite import import_interpreter

    Interpreter, _ = import_interpreter()
    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    x = _input(list(detail["shape"])).astype(detail["dtype"])
    interpreter.set_tensor(detail["index"], x)
    for _ in range(5):
        interpreter.invoke()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        samples.append((time.perf_counter() - start) * 1000)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # noqa: SLF001 -- the only op list LiteRT's Python API offers
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    original = [op for op in ops if op["op_name"] != "DELEGATE"]
    delegated = _delegated(original, partitions)
    counts: dict[tuple[str, str, str], int] = defaultdict(int)
    for op in original:
        if op["index"] in delegated:
            continue
        dtypes = sorted({np.dtype(tensors[i]["dtype"]).name for i in op["inputs"] if i in tensors})
        quantized = {"int8", "uint8"} & set(dtypes)
        precision = "int8" if quantized and "float32" not in dtypes else ("mixed" if quantized else "float")
        node = next((tensors[i]["name"] for i in op["outputs"] if i in tensors), "")
        counts[(f"{op['op_name']} ({'/'.join(dtypes)})", part_of(node), precision)] += 1
    rows = [{"op": k[0], "part": k[1], "precision": k[2], "ms": None, "nodes": v} for k, v in counts.items()]
    return {"runtime": f"LiteRT + XNNPACK: {len(delegated)} of {len(original)} ops in {len(partitions)} XNNPACK "
                       f"partitions; the ops left to LiteRT's kernels are listed (no per-op times in its Python API)",
            "wall_ms": statistics.median(samples), "rows": rows}


def _delegated(original: list[dict], partitions: list[dict]) -> set[int]:
    """The original ops XNNPACK runs: for each partition, those on the paths from its inputs to its outputs."""
    producer = {t: op["index"] for op in original for t in op["outputs"]}
    inputs_of = {op["index"]: [int(i) for i in op["inputs"] if i >= 0] for op in original}
    taken: set[int] = set()
    for partition in partitions:
        boundary = {int(t) for t in partition["inputs"]}
        todo, seen = [int(t) for t in partition["outputs"]], set()
        while todo:
            tensor = todo.pop()
            if tensor in boundary or tensor in seen or tensor not in producer:
                continue
            seen.add(tensor)
            taken.add(producer[tensor])
            todo += inputs_of[producer[tensor]]
    return taken


PROFILERS = {".onnx": profile_onnx, ".xml": profile_openvino, ".tflite": profile_tflite}


def summarize(result: dict) -> list[str]:
    rows = result["rows"]
    lines = [f"### {result['name']} ({result['runtime']})", "",
             f"wall time per run, 1 thread: {result['wall_ms']:.2f} ms", ""]
    timed = [r for r in rows if r["ms"] is not None]
    if timed:
        total = sum(r["ms"] for r in timed)
        lines += ["| part | float ms | int8 ms | q/dq ms | bf16/fp16 ms | share |", "|---|---|---|---|---|---|"]
        for part in (*PARTS, "other"):
            sel = [r for r in timed if r["part"] == part]
            if not sel:
                continue
            by = defaultdict(float)
            for r in sel:
                by[r["precision"] if r["precision"] in ("float", "int8", "q/dq") else "half"] += r["ms"]
            lines.append(f"| {part} | {by['float']:.2f} | {by['int8']:.2f} | {by['q/dq']:.2f} | {by['half']:.2f} | "
                         f"{sum(by.values()) / total:.0%} |")
        lines += ["", f"top ops by time (sum of kernel times {total:.2f} ms):", "",
                  "| op (kernel) | part | precision | nodes | ms | share |", "|---|---|---|---|---|---|"]
        for r in sorted(timed, key=lambda r: -r["ms"])[:18]:
            lines.append(f"| {r['op']} | {r['part']} | {r['precision']} | {r['nodes']} | {r['ms']:.3f} | "
                         f"{r['ms'] / total:.1%} |")
    else:
        lines += ["| op (input types) | part | precision | count |", "|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: -r["nodes"]):
            lines.append(f"| {r['op']} | {r['part']} | {r['precision']} | {r['nodes']} |")
    return lines + [""]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", nargs="+", type=Path)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--out", type=Path, help="write the markdown report here (and .json beside it)")
    args = p.parse_args()
    cpu = cpu_facts()
    header = [f"# Profile: where the time goes (1 thread, {args.runs} runs each)", "",
              f"CPU: {cpu.get('model')}, ISA: {' '.join(cpu.get('isa') or []) or 'unknown'}", ""]
    results = []
    for path in args.artifacts:
        profiler = PROFILERS.get(path.suffix)
        if profiler is None:
            sys.exit(f"error: no profiler for {path.suffix} files ({', '.join(PROFILERS)})")
        if not path.exists():
            sys.exit(f"error: {path} does not exist")
        result = profiler(path, args.runs)
        result["name"] = path.name
        results.append(result)
        print("\n".join(summarize(result)), flush=True)
    text = "\n".join(header + [line for r in results for line in summarize(r)])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
        with atomic_path(args.out.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"cpu": cpu, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
