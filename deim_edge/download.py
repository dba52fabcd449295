"""Download weights on request only: streamed, hash-checked, written atomically, progress shown."""

from __future__ import annotations

import hashlib
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .errors import DownloadError
from .fileio import atomic_path

CHUNK = 1 << 16

# Public backbone weights the official DEIMv2 code starts training from.
HGNETV2_B0_URL = "https://github.com/Peterande/storage/releases/download/dfinev1.0/PPHGNetV2_B0_stage1.pth"


def download(url: str, dest: str | Path, sha256: str | None = None, progress: bool = True,
             timeout: float = 60.0) -> Path:
    """Fetch `url` into `dest` (kept if it exists and matches `sha256`); return the path."""
    dest = Path(dest)
    if dest.exists() and (sha256 is None or _sha256(dest) == sha256):
        return dest
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(dest) as tmp:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            with open(tmp, "wb") as f:
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        _show(dest.name, done, total)
            if progress:
                print(file=sys.stderr)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise DownloadError(
                    f"{url} arrived with sha256 {digest.hexdigest()}, expected {sha256}; "
                    "the file on the server changed or the transfer was corrupted -- retry, or "
                    "download it by hand and pass the local path")
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise DownloadError(f"could not download {url}: {e}; download it by hand and pass the local path") from e
    return dest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _show(name: str, done: int, total: int) -> None:
    if total:
        print(f"\r{name}: {done / 2**20:.1f}/{total / 2**20:.1f} MiB ({100 * done / total:.0f}%)",
              end="", file=sys.stderr)
    else:
        print(f"\r{name}: {done / 2**20:.1f} MiB", end="", file=sys.stderr)
