"""Rockchip RKNN models (.rknn): their deim-edge metadata and the pixels they take, in pure Python (no toolkit).

An .rknn file holds only a short custom string, so the metadata JSON lives beside it, in <name>.json (as for raw
TensorRT engines). Its extra["rknn"] says how the model was built and what runs it:

    {"platform": "rk3588", "toolkit": "2.3.2",
     "stages": [{"file": "atto.rknn", "precision": "int8"}, {"file": "atto.decoder.rknn", "precision": "fp16"}]}

The stages run one after the other, each on the outputs of the one before (an INT8 export is two: backbone and
encoder in INT8, the decoder in FP16; see export/rknn.py), the last one giving the RAW outputs. The first stage takes
the image as uint8 NHWC RGB pixels and normalizes them inside the model with the metadata's mean and std.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MetadataError, ModelFileError
from ..fileio import atomic_path
from ..metadata import ArtifactMetadata

# the chips rknn-toolkit2 2.3.2 builds for (RKNN.config's target_platform)
PLATFORMS = ("rk2118", "rk3562", "rk3566", "rk3568", "rk3576", "rk3588", "rv1103", "rv1103b", "rv1106", "rv1106b",
             "rv1126b")
EXPORT_HINT = "export one with python -m deim_edge.export --target rknn"


def sidecar(path: Path) -> Path:
    """The metadata file of the .rknn at `path`: <name>.json beside it."""
    return Path(path).with_suffix(".json")


def read_metadata(path: Path) -> ArtifactMetadata:
    beside = sidecar(path)
    try:
        return ArtifactMetadata.from_json(beside.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(f"{path} has no deim-edge metadata beside it ({beside.name}): keep the .json the export "
                             f"wrote next to the .rknn, or {EXPORT_HINT}") from None
    except (OSError, UnicodeDecodeError, MetadataError, ValueError, TypeError) as e:
        raise ModelFileError(f"{beside}: its deim-edge metadata is unreadable ({e})") from e


def write_metadata(path: Path, metadata: ArtifactMetadata) -> None:
    with atomic_path(sidecar(path)) as tmp:
        tmp.write_text(metadata.to_json() + "\n", encoding="utf-8")


def stage_files(path: Path, metadata: ArtifactMetadata) -> list[Path]:
    """The .rknn files that run the artifact at `path`, in order; ModelFileError when one is missing."""
    stages = metadata.extra.get("rknn", {}).get("stages")
    if not stages:
        raise ModelFileError(f"{sidecar(path)} does not say which .rknn files run the model (extra.rknn.stages); "
                             f"{EXPORT_HINT}")
    files = [Path(path).with_name(stage["file"]) for stage in stages]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelFileError(f"{path} runs as {', '.join(f.name for f in files)}, but {', '.join(missing)} is not "
                             f"beside it: copy every file the export wrote")
    return files


def pixels(images: np.ndarray, metadata: ArtifactMetadata) -> np.ndarray:
    """A preprocessed batch [B, 3, H, W] float32 (Detector's) -> the uint8 [B, H, W, 3] pixels it was made from,
    which RKNN models take: the metadata's normalization undone (exact for Detector's lookup-table values)."""
    x = images.transpose(0, 2, 3, 1)
    if metadata.mean is not None:
        x = x * np.asarray(metadata.std, np.float32) + np.asarray(metadata.mean, np.float32)
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
