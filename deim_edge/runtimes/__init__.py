"""Runtimes: one small protocol, one module per inference engine, chosen by file suffix or name through the
format records of deim_edge.formats.

A runtime loads an artifact, exposes its `metadata`, and maps a preprocessed batch
[B,3,H,W] float32 to outputs in the layout the metadata names (RAW or TOPK, see metadata.py).
Engines are imported only when their runtime is loaded.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import ConfigError, ModelFileError
from ..formats import Format, format_of, get_format
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
    _check_options(fmt, options)
    return fmt.open(path, **options)


def runtime_options(fmt: Format) -> list[str]:
    """The keyword options the runtime of `fmt` takes (threads, device, ...), read from its signature."""
    module, name = fmt.runtime_class.split(":")
    return [p for p in inspect.signature(getattr(importlib.import_module(module), name)).parameters if p != "path"]


def _check_options(fmt: Format, options: dict[str, Any]) -> None:
    """ConfigError naming the options the format's runtime takes when `options` holds another."""
    accepted = runtime_options(fmt)
    unknown = [k for k in options if k not in accepted]
    if unknown:
        raise ConfigError(f"the {fmt.runtime} runtime has no option {', '.join(unknown)}; it takes "
                          f"{', '.join(accepted)}")


def model_file(path: Path) -> Path:
    """`path` when it is a file; ModelFileError when it is missing or a folder."""
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder, not a model file; give the model file itself")
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    return path


def check_count(name: str, value: Any) -> int | None:
    """`value` as an int when it is a whole number of at least 1 (threads, streams), None for None; ConfigError
    otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{name} must be a whole number of at least 1 (or None: the runtime's choice), "
                          f"got {value!r}")
    return int(value)
