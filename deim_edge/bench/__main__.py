"""Command line: `python -m deim_edge.bench ARTIFACT [ARTIFACT ...]` times artifacts interleaved and writes
the report; `python -m deim_edge.bench compare A.json B.json ...` merges reports of several devices."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..accuracy import ValSet
from ..errors import ConfigError, DeimEdgeError, MissingDependencyError
from ..fileio import check_output
from .harness import benchmark
from .pick import check_max_drop, format_picks, pick
from .report import format_table, load_report, merge_reports, write_report

EPILOG = """examples:
  python -m deim_edge.bench deimv2-atto.onnx deimv2-atto.xml deimv2-atto.tflite --duration 30
  python -m deim_edge.bench model.onnx model.onnx@openvino yolo11n.onnx --threads 1 4 --batch 1 8
  python -m deim_edge.bench model.onnx --val-data coco/ --val-max 500
  python -m deim_edge.bench compare runs/bench/orin.json runs/bench/laptop.json
  python -m deim_edge.bench official.onnx atto.onnx atto-int8.onnx atto-int8.xml atto-int8.tflite --threads 1 \
      --pick --max-drop 0.5     # the fastest within 0.5 AP of FP32, and its speed-up over official.onnx

exit status: 0 when every artifact was measured, 1 when one failed (its row says why) or --pick found none
within --max-drop, 2 on bad input, 130 when interrupted (Ctrl-C)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deim_edge.bench", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Time artifacts interleaved, round by round, in one process, and report "
                                            "latency (p50/p90/p99, per stage), FPS, memory and optionally COCO AP. "
                                            "'compare A.json B.json ...' merges reports of several devices.")
    p.add_argument("artifacts", nargs="+", metavar="ARTIFACT",
                   help="a .onnx, .xml, .tflite, .mlpackage, .engine or .pth; PATH@BACKEND picks the runtime "
                        "(e.g. model.onnx@openvino); an ONNX model without deim-edge metadata is timed raw")
    p.add_argument("--images", nargs="+", help="images or folders to time with (default: the bundled samples)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per row after the first (default 10)")
    p.add_argument("--runs", type=int, help="timed rounds (default 100, or as many as --duration allows)")
    p.add_argument("--duration", type=float, metavar="S", help="seconds of timed rounds (stops at --runs too)")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    p.add_argument("--threads", nargs="+", default=["auto"], help="thread counts; auto: the runtime's default")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold of the decode (default 0.25)")
    p.add_argument("--imgsz", type=int, default=640,
                   help="size of the symbolic dimensions of other ONNX models' inputs (default 640)")
    p.add_argument("--val-data", help="COCO-format folder (annotations/instances_val.json and val/) for an AP column")
    p.add_argument("--val-json", help="COCO annotation file (with --val-images)")
    p.add_argument("--val-images", help="folder of the images --val-json names")
    p.add_argument("--val-max", type=int, help="use only the first N validation images")
    p.add_argument("--out", default="runs/bench", help="output folder (default runs/bench)")
    p.add_argument("--name", default="bench", help="file name stem of the outputs (default bench)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    choose = p.add_argument_group("choosing an artifact")
    choose.add_argument("--pick", action="store_true",
                        help="name the fastest artifact whose recorded accuracy (its export's gate) is within "
                             "--max-drop, and its speed-up over an FP32 ONNX in ONNX Runtime")
    choose.add_argument("--max-drop", type=float, default=0.5, metavar="POINTS",
                        help="with --pick: AP points (or agreement points) below FP32 allowed (default 0.5)")
    choose.add_argument("--baseline", metavar="ARTIFACT",
                        help="with --pick: the artifact to compare with (default: the first FP32 .onnx run by "
                             "ONNX Runtime, e.g. the official export)")
    return p


def build_compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m deim_edge.bench compare",
                                description="Merge benchmark reports (e.g. of different devices) into one table "
                                            "and one plot.")
    p.add_argument("reports", nargs="+", metavar="REPORT.json", help="reports written by python -m deim_edge.bench")
    p.add_argument("--out", default="runs/bench", help="output folder (default runs/bench)")
    p.add_argument("--name", default="compare", help="file name stem of the outputs (default compare)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    return p


def _threads(values: list[str]) -> list[int | None]:
    out = []
    for v in values:
        if v.lower() in ("auto", "default"):
            out.append(None)
        elif v.isdigit() and int(v) > 0:
            out.append(int(v))
        else:
            raise ConfigError(f"--threads takes positive integers or 'auto', got {v!r}")
    return out


def run(args: argparse.Namespace) -> int:
    check_output(args.out, folder=True)  # before any timing
    if args.pick:
        check_max_drop(args.max_drop)  # before any timing
        if args.baseline and args.baseline not in args.artifacts:
            raise ConfigError(f"--baseline {args.baseline} is not one of the artifacts to benchmark")
    val = None
    if args.val_data or args.val_json or args.val_images:
        val = ValSet.find(args.val_data, args.val_json, args.val_images, args.val_max)
    report = benchmark(args.artifacts, args.images, warmup=args.warmup, runs=args.runs, duration=args.duration,
                       batches=args.batch, threads=_threads(args.threads), conf=args.conf, imgsz=args.imgsz, val=val,
                       progress=not args.quiet)
    if args.pick:
        report["picks"] = pick(report, args.max_drop, args.baseline)
    print(format_table(report))
    if args.pick:
        print(format_picks(report["picks"], args.max_drop))
    _write(report, args)
    failed = any(r["status"] == "failed" for r in report["rows"])
    return 1 if failed or (args.pick and any(p["pick"] is None for p in report["picks"])) else 0


def compare(args: argparse.Namespace) -> int:
    check_output(args.out, folder=True)
    merged = merge_reports([load_report(p) for p in args.reports], [str(p) for p in args.reports])
    print(format_table(merged))
    _write(merged, args)
    return 0


def _write(report: dict, args: argparse.Namespace) -> None:
    try:
        paths = write_report(report, args.out, args.name, plot=not args.no_plot)
    except MissingDependencyError:
        print(f"written: {Path(args.out) / args.name}.json, .md and .csv, but no plot:", file=sys.stderr)
        raise
    print(f"written: {', '.join(map(str, paths.values()))}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv[:1] == ["compare"]:
            return compare(build_compare_parser().parse_args(argv[1:]))
        return run(build_parser().parse_args(argv))
    except DeimEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
