"""PyTorch: run a .pth checkpoint directly, for parity checks and development."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ConfigError, CudaUnavailableError, MissingDependencyError
from ..metadata import COCO_CLASSES, RAW, ArtifactMetadata


class TorchRuntime:
    """A DEIMv2 checkpoint (official or deim-edge format) as a deployed PyTorch model.

    variant, input_size, class_names: what a deim-edge training checkpoint records, else the variant guessed from
    the weights, its input size, and COCO's names for 80 classes ("class0", ... otherwise); device: "cpu", ...
    """

    name = "torch"

    def __init__(self, path: Path, variant: str | None = None, input_size: int | tuple[int, int] | None = None,
                 device: str = "cpu", class_names: list[str] | None = None) -> None:
        try:
            import torch
        except ImportError as e:
            raise MissingDependencyError("running a .pth checkpoint needs PyTorch: pip install 'deim-edge[torch]'; "
                                         "or export it: python -m deim_edge.export --checkpoint ...") from e
        from ..models.checkpoint import load_checkpoint, read_checkpoint, variant_of

        self._torch = torch
        try:
            device = torch.device(device)
        except RuntimeError:
            raise ConfigError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
        if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
            raise CudaUnavailableError(f"device {str(device)!r}: torch sees {torch.cuda.device_count()} CUDA GPUs; "
                                       "use device='cpu'")
        state, record = read_checkpoint(path)
        variant = variant_of(state, record, variant, path).name
        input_size = input_size or record.input_size
        class_names = class_names or record.class_names
        self.model = load_checkpoint(state, variant, input_size=input_size).deploy().to(device)
        self.device = device
        num_classes = self.model.decoder.num_classes
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"{len(class_names)} class_names given for a model of {num_classes} classes; give one "
                              "name per class")
        names = class_names or (COCO_CLASSES if num_classes == 80 else [f"class{i}" for i in range(num_classes)])
        self.metadata = ArtifactMetadata.for_variant(variant, input_size=self.model.input_size, class_names=names,
                                                     batch=None)

    @classmethod
    def of(cls, model, metadata: ArtifactMetadata) -> TorchRuntime:
        """A deployed in-memory model run as the runtime of an artifact with `metadata` (its FP32 reference)."""
        import torch

        runtime = cls.__new__(cls)
        runtime._torch, runtime.model, runtime.device = torch, model, "cpu"
        runtime.metadata = metadata.with_(batch=None, output=RAW, precision="fp32")
        return runtime

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with self._torch.inference_mode():
            out = self.model(self._torch.from_numpy(images).to(self.device))
        return {"logits": out["pred_logits"].float().cpu().numpy(), "boxes": out["pred_boxes"].float().cpu().numpy()}
