"""A wall-clock budget for a training run (`train --time MINUTES`): how many epochs fit at the pace measured
so far, and whether one more does. The clock starts when the budget is made (the trainer makes it first, so
loading the data and the dataset check count too)."""
from __future__ import annotations

import time

import numpy as np

RECENT = 5  # epochs whose median time is the pace


class TimeBudget:
    def __init__(self, minutes: float) -> None:
        self.seconds = 60.0 * minutes
        self.started = time.perf_counter()

    def left(self) -> float:
        """Seconds left (negative once past)."""
        return self.seconds - (time.perf_counter() - self.started)

    def epochs_that_fit(self, done: int, epoch_s: float, eval_s: float) -> int:
        """The run's length in epochs: `done`, plus as many more of `epoch_s` training and `eval_s` evaluation
        seconds each as fit in what is left (at least one)."""
        return done + max(1, int(self.left() / max(epoch_s + eval_s, 1e-9)))

    def fits_another(self, history: list[dict]) -> bool:
        """Whether one more epoch's training, at the median pace of the recent ones, ends inside the budget."""
        epoch_s, _ = pace(history)
        return epoch_s is None or epoch_s <= self.left()


def pace(history: list[dict]) -> tuple[float | None, float]:
    """(training seconds an epoch, evaluation seconds an evaluated epoch): medians of the recent epoch records
    ({'train_s', 'time_s', 'AP' when evaluated}); None and 0.0 before any epoch."""
    trained = [r["train_s"] for r in history if "train_s" in r]
    evaluated = [r["time_s"] - r["train_s"] for r in history if "AP" in r and "train_s" in r]
    return (float(np.median(trained[-RECENT:])) if trained else None,
            float(np.median(evaluated[-RECENT:])) if evaluated else 0.0)
