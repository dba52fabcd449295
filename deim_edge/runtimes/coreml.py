"""CoreML: deim-edge .mlpackage exports (ML programs), run by coremltools on macOS.

Prediction needs Apple's Core ML framework, so only macOS runs an artifact; on any platform
deim_edge.formats.coreml reads its deim-edge record from the model specification without loading it.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ImageError, ModelFileError
from ..formats.coreml import import_coremltools, load_spec, metadata_of

COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
INPUT_NAME = "images"


class CoremlRuntime:
    """A deim-edge CoreML artifact in coremltools' MLModel (macOS only).

    compute_units: "ALL" (CPU, GPU and Neural Engine, Core ML's choice), "CPU_ONLY", "CPU_AND_GPU" or
    "CPU_AND_NE".
    """

    name = "coreml"

    def __init__(self, path: Path, compute_units: str = "ALL") -> None:
        units = str(compute_units).upper()
        if units not in COMPUTE_UNITS:
            raise ConfigError(f"compute_units must be one of {', '.join(COMPUTE_UNITS)}, got {compute_units!r}")
        ct = import_coremltools()
        self.path = Path(path)
        spec = load_spec(self.path)
        self.metadata = metadata_of(spec, self.path)
        self.input_names = [i.name for i in spec.description.input]
        self.output_names = [o.name for o in spec.description.output]
        if INPUT_NAME not in self.input_names:
            raise ModelFileError(f"{path} has inputs {self.input_names}, not {INPUT_NAME!r}; re-export it with "
                                 f"python -m deim_edge.export --target coreml")
        if platform.system() != "Darwin":
            raise ModelFileError(
                f"CoreML runs on Apple platforms only (macOS/iOS); this machine is {platform.system()} "
                f"({platform.machine()}): use the .onnx/.tflite/.xml export here. The metadata of {self.path.name} "
                f"can still be read with deim_edge.formats.read_metadata")
        try:
            self.model = ct.models.MLModel(str(self.path), compute_units=ct.ComputeUnit[units])
        except Exception as e:  # noqa: BLE001 -- Core ML reports compile and load failures untyped
            raise ModelFileError(f"Core ML cannot load {path}: {e}") from e
        self._shape = tuple(int(d) for d in spec.description.input[self.input_names.index(INPUT_NAME)]
                            .type.multiArrayType.shape)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if self._shape and tuple(images.shape) != self._shape:
            raise ImageError(f"this CoreML model takes a batch of shape {list(self._shape)}, got {list(images.shape)}")
        outputs = self.model.predict({INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})
        return {name: _as_layout_dtype(name, outputs[name]) for name in self.output_names}


def _as_layout_dtype(name: str, value: np.ndarray) -> np.ndarray:
    """Labels as int64, everything else float32 (Core ML gives int32 labels and may give float16)."""
    return np.asarray(value, dtype=np.int64 if name == "labels" else np.float32)
