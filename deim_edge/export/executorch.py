"""ExecuTorch (.pte) export: the deployed model in the metadata's layout, captured with torch.export at the
metadata's fixed batch and size, lowered to the XNNPACK delegate (fp32), the metadata JSON stored as a constant
method of the program (formats/executorch.py). Phones and boards run it with ExecuTorch's C++ runtime; this
machine with its Python runtime (runtimes/executorch.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ExportError, MissingDependencyError
from ..formats.executorch import METHOD
from ..metadata import ArtifactMetadata
from ..progress import step
from .graph import wrap


def export_executorch(model: nn.Module, metadata: ArtifactMetadata, out_path: Path,
                      options: Mapping[str, Any]) -> Path:
    """Write `model` (deployed) to `out_path` as an XNNPACK-delegated ExecuTorch program with `metadata`."""
    if metadata.batch is None:
        raise ExportError("ExecuTorch programs take a fixed batch here: give --batch N, not --dynamic-batch")
    module = wrap(model, metadata).eval()
    h, w = metadata.input_size
    images = torch.rand(metadata.batch, 3, h, w, generator=torch.Generator().manual_seed(0))
    step(f"capturing with torch.export ({metadata.output} outputs, batch {metadata.batch})")
    with torch.no_grad():
        program = torch.export.export(module, (images,))
    write_program(program, metadata, out_path)
    return out_path


def write_program(program: torch.export.ExportedProgram, metadata: ArtifactMetadata, out_path: Path) -> None:
    """Lower an exported program to XNNPACK and write it with `metadata` as its METHOD."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
    except ImportError as e:
        raise MissingDependencyError("the executorch targets need ExecuTorch: pip install 'deim-edge[executorch]'") from e
    step("lowering to the XNNPACK delegate (a few minutes on one core)")
    try:
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              constant_methods={METHOD: metadata.to_json()}).to_executorch()
    except Exception as e:  # noqa: BLE001 -- ExecuTorch reports unsupported graphs as its own error types
        raise ExportError(f"ExecuTorch cannot lower the graph: {type(e).__name__}: {str(e).splitlines()[0]}") from e
    step(f"writing the program ({len(lowered.buffer) / 1e6:.1f} MB)")
    Path(out_path).write_bytes(lowered.buffer)
