"""Progress of long work on stderr: a counter with rate and time left (`Progress`), and step lines
(`step`) that print only inside a `reporting()` block, so library calls stay quiet unless asked."""

from __future__ import annotations

import contextlib
import contextvars
import sys
import time
import warnings
from typing import Iterator

_enabled: contextvars.ContextVar[float | None] = contextvars.ContextVar("deim_edge_progress", default=None)


class Progress:
    """`with Progress(total, "export") as p: ... p.update(note=name)`; total None: unknown length.

    Redraws in place on a terminal; elsewhere (logs, CI) prints at most one line every `every` s.
    """

    def __init__(self, total: int | None, desc: str, every: float = 5.0, stream=None, enabled: bool = True) -> None:
        self.total, self.desc, self.every, self.enabled = total, desc, every, enabled
        self.stream = stream or sys.stderr
        self.count = 0
        self.start = self.last = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __enter__(self) -> "Progress":
        return self

    def update(self, n: int = 1, note: str = "") -> None:
        self.count += n
        now = time.perf_counter()
        if self.enabled and (self.tty or now - self.last >= self.every or self.count == self.total):
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
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


class ExportWarning(UserWarning):
    """Something an export worked around (random weights, a simplifier that failed, ...)."""


@contextlib.contextmanager
def reporting(enabled: bool = True) -> Iterator[None]:
    """Print `step` lines on stderr inside this block, each with the seconds since it began."""
    token = _enabled.set(time.perf_counter() if enabled else None)
    try:
        yield
    finally:
        _enabled.reset(token)


def step(message: str) -> None:
    """One progress line, e.g. step('simplifying with onnxslim')."""
    start = _enabled.get()
    if start is not None:
        print(f"[{time.perf_counter() - start:6.1f}s] {message}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning the user should read (shown once per message)."""
    warnings.warn(message, ExportWarning, stacklevel=3)
