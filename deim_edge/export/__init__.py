"""Export DEIMv2 models to deployable artifacts that carry their metadata.

    from deim_edge.export import export
    export("deimv2_hgnetv2_pico_coco.pth", target="onnx")          # -> deimv2_hgnetv2_pico_coco.onnx

    python -m deim_edge.export --checkpoint deimv2_hgnetv2_pico_coco.pth --target onnx
    python -m deim_edge.export --list-targets

Importing this package needs no torch; running an export does (pip install 'deim-edge[torch,onnx]').
"""

from .api import export, read_class_names
from ..progress import ExportWarning
from .registry import Target, get_target, register, targets

__all__ = ["ExportWarning", "Target", "export", "get_target", "read_class_names", "register", "targets"]
