"""ExecuTorch programs (.pte, XNNPACK-delegated) run through ExecuTorch's Python runtime: the .pte a phone or
board runs through ExecuTorch's C++ runtime, checked here on the same machine as the other backends. The Python
runtime takes torch tensors (ExecuTorch's wheel depends on torch)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelFileError
from ..formats.executorch import load_program, metadata_of
from ..metadata import OUTPUT_NAMES
from . import check_count, model_file


class ExecutorchRuntime:
    """A .pte program's forward method; the outputs are those of the metadata's layout, in its order.

    threads: the size of ExecuTorch's thread pool (XNNPACK's threads), which is one per process: it applies to
    every program this process runs (default: ExecuTorch's choice, one per core)."""

    name = "executorch"

    def __init__(self, path: Path, threads: int | None = None) -> None:
        threads = check_count("threads", threads)
        path = model_file(Path(path))
        program = load_program(path)
        self.metadata = metadata_of(program, path)
        if self.metadata.output not in OUTPUT_NAMES:
            raise ModelFileError(f"{path}: unsupported output layout {self.metadata.output!r}")
        self.output_names = OUTPUT_NAMES[self.metadata.output]
        if threads is not None:
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

            _unsafe_reset_threadpool(threads)
        self.method = program.load_method("forward")
        import torch

        self._torch = torch

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.method.execute([self._torch.from_numpy(np.ascontiguousarray(images, np.float32))])
        return {name: out.numpy() for name, out in zip(self.output_names, outputs)}
