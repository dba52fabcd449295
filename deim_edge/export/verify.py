"""The export's one check of a written artifact: run through its format's runtime on a random input, its top
detections compared with the PyTorch model's (deim_edge.compare) within the format record's tolerance.

Artifacts whose runtime cannot run here (CoreML off macOS, TensorRT without a GPU) are checked structurally by
their exporter only, and the export says so; INT8 artifacts are measured by the accuracy gate instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..compare import output_agreement
from ..errors import DeimEdgeError, ExportError
from ..formats import Format
from ..metadata import ArtifactMetadata
from ..progress import step
from .graph import wrap

if TYPE_CHECKING:
    from torch import nn

DYNAMIC_BATCH = 2  # images checked when the artifact takes any batch size


def verify_artifact(path: Path, model: nn.Module, metadata: ArtifactMetadata, fmt: Format) -> None:
    """ExportError unless the artifact at `path` reproduces `model` (deployed) within fmt.checks[precision]."""
    check = fmt.checks.get(metadata.precision)
    if check is None:
        step(f"{metadata.precision} {fmt.name}: not checked against PyTorch here (the accuracy gate measures it)")
        return
    reason = fmt.unavailable()
    if reason is not None:
        step(f"not running {path.name} against PyTorch: {reason}")
        return
    h, w = metadata.input_size
    images = np.random.default_rng(0).uniform(0, 1, (metadata.batch or DYNAMIC_BATCH, 3, h, w)).astype(np.float32)
    module = wrap(model, metadata)
    with torch.no_grad():
        expected = dict(zip(module.output_names, (t.numpy() for t in module(torch.from_numpy(images)))))
    step(f"comparing {fmt.runtime} with PyTorch on a random input")
    try:
        runtime = fmt.open(path, **fmt.check_options)
        got = runtime.run(images)
    except DeimEdgeError:
        raise
    except Exception as e:  # noqa: BLE001 -- a runtime's own error: the written file does not run
        raise ExportError(f"{fmt.runtime} cannot run the written {path.name}: {type(e).__name__}: {e}") from e
    if runtime.metadata.with_(extra={}) != metadata.with_(extra={}):
        raise ExportError(f"the metadata read back from {path.name} differs from the metadata written")
    a = output_agreement(expected, got, metadata.output, check.top, check.min_iou)
    step(f"top-{check.top} detections found again: {a.share:.0%}, largest score/box difference {a.max_diff:.2g}")
    if a.share < check.min_share or (check.max_diff is not None and a.max_diff > check.max_diff):
        limit = f", allowed {check.max_diff:g}" if check.max_diff is not None else ""
        raise ExportError(
            f"the written {path.name} disagrees with PyTorch on a random input: {a.share:.0%} of the top {check.top} "
            f"detections found again (same label, IoU >= {check.min_iou}; need {check.min_share:.0%}), largest "
            f"score/box difference {a.max_diff:.2g}{limit}. A freshly built, untrained model scores all positions "
            f"alike: export it with verify=False (--no-verify). Otherwise try another --opset or --no-simplify, "
            f"and please report it")
