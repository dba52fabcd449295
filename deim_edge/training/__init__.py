"""Training DEIMv2 (torch): data, augmentation, matching and losses, solver, evaluation, the trainer.

    python -m deim_edge train --variant deimv2-atto --data synthetic --epochs 30
"""

import importlib

__all__ = ["DEIMLoss", "HungarianMatcher", "TrainConfig", "Trainer", "evaluate"]
_HOME = {"DEIMLoss": "criterion", "HungarianMatcher": "matcher", "TrainConfig": "trainer", "Trainer": "trainer",
         "evaluate": "evaluate"}


def __getattr__(name: str):
    """The torch pieces load on first use, so training.data (layouts, tiles: numpy + OpenCV) needs no torch."""
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
