"""Training data: COCO-format detection sets and a synthetic shapes set."""
from .coco import CocoDetection, DatasetWarning
from .synthetic import make_synthetic_coco

__all__ = ["CocoDetection", "DatasetWarning", "make_synthetic_coco"]
