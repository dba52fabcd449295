"""deim-edge: DEIMv2 detectors from training to a running edge device.

Importing the package is cheap: it never imports torch; `deim_edge.models` does.
"""

from .errors import CheckpointError, DeimEdgeError, InputSizeError, UnknownVariantError
from .variants import VARIANTS, Variant, get_variant

__version__ = "0.1.0"

__all__ = ["VARIANTS", "CheckpointError", "DeimEdgeError", "InputSizeError", "UnknownVariantError", "Variant",
           "get_variant", "__version__"]
