"""The hooks one backend adds to the shared INT8 export (a format record's `int8`, see deim_edge.formats)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError

if TYPE_CHECKING:
    import onnx

    from ..metadata import ArtifactMetadata

# writes the backend's INT8 artifact of (node names to quantize, calibration batches) at a path; returns it and
# the backend's model, which the export writes as the artifact when that plan is chosen (no second quantization)
CandidateWriter = Callable[[Sequence[str], Sequence[np.ndarray], Path], tuple[Path, Any]]


@dataclass(frozen=True)
class Int8Hooks:
    """What one backend adds to the shared INT8 export (the format record's `int8`, see deim_edge.formats)."""

    qdq_style: str = "ort"  # the QDQ layout searched: "ort" (ONNX Runtime) or "trt" (symmetric, explicit precision)
    ships_qdq: bool = False  # the artifact is the searched QDQ graph itself: its measured figures are final
    calib_methods: tuple[str, ...] | None = None  # the calibration methods the backend offers (None: all)
    activation_products: bool = True  # INT8 for matrix products of two activations too (recipe.PRODUCTS)
    prepare: Callable[[onnx.ModelProto, ArtifactMetadata], onnx.ModelProto] | None = None  # FP32 graph for it
    # (FP32 graph, calibration method) -> (file suffix, writer): search on the backend's own artifact
    search_on: Callable[[onnx.ModelProto, str], tuple[str, CandidateWriter]] | None = None

    def check_method(self, method: str, target: str) -> None:
        """ConfigError unless the backend offers calibration `method`."""
        if self.calib_methods is not None and method not in self.calib_methods:
            raise ConfigError(f"{target} has no {method!r} calibration; it takes --calib-method "
                              f"{' or '.join(self.calib_methods)}")
