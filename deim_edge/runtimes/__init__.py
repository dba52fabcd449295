"""Runtimes: one small protocol, one module per inference engine, chosen by file suffix or name through the
format records of deim_edge.formats.

A runtime loads an artifact, exposes its `metadata`, and maps a preprocessed batch
[B,3,H,W] float32 to outputs in the layout the metadata names (RAW or TOPK, see metadata.py).
Engines are imported only when their runtime is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import ModelFileError
from ..formats import format_of, get_format
from ..metadata import ArtifactMetadata


class Runtime(Protocol):
    """What Detector needs from an inference engine."""

    name: str
    metadata: ArtifactMetadata

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images [B,3,H,W] float32 -> RAW {'logits', 'boxes'} or TOPK {'scores', 'labels', 'boxes'}."""
        ...


def runtime_for(path: str | Path, backend: str | None = None) -> str:
    """The runtime name for an artifact: `backend` when given, else by file suffix."""
    return (get_format(backend) if backend is not None else format_of(path)).runtime


def load_runtime(path: str | Path, backend: str | None = None, **options) -> Runtime:
    """Open `path` with the runtime `backend` names or its suffix implies (deim_edge.formats)."""
    fmt = get_format(backend) if backend is not None else format_of(path)
    if not Path(path).exists():
        raise ModelFileError(f"model file not found: {path}")
    return fmt.open(path, **options)
