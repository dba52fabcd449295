"""DEIMv2 models as plain PyTorch modules (needs torch: pip install 'deim-edge[torch]')."""

try:
    import torch  # noqa: F401
except ImportError as e:
    from ..errors import MissingDependencyError

    raise MissingDependencyError(
        "deim_edge.models needs PyTorch: pip install 'deim-edge[torch]' (pin torch==2.13.0 in a constraints "
        "file to get the CPU build, as the README shows)") from e

from .checkpoint import load_checkpoint, read_state_dict, save_checkpoint
from .deimv2 import DEIMv2, build_model
from .flops import flops, num_params
from .pretrained import PretrainedReport, load_pretrained_backbone

__all__ = ["DEIMv2", "PretrainedReport", "build_model", "flops", "load_checkpoint", "load_pretrained_backbone",
           "num_params", "read_state_dict", "save_checkpoint"]
