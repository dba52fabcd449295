"""The benchmark record and its renderings: JSON (the record to keep), a terminal table, Markdown, CSV;
and merging the records of several devices into one.

A record is {"format", "version", "created", "device", "device_label", "settings", "clocks", "rows"}; each
row is one (artifact, threads, batch) with its status ("ok", "failed", "skipped") and error, latency_ms
per stage ("preprocess", "inference", "decode", "end_to_end"; each {p50, p90, p99, mean, std, min, max}),
fps, ratio (to the first row, median over rounds of the per-round ratio), load_s, first_call_ms,
rss_added_mb, peak_rss_mb, size_mb, ap, metadata and the samples. Merged records add each row's "device".
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError
from ..fileio import atomic_path
from .device import device_label
from .rows import headline, row_label

FORMAT, VERSION = "deim-edge-bench", 1
STAT_KEYS = ("p50", "p90", "p99", "mean", "std", "min", "max")
STAGE_KEYS = ("preprocess", "inference", "decode", "end_to_end")


def new_report(rows: list[dict[str, Any]], settings: dict[str, Any], device: dict[str, Any],
               clocks: dict[str, Any]) -> dict[str, Any]:
    from .. import __version__

    return {"format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "producer": f"deim-edge {__version__}", "device": device, "device_label": device_label(device),
            "settings": settings, "clocks": clocks, "rows": rows}


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """A report written by `python -m deim_edge.bench`; ConfigError when the file is not one."""
    path = Path(path)
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read the benchmark report {path}: {e}") from e
    if not isinstance(report, dict) or report.get("format") != FORMAT or not isinstance(report.get("rows"), list):
        raise ConfigError(f"{path} is not a deim-edge benchmark report (the JSON that python -m deim_edge.bench "
                          f"writes)")
    if report.get("version", 0) > VERSION:
        raise ConfigError(f"{path} is a report of format {report['version']}, newer than this deim-edge reads "
                          f"({VERSION}); upgrade deim-edge")
    return report


def merge_reports(reports: Sequence[dict[str, Any]], sources: Sequence[str]) -> dict[str, Any]:
    """One record holding the rows of several reports, each row tagged with its device (and report file)."""
    rows, devices = [], {}
    for report, source in zip(reports, sources):
        label = report.get("device_label") or device_label(report.get("device", {}))
        devices[label] = report.get("device", {})
        rows.extend({**row, "device": label, "source": source} for row in report["rows"])
    return {"format": FORMAT, "version": VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "merged": list(sources), "devices": devices, "rows": rows}


# ------------------------------------------------------------------------------------------- tables

def _ms(value: float | None) -> str:
    return "-" if value is None else (f"{value:.2f}" if value < 100 else f"{value:.0f}")


def _latency(key: str) -> Callable[[dict], str]:
    def cell(row: dict) -> str:
        stats, basis = headline(row)
        if stats is None:
            return row["status"] if key == "p50" else "-"
        return _ms(stats[key]) + ("*" if basis == "inference" and key == "p50" else "")
    return cell


def _stage(stage: str) -> Callable[[dict], str]:
    return lambda row: _ms((row.get("latency_ms") or {}).get(stage, {}).get("p50"))


def _number(key: str, fmt: str) -> Callable[[dict], str]:
    return lambda row: "-" if row.get(key) is None else format(row[key], fmt)


NATIVE_FLOAT = {"fp32": "f32", "fp16": "f16", "int8": "f32"}  # the float ops' precision an artifact implies


def precision_label(row: dict) -> str:
    """The artifact's precision, and in brackets the float ops' where the runtime ran them otherwise
    (an fp16 IR in bf16: "fp16 (bf16)"; an int8 IR whose float layers ran in bf16: "int8 (bf16)")."""
    precision = (row.get("metadata") or {}).get("precision", "-")
    ran = row.get("float_precision")
    return f"{precision} ({ran})" if ran and ran != NATIVE_FLOAT.get(precision, ran) else precision


def _ap(row: dict) -> str:
    """AP in %; "-" without one, or where COCO had no box to score it on (-1)."""
    return "-" if not row.get("ap") or row["ap"]["AP"] < 0 else f"{100 * row['ap']['AP']:.1f}"


COLUMNS: list[tuple[str, Callable[[dict], str]]] = [
    ("runtime", lambda r: r.get("runtime") or "-"),
    ("precision", lambda r: precision_label(r)),
    ("batch", lambda r: str(r["batch"])),
    ("threads", lambda r: str(r["threads"] or "auto")),
    ("p50 ms", _latency("p50")), ("p90", _latency("p90")), ("p99", _latency("p99")),
    ("mean", _latency("mean")), ("std", _latency("std")),
    ("FPS", _number("fps", ".1f")),
    ("pre", _stage("preprocess")), ("infer", _stage("inference")), ("decode", _stage("decode")),
    ("x first", _number("ratio", ".3f")),
    ("load s", _number("load_s", ".2f")), ("1st call ms", _number("first_call_ms", ".1f")),
    ("RSS+ MB", _number("rss_added_mb", ".0f")), ("peak MB", _number("peak_rss_mb", ".0f")),
    ("AP", _ap),
]


def _cells(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    merged = "merged" in report
    header = ["artifact"] + (["device"] if merged else []) + [name for name, _ in COLUMNS]
    body = [[r["name"]] + ([r.get("device", "-")] if merged else []) + [cell(r) for _, cell in COLUMNS]
            for r in report["rows"]]
    return header, body


def _summary(report: dict[str, Any]) -> list[str]:
    """The lines above a table: device, settings, clocks, and how to read the columns."""
    lines = []
    if "merged" in report:
        lines.append(f"{len(report['rows'])} rows from {len(report['merged'])} report(s): "
                     f"{', '.join(report['devices'])}")
    else:
        d, s, c = report["device"], report["settings"], report.get("clocks", {})
        cpu = d.get("cpu") or {}
        lines.append(f"device: {report['device_label']}; CPU {cpu.get('model')}, {cpu.get('logical_cores')} logical / "
                     f"{cpu.get('usable_cores')} usable cores" + (f", {' '.join(cpu['isa'])}" if cpu.get("isa") else "")
                     + (f", load {cpu['load_average'][0]}" if cpu.get("load_average") else ""))
        if d.get("gpu"):
            lines.append(f"GPU: {d['gpu'].get('name')}, driver {d['gpu'].get('driver')}")
        if d.get("jetson"):
            j = d["jetson"]
            lines.append(f"Jetson: {j.get('model')}, L4T {j.get('l4t')}, JetPack {j.get('jetpack')}, "
                         f"power mode {j.get('power_mode')}")
        lines.append("versions: " + ", ".join(f"{k} {v}" for k, v in d.get("versions", {}).items()))
        lines.append(f"{s['rounds']} interleaved rounds in {s['timed_s']:.1f} s after {s['warmup']} warm-up calls; "
                     f"images: {len(s['images'])}")
        clock_text = ", ".join(f"{k.replace('_', ' ')} {v['min']:g}-{v['max']:g}" for k, v in c.items()
                               if isinstance(v, dict))
        lines.append(f"clocks: {clock_text or 'not readable here'}; throttled: "
                     + ("YES (" + "; ".join(c["reasons"]) + ")" if c.get("throttled") else "no"))
    lines.append("latency per call in ms, end to end (pre + infer + decode); * inference only (a model without "
                 "deim-edge metadata); x first: median over rounds of (time / the first row's time in that round); "
                 "AP: COCO box AP in %")
    return lines


def _notes(report: dict[str, Any]) -> list[str]:
    notes = []
    for r in report["rows"]:
        where = f"{row_label(r, with_device=True)}"
        if r.get("error"):
            notes.append(f"{where}: {r['error']}")
        notes.extend(f"{where}: {n}" for n in r.get("notes", []))
    return notes


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table for the terminal."""
    header, body = _cells(report)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    lines = _summary(report) + ["", line(header), line(["-" * w for w in widths])] + [line(r) for r in body]
    notes = _notes(report)
    return "\n".join(lines + ([""] + notes if notes else []))


