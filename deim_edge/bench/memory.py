"""The process's memory: resident size now, and its peak since the last reset (Linux resets it through
/proc/self/clear_refs; elsewhere the peak is the process's lifetime peak)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PAGE = 4096


def rss_mb() -> float | None:
    """Resident memory now, in MB (None where the platform does not say)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return _peak_from_rusage()  # macOS, Windows: the best available stand-in
    return pages * _page_size() / 1e6


def reset_peak() -> bool:
    """Start measuring the peak afresh; False where the platform cannot (the peak is then the lifetime one)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float | None:
    """The peak resident memory since reset_peak (or since the process started), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except (OSError, ValueError):
        pass
    return _peak_from_rusage()


def _peak_from_rusage() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, KiB on Linux


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return _PAGE
