"""The exceptions deim-edge raises for bad input; each message says what to do next."""


class DeimEdgeError(Exception):
    """Base class of every error deim-edge raises on purpose."""


class UnknownVariantError(DeimEdgeError, KeyError):
    """A variant name that is not one of the eight DEIMv2 variants."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(DeimEdgeError):
    """A checkpoint file that is missing, corrupt, or made for another model."""


class ConfigError(DeimEdgeError, ValueError):
    """An option value that cannot work (e.g. num_classes 0)."""


class InputSizeError(DeimEdgeError, ValueError):
    """An input size the model cannot run (DEIMv2 needs multiples of 32)."""


class DownloadError(DeimEdgeError):
    """A download that failed or whose content did not match its expected hash."""


class MissingDependencyError(DeimEdgeError, ImportError):
    """An optional dependency that is not installed; the message names the extra to install."""


class MetadataError(DeimEdgeError):
    """An artifact whose deim-edge metadata is missing fields or malformed."""


class ModelFileError(DeimEdgeError):
    """A model file that is missing, corrupt, not a model, or of an unsupported kind."""


class CudaUnavailableError(DeimEdgeError):
    """No usable CUDA GPU (no NVIDIA driver, no device, or the device index out of range)."""


class ImageError(DeimEdgeError, ValueError):
    """An image input that cannot be read or used (not an image, empty, wrong shape or type)."""


class OutputPathError(DeimEdgeError, ValueError):
    """An output path that cannot be written (a file where a folder is needed, no permission, ...)."""


class ExportError(DeimEdgeError):
    """An export that failed; no file is left at the output path."""


class CalibrationError(DeimEdgeError, ValueError):
    """Calibration data that cannot be used (no readable images, a video without frames, ...)."""


class AccuracyGateError(ExportError):
    """An export whose measured accuracy drop exceeds --max-drop; nothing is left at the output path."""
