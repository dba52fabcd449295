"""The deim-edge metadata of ONNX files: a metadata_props entry under METADATA_KEY.

Written with the onnx package (export); read without it (runtimes, the bench): ModelProto.metadata_props
(field 14, entries key = 1, value = 2) straight from the protobuf wire format.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .. import __version__
from ..errors import ModelFileError
from ..fileio import atomic_path
from ..metadata import METADATA_KEY, ArtifactMetadata

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
    """Replace the record inside the ONNX file at `path` (written beside it, then renamed over it)."""
    import onnx

    proto = onnx.load(str(path))
    embed(proto, metadata)
    with atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))


def read_onnx_metadata(data: bytes) -> ArtifactMetadata | None:
    """The metadata embedded in ONNX model bytes; None when there is none. ModelFileError for bytes that are
    not an ONNX model."""
    try:
        props = _metadata_props(data)
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ModelFileError(f"not an ONNX model ({e})") from e
    return ArtifactMetadata.from_json(props[METADATA_KEY]) if METADATA_KEY in props else None


def _metadata_props(data: bytes) -> dict[str, str]:
    props = {}
    for field, value in _fields(data, 0, len(data)):
        if field == 14 and isinstance(value, tuple):
            entry = {f: bytes(data[v[0]:v[1]]).decode("utf-8") for f, v in _fields(data, *value)
                     if f in (1, 2) and isinstance(v, tuple)}
            props[entry.get(1, "")] = entry.get(2, "")
    return props


def _fields(data: bytes, start: int, end: int) -> Iterable[tuple[int, int | tuple[int, int]]]:
    """(field number, varint value or (start, end) of a length-delimited value) of one protobuf message."""
    i = start
    while i < end:
        key, i = _varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            yield field, value
        elif wire == 1:
            i += 8
        elif wire == 2:
            size, i = _varint(data, i)
            if i + size > end:
                raise ValueError("a field runs past the end of its message")
            yield field, (i, i + size)
            i += size
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"protobuf wire type {wire}")
    if i != end:
        raise ValueError("a field runs past the end of its message")


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 10 bytes")