def to_markdown(report: dict[str, Any]) -> str:
    header, body = _cells(report)
    lines = ["# deim-edge benchmark", ""] + [f"- {s}" for s in _summary(report)] + [""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    lines.extend("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body)
    notes = _notes(report)
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"


def to_csv(report: dict[str, Any]) -> str:
    """One line per row, every number in its own column."""
    fields = ["name", "device", "artifact", "runtime", "kind", "batch", "threads", "status", "error", "size_mb",
              "load_s", "first_call_ms", "warmup", "runs", "rss_added_mb", "peak_rss_mb", "fps", "ratio",
              "ratio_basis", "AP", "AP50", "AP75", "throttled"]
    fields += [f"{stage}_{k}_ms" for stage in STAGE_KEYS for k in STAT_KEYS]
    out = io.StringIO()
    writer = csv.DictWriter(out, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in report["rows"]:
        flat = {**r, **(r.get("ap") or {})}
        flat.setdefault("device", report.get("device_label"))
        for stage, stats in (r.get("latency_ms") or {}).items():
            flat.update({f"{stage}_{k}_ms": v for k, v in stats.items()})
        writer.writerow(flat)
    return out.getvalue()


def write_report(report: dict[str, Any], out_dir: str | os.PathLike, stem: str = "bench",
                 plot: bool = True) -> dict[str, Path]:
    """Write <stem>.json, .md, .csv and (plot) .png into out_dir, each atomically; returns their paths.
    The PNG comes last, so a missing matplotlib leaves the other three written."""
    out = Path(out_dir)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "csv": out / f"{stem}.csv"}
    texts = {"json": json.dumps(report, indent=1, allow_nan=False) + "\n", "md": to_markdown(report),
             "csv": to_csv(report)}
    for kind, path in paths.items():
        with atomic_path(path) as tmp:
            tmp.write_text(texts[kind], encoding="utf-8")
    if plot:
        from .plot import plot_report

        paths["png"] = plot_report(report, out / f"{stem}.png")
    return paths
