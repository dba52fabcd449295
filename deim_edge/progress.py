"""Progress of long work on stderr: a counter with rate and time left, or a line per step."""

from __future__ import annotations

import sys
import time


class Progress:
    """`with Progress(total, "export") as p: ... p.update(note=name)`; total None: unknown length.

    Redraws in place on a terminal; elsewhere (logs, CI) prints at most one line every `every` s.
    """

    def __init__(self, total: int | None, desc: str, every: float = 5.0, stream=None) -> None:
        self.total, self.desc, self.every = total, desc, every
        self.stream = stream or sys.stderr
        self.count = 0
        self.start = self.last = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __enter__(self) -> "Progress":
        return self

    def update(self, n: int = 1, note: str = "") -> None:
        self.count += n
        now = time.perf_counter()
        if self.tty or now - self.last >= self.every or self.count == self.total:
            self.last = now
            self._draw(note, now)

    def _draw(self, note: str, now: float) -> None:
        elapsed = now - self.start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        done = f"{self.count}/{self.total}" if self.total else f"{self.count}"
        left = f", {(self.total - self.count) / rate:.0f}s left" if self.total and rate > 0 else ""
        line = f"{self.desc}: {done} ({rate:.1f}/s{left}) {note}".rstrip()
        self.stream.write(f"\r{line}\033[K" if self.tty else f"{line}\n")
        self.stream.flush()

    def __exit__(self, *exc) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def step(message: str) -> None:
    """One line about a step of long work (export, calibration...)."""
    print(message, file=sys.stderr, flush=True)
