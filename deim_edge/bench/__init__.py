"""The latency harness: time artifacts interleaved in one process (preprocess, inference, decode, end to
end; p50/p90/p99, FPS, first call, memory), optionally with COCO AP, and report them with the device's
facts as JSON, Markdown, CSV, a terminal table and a plot. `python -m deim_edge.bench --help`.
The validation set for AP is deim_edge.accuracy.ValSet.

Imports only numpy, OpenCV and the runtime of each artifact (matplotlib for the plot, a COCO library
for AP), never torch.
"""

from .harness import benchmark
from .report import format_table, load_report, merge_reports, write_report

__all__ = ["benchmark", "format_table", "load_report", "merge_reports", "write_report"]
