"""Reading one row of a benchmark report: the latency it is judged by, and the label it is shown with (the
table, the Markdown and the plot all use these)."""

from __future__ import annotations

from typing import Any


def headline(row: dict[str, Any]) -> tuple[dict[str, float] | None, str]:
    """The latency a row is judged by: end to end, or inference alone for models that are not deim-edge's."""
    latency = row.get("latency_ms") or {}
    if "end_to_end" in latency:
        return latency["end_to_end"], "end_to_end"
    return latency.get("inference"), "inference"


def row_label(row: dict[str, Any], with_device: bool = False) -> str:
    """name, plus batch and threads where they are not the defaults, plus the device in merged reports."""
    parts = [row["name"]]
    if row.get("batch", 1) != 1:
        parts.append(f"b{row['batch']}")
    if row.get("threads"):
        parts.append(f"t{row['threads']}")
    label = " ".join(parts)
    return f"{label} [{row['device']}]" if with_device and row.get("device") else label
