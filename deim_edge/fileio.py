"""Writing files so that readers never see half of one: write to a temporary name, then rename."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an unused temporary path beside `dest` for the caller to write; on success rename it
    onto `dest`, on failure remove it. The file gets the usual permissions of new files."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # the suffix is kept for writers that choose the format by it (cv2.VideoWriter, ...)
    tmp = dest.with_name(f".{dest.stem}.{uuid.uuid4().hex[:12]}.tmp{dest.suffix}")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
