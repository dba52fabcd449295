"""deim-edge: DEIMv2 detectors from training to a running edge device.

Importing the package is cheap: it never imports torch, and Detector (numpy + OpenCV) loads on
first use; `deim_edge.models` needs torch.
"""

from .errors import CheckpointError, DeimEdgeError, InputSizeError, UnknownVariantError
from .variants import VARIANTS, Variant, get_variant

__version__ = "0.1.0"

__all__ = ["VARIANTS", "CheckpointError", "DeimEdgeError", "Detections", "Detector", "InputSizeError",
           "UnknownVariantError", "Variant", "get_variant", "__version__"]


def __getattr__(name: str):
    if name == "Detector":
        from .detector import Detector

        return Detector
    if name == "Detections":
        from .results import Detections

        return Detections
    raise AttributeError(f"module 'deim_edge' has no attribute {name!r}")
