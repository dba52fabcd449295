"""The deim-edge metadata of ONNX files: a metadata_props entry under METADATA_KEY.

Written with the onnx package (export); read without it (runtimes, the bench), from the protobuf bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import __version__
from ..errors import ModelFileError
from ..metadata import METADATA_KEY, ArtifactMetadata
from .onnx_props import read_onnx_metadata

if TYPE_CHECKING:
    import onnx


def embed(proto: onnx.ModelProto, metadata: ArtifactMetadata) -> None:
    """The metadata record under METADATA_KEY in metadata_props (replacing any there), and who produced the file."""
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {METADATA_KEY: metadata.to_json()})
    proto.producer_name = "deim-edge"
    proto.producer_version = __version__
    h, w = metadata.input_size
    proto.doc_string = f"{metadata.variant} {h}x{w}, {metadata.output} outputs"


def read_metadata(path: Path) -> ArtifactMetadata:
    """The record inside the ONNX file at `path`; ModelFileError when it has none."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e}") from e
    metadata = read_onnx_metadata(data)
    if metadata is None:
        raise ModelFileError(f"{path} has no deim-edge metadata; export it with python -m deim_edge.export")
    return metadata


def write_metadata(path: Path, metadata: ArtifactMetadata) -> None:
    """Replace the record inside the ONNX file at `path`."""
    import onnx

    proto = onnx.load(str(path))
    embed(proto, metadata)
    onnx.save(proto, str(path))
