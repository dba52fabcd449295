"""The user's INT8 choices, importable without onnx or torch (the export command line builds them)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError

DEFAULT_SIZE = 200  # calibration images when --calib-size is not given
METHODS = ("minmax", "entropy", "percentile")  # --calib-method
RECIPES = ("detr", "naive")  # --recipe: see recipe.py
DEFAULT_BUDGET = 1.0  # AP points (or agreement points) the search aims for when --max-drop is not given


@dataclass(frozen=True)
class QuantizeSettings:
    """What the user chose for an INT8 export (`python -m deim_edge.export --calib-data ...`)."""

    calib_data: str | None = None
    calib_size: int = DEFAULT_SIZE
    calib_method: str = "minmax"
    recipe: str = "detr"
    max_drop: float | None = None
    val_data: str | None = None

    def __post_init__(self) -> None:
        if self.calib_method not in METHODS:
            raise ConfigError(f"unknown --calib-method {self.calib_method!r}; choose one of: {', '.join(METHODS)}")
        if self.recipe not in RECIPES:
            raise ConfigError(f"unknown quantization recipe {self.recipe!r}; choose one of: {', '.join(RECIPES)}")
        if int(self.calib_size) < 1:
            raise ConfigError(f"--calib-size must be at least 1, got {self.calib_size}")
        if self.max_drop is not None and not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise ConfigError(f"--max-drop must be a number of AP points >= 0, got {self.max_drop}")

    def require_calibration(self, target: str) -> None:
        """ConfigError unless calibration images were given (INT8 targets)."""
        if self.calib_data is None:
            raise ConfigError(f"{target} needs calibration images: --calib-data FOLDER (or a COCO .json, a video, "
                              f"or 'synthetic')")
