"""The benchmark plot: per row, the median latency with its p50-p99 spread (and the share of inference);
beside it AP against latency when the report has AP. Rendered with matplotlib's Agg canvas (no display)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, MissingDependencyError
from ..fileio import atomic_path
from .rows import headline, row_label

PLOT_EXTRA = "bench"  # the extra that installs matplotlib
ROW_HEIGHT_IN = 0.42  # figure inches per row
CHAR_WIDTH_IN = 0.065  # of a row label at font size 8
BARS_WIDTH_IN, AP_WIDTH_IN = 5.5, 4.5


def plot_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the report's plot as a PNG at `path` (atomically); returns the path."""
    figure_cls, canvas_cls = _matplotlib()
    merged = "merged" in report
    rows = [r for r in report["rows"] if headline(r)[0] is not None]
    if not rows:
        raise ConfigError("no row of the report was measured (every artifact failed or was skipped): nothing to plot")
    with_ap = [r for r in rows if r.get("ap")]
    label_in = CHAR_WIDTH_IN * max(len(row_label(r, merged)) + 17 for r in rows)  # + " (inference only)"
    width = label_in + BARS_WIDTH_IN + (AP_WIDTH_IN if with_ap else 0)
    figure = figure_cls(figsize=(width, 1.8 + ROW_HEIGHT_IN * len(rows)), layout="constrained")
    canvas_cls(figure)
    axes = figure.subplots(1, 2 if with_ap else 1, squeeze=False,
                           width_ratios=[label_in + BARS_WIDTH_IN, AP_WIDTH_IN] if with_ap else None)[0]
    color = _palette(rows, merged)
    _latency_bars(axes[0], rows, color, merged)
    if with_ap:
        _ap_scatter(axes[1], with_ap, color, merged)
    title = "deim-edge benchmark" + ("" if merged else f" - {report.get('device_label', '')}")
    figure.suptitle(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path


def _latency_bars(ax, rows: list[dict], color: Callable[[dict], str], merged: bool) -> None:
    labels, y = [], list(range(len(rows)))[::-1]
    for i, row in zip(y, rows):
        stats, basis = headline(row)
        ax.barh(i, stats["p50"], color=color(row), alpha=0.55, height=0.7)
        infer = row["latency_ms"].get("inference", {}).get("p50")
        if basis == "end_to_end" and infer is not None:
            ax.barh(i, infer, color=color(row), alpha=0.95, height=0.35)  # the inference share, inside the bar
        ax.errorbar(stats["p50"], i, xerr=[[0], [stats["p99"] - stats["p50"]]], fmt="none", ecolor="black",
                    capsize=4, linewidth=1)
        ax.plot(stats["p90"], i, marker="|", color="black", markersize=10)
        ax.annotate(f"{stats['p50']:.1f}", (stats["p99"], i), xytext=(6, -3), textcoords="offset points",
                    fontsize=8)
        labels.append(row_label(row, merged) + (" (inference only)" if basis == "inference" else ""))
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("latency per call, ms")
    ax.set_title("bar: p50 end to end; dark: inference p50; |: p90; whisker to p99", fontsize=8)
    ax.set_xlim(0, max(headline(r)[0]["p99"] for r in rows) * 1.25)
    ax.grid(axis="x", alpha=0.3)


def _ap_scatter(ax, rows: list[dict], color: Callable[[dict], str], merged: bool) -> None:
    for row in rows:
        stats, _ = headline(row)
        ax.scatter(stats["p50"], 100 * row["ap"]["AP"], s=40, color=color(row))
        ax.annotate(row_label(row), (stats["p50"], 100 * row["ap"]["AP"]), xytext=(4, 4),
                    textcoords="offset points", fontsize=8)
    ax.set_xlabel("latency p50, ms")
    ax.set_ylabel("COCO AP (%)")
    ax.set_title("accuracy against latency", fontsize=8)
    ax.set_xlim(0, max(headline(r)[0]["p50"] for r in rows) * 1.3)
    ax.set_ylim(0, max(1.0, 130 * max(r["ap"]["AP"] for r in rows)))
    ax.grid(alpha=0.3)


def _palette(rows: list[dict], merged: bool) -> Callable[[dict], str]:
    """A row's color: one per device in merged reports, else one per runtime."""
    key = (lambda r: r.get("device")) if merged else (lambda r: r.get("runtime"))
    colors = {k: f"C{i % 10}" for i, k in enumerate(dict.fromkeys(map(key, rows)))}
    return lambda row: colors[key(row)]


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError(f"the benchmark plot needs matplotlib: pip install 'deim-edge[{PLOT_EXTRA}]' "
                                     f"or pip install matplotlib (or pass --no-plot)") from None
    return Figure, FigureCanvasAgg
