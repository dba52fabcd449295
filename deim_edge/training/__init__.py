"""Training DEIMv2 (torch): data, augmentation, matching and losses, solver, evaluation, the trainer.

    python -m deim_edge train --variant deimv2-atto --data synthetic --epochs 30
"""

from .criterion import DEIMLoss
from .evaluate import evaluate
from .matcher import HungarianMatcher
from .trainer import TrainConfig, Trainer

__all__ = ["DEIMLoss", "HungarianMatcher", "TrainConfig", "Trainer", "evaluate"]
