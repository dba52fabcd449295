"""The deim-edge metadata of OpenVINO IR files (.xml + .bin): the model's rt_info under METADATA_KEY.

OpenVINO's ONNX reader keeps an ONNX file's metadata_props under rt_info ["framework", METADATA_KEY], so IR
converted from a deim-edge ONNX graph (and ONNX files opened by OpenVINO) are read from there too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, ModelFileError
from ..metadata import METADATA_KEY, ArtifactMetadata

ONNX_METADATA = ["framework", METADATA_KEY]  # where OpenVINO's ONNX reader keeps ONNX metadata_props


def import_openvino():
    """The openvino module; MissingDependencyError naming the extra when it is not installed."""
    try:
        import openvino
    except ImportError as e:
        raise MissingDependencyError("the OpenVINO backend needs openvino: pip install 'deim-edge[openvino]'") from e
    return openvino


def embed(model: Any, metadata: ArtifactMetadata) -> None:
    """The record into an openvino.Model's rt_info (saved with it)."""
    model.set_rt_info(metadata.to_json(), METADATA_KEY)


def metadata_of(model: Any, path: Path) -> ArtifactMetadata:
    """The record of an openvino.Model read from `path` (used in errors)."""
    for key in (METADATA_KEY, ONNX_METADATA):
        if model.has_rt_info(key):
            return ArtifactMetadata.from_json(model.get_rt_info(key).astype(str))
    target = "onnx" if path.suffix.lower() == ".onnx" else "openvino"
    raise ModelFileError(f"{path} has no deim-edge metadata (rt_info {METADATA_KEY!r}); export it with "
                         f"python -m deim_edge.export --target {target}")


def read_metadata(path: Path) -> ArtifactMetadata:
    """The record inside the IR at `path`."""
    try:
        model = import_openvino().Core().read_model(str(path))
    except RuntimeError as e:
        raise ModelFileError(f"{path} is not a loadable OpenVINO model: {str(e).splitlines()[0]}") from e
    return metadata_of(model, path)


def write_metadata(path: Path, metadata: ArtifactMetadata) -> None:
    """Replace the record inside the IR at `path` (its .bin is rewritten beside it, weights kept as stored)."""
    ov = import_openvino()
    model = ov.Core().read_model(str(path))
    embed(model, metadata)
    staged = path.with_name(f"{path.stem}.restamp.xml")
    ov.save_model(model, str(staged), compress_to_fp16=False)  # weights are kept as stored (int8, f16, f32)
    staged.replace(path)
    staged.with_suffix(".bin").replace(path.with_suffix(".bin"))
