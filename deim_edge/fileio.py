"""Writing files so that readers never see half of one: write to a temporary name, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from .errors import OutputPathError


def check_output(path: str | os.PathLike, folder: bool = False, replace: bool = True) -> Path:
    """Raise OutputPathError unless `path` can be written: as a file (`folder=False`: not an existing folder,
    nor an existing file when `replace` is False) or as a folder (`folder=True`: not an existing file). The
    nearest existing ancestor must be a folder where a file can be made (probed with a temporary file; the
    missing folders are created on writing). Call it before long work starts. Returns the path."""
    path = Path(path)
    what = "folder" if folder else "file"
    if path.exists():
        if folder and not path.is_dir():
            raise OutputPathError(f"the output folder {path} is a file; give a folder path")
        if not folder and path.is_dir():
            raise OutputPathError(f"the output file {path} is a folder; give a file path")
        if not folder and not replace:
            raise OutputPathError(f"the output file {path} exists; remove it or give another path")
    parent = path if folder and path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(f"cannot write the output {what} {path}: {parent} is a file, not a folder")
    try:  # a probe file: permissions, read-only mounts and /proc-like folders alike
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise OutputPathError(f"cannot write the output {what} {path}: {parent} is not writable "
                              f"({e.strerror}); give another path") from None
    return path


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


@contextlib.contextmanager
def staged_output(dest: str | os.PathLike) -> Iterator[Path]:
    """Like atomic_path, for artifacts that are several files (model.xml + model.bin) or a folder
    (model.mlpackage): yield `dest`'s name inside a fresh staging folder beside it; the writer puts
    there whatever it makes. On success every entry is renamed into dest's folder (companions first,
    the entry named like dest last, a folder replacing the old one); on failure the staging folder
    is removed, so no half-written artifact is ever visible."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.{uuid.uuid4().hex[:12]}.staging"
    staging.mkdir()
    try:
        yield staging / dest.name
        for entry in sorted(staging.iterdir(), key=lambda p: p.name == dest.name):
            _replace(entry, dest.parent / entry.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(src: Path, dst: Path) -> None:
    """os.replace that also replaces an existing folder (moved aside, then removed)."""
    if dst.is_dir() and not dst.is_symlink():
        old = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:12]}.old")
        os.replace(dst, old)
        try:
            os.replace(src, dst)
        except OSError:
            os.replace(old, dst)  # put the old one back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def artifact_size_mb(path: str | os.PathLike) -> float | None:
    """An artifact's size in MB: a file, a folder (an .mlpackage, a TensorRT bundle), or an OpenVINO .xml
    with its .bin; None when it does not exist."""
    path = Path(path)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
    elif path.is_file():
        files = [path] + ([path.with_suffix(".bin")] if path.suffix.lower() == ".xml" else [])
    else:
        return None
    return sum(p.stat().st_size for p in files if p.is_file()) / 1e6
