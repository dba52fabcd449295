"""Training pieces: Hungarian matching and the DEIM criterion."""
from .criterion import DEIMLoss
from .matcher import HungarianMatcher

__all__ = ["DEIMLoss", "HungarianMatcher"]
