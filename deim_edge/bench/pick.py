"""`bench --pick`: the fastest artifact on this device whose recorded accuracy is within a drop, and its speed-up
over an FP32 ONNX model in ONNX Runtime (the official export, or our own), from the same interleaved run.

An artifact's accuracy is what its export measured: the accuracy gate's figures in its metadata
(extra["accuracy"]) or in `<artifact>.accuracy.json` beside it, a drop in AP points (with --val-data at export)
or in points of agreement with FP32 (without). An FP32 artifact without figures counts as no drop: every
export checks it against PyTorch. Anything else without figures is left out, and the pick says so.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def check_max_drop(max_drop: float) -> float:
    """ConfigError unless max_drop is a finite number >= 0 (AP points)."""
    if not isinstance(max_drop, (int, float)) or not math.isfinite(max_drop) or max_drop < 0:
        raise ConfigError(f"--max-drop must be a number of AP points >= 0, got {max_drop}")
    return float(max_drop)


def recorded_accuracy(row: dict[str, Any]) -> dict[str, Any] | None:
    """{"drop", "metric", "source"} of a row's artifact, or None when nothing was recorded."""
    metadata = row.get("metadata") or {}
    figures = (metadata.get("extra") or {}).get("accuracy")
    source = "metadata"
    if not figures:
        side = Path(row["artifact"] + ".accuracy.json")
        try:
            figures = json.loads(side.read_text(encoding="utf-8")).get("accuracy")
            source = side.name
        except (OSError, ValueError, AttributeError):
            figures = None
    if isinstance(figures, dict) and isinstance(figures.get("drop"), (int, float)) and math.isfinite(figures["drop"]):
        return {"drop": float(figures["drop"]), "metric": figures.get("metric", "AP"), "source": source}
    if metadata.get("precision") == "fp32":
        return {"drop": 0.0, "metric": "FP32, checked against PyTorch at export", "source": "precision"}
    return None


def pick(report: dict[str, Any], max_drop: float, baseline: str | None = None) -> list[dict[str, Any]]:
    """One pick per (threads, batch) of the report: the fastest qualifying row by p50 end to end, its speed-up over
    the baseline row (the artifact named `baseline`, else the first FP32 ONNX row run by ONNX Runtime) as the median
    of per-round ratios, and why the other rows were left out."""
    max_drop = check_max_drop(max_drop)
    if baseline is not None and not any(_names(row, baseline) for row in report["rows"]):
        raise ConfigError(f"--baseline {baseline} is not one of the benchmarked artifacts")
    rows = [r for r in report["rows"] if r["status"] == "ok"]
    picks = []
    for key in dict.fromkeys((r["threads"], r["batch"]) for r in rows):
        group = [r for r in rows if (r["threads"], r["batch"]) == key]
        base = _baseline(group, baseline)
        eligible, left_out = [], []
        for row in group:
            accuracy = recorded_accuracy(row)
            if accuracy is None:
                left_out.append(f"{row['name']}: no recorded accuracy (export it with the accuracy gate: --val-data)")
            elif accuracy["drop"] > max_drop:
                left_out.append(f"{row['name']}: drop {accuracy['drop']:.2f} > {max_drop:g}")
            else:
                eligible.append((row, accuracy))
        if not eligible:
            picks.append({"threads": key[0], "batch": key[1], "pick": None, "left_out": left_out})
            continue
        best, accuracy = min(eligible, key=lambda pair: _p50(pair[0]))
        picks.append({"threads": key[0], "batch": key[1], "pick": best["name"], "runtime": best["runtime"],
                      "p50_ms": _p50(best), "accuracy": accuracy, "baseline": base["name"] if base else None,
                      "baseline_runtime": base["runtime"] if base else None,
                      "baseline_p50_ms": _p50(base) if base else None,
                      "speedup": _speedup(base, best) if base else None, "left_out": left_out})
    return picks


def format_picks(picks: list[dict[str, Any]], max_drop: float) -> str:
    lines = []
    for p in picks:
        where = f"{p['threads'] or 'auto'} thread(s), batch {p['batch']}"
        if p["pick"] is None:
            lines.append(f"pick ({where}, max drop {max_drop:g}): nothing qualifies")
        else:
            acc = p["accuracy"]
            lines.append(f"pick ({where}, max drop {max_drop:g}): {p['pick']} on {p['runtime']}, "
                         f"{p['p50_ms']:.2f} ms p50 end to end; recorded drop {acc['drop']:.2f} ({acc['metric']})")
            if p["baseline"] is not None:
                lines.append(f"  {p['speedup']:.2f}x faster than {p['baseline']} on {p['baseline_runtime']} "
                             f"({p['baseline_p50_ms']:.2f} ms), median of per-round ratios")
            else:
                lines.append("  no speed-up: the baseline did not run, or no FP32 ONNX in ONNX Runtime was given "
                             "(--baseline)")
        lines += [f"  left out: {reason}" for reason in p["left_out"]]
    return "\n".join(lines)


def _baseline(group: list[dict[str, Any]], name: str | None) -> dict[str, Any] | None:
    """The row of `name` (None when it failed to run), else the first FP32 ONNX row run by ONNX Runtime."""
    if name is not None:
        return next((row for row in group if _names(row, name)), None)
    for row in group:
        precision = (row.get("metadata") or {}).get("precision", "fp32")
        if row["runtime"] == "onnxruntime" and row["artifact"].endswith(".onnx") and precision == "fp32":
            return row
    return None


def _names(row: dict[str, Any], name: str) -> bool:
    """Whether `name` (as given on the command line) is this row's artifact."""
    return name in (row["name"], row["artifact"]) or Path(row["artifact"]) == Path(name)


def _stage(row: dict[str, Any]) -> str:
    return "end_to_end" if row["latency_ms"].get("end_to_end") else "inference"


def _p50(row: dict[str, Any]) -> float:
    return row["latency_ms"][_stage(row)]["p50"]


def _speedup(base: dict[str, Any], row: dict[str, Any]) -> float:
    stage = "end_to_end" if _stage(base) == _stage(row) == "end_to_end" else "inference"
    pairs = [b / a for a, b in zip(row["samples_ms"][stage], base["samples_ms"][stage]) if a > 0]
    return round(statistics.median(pairs), 3) if pairs else round(_p50(base) / _p50(row), 3)
