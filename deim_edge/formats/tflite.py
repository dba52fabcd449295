"""The deim-edge metadata of TFLite files, read in pure Python (no numpy, torch or tensorflow) and written with
the flatbuffers package and LiteRT's schema.

A .tflite file is a flatbuffer whose root table is the schema's `Model`; its `metadata` vector
holds (name, buffer index) pairs and `buffers` the bytes. deim-edge stores its ArtifactMetadata JSON
in the entry named METADATA_KEY; this module reads it back so the runtime needs only LiteRT.
Field numbers are those of tensorflow/lite/schema/schema.fbs.
"""

from __future__ import annotations

import struct
from pathlib import Path

from ..errors import ModelFileError
from ..fileio import atomic_path
from ..metadata import METADATA_KEY, ArtifactMetadata

FILE_IDENTIFIER = b"TFL3"
MODEL_BUFFERS = 4  # Model.buffers: [Buffer]
MODEL_METADATA = 6  # Model.metadata: [Metadata]
METADATA_NAME, METADATA_BUFFER = 0, 1  # Metadata.name: string, Metadata.buffer: uint
BUFFER_DATA, BUFFER_OFFSET, BUFFER_SIZE = 0, 1, 2  # Buffer.data: [ubyte]; offset/size: data outside the flatbuffer


class _Reader:
    """Bounds-checked access to the tables, vectors and scalars of one flatbuffer."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.name = data, name

    def _unpack(self, fmt: str, pos: int) -> int:
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise ModelFileError(f"{self.name} is not a valid TFLite file (truncated or corrupt flatbuffer)")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def field(self, table: int, index: int) -> int | None:
        """The position of field `index` of the table at `table`, or None when the field is absent."""
        vtable = table - self._unpack("<i", table)
        vtable_size = self._unpack("<H", vtable)
        slot = 4 + 2 * index
        if slot + 2 > vtable_size:
            return None
        offset = self._unpack("<H", vtable + slot)
        return table + offset if offset else None

    def indirect(self, pos: int) -> int:
        """Follow the uoffset at `pos` (to a table, vector or string)."""
        return pos + self._unpack("<I", pos)

    def vector(self, pos: int) -> tuple[int, int]:
        """(start of the elements, length) of the vector whose uoffset is at `pos`."""
        vec = self.indirect(pos)
        return vec + 4, self._unpack("<I", vec)

    def table_vector(self, table: int, index: int) -> list[int]:
        """The positions of the tables in vector field `index` (empty when absent)."""
        pos = self.field(table, index)
        if pos is None:
            return []
        start, length = self.vector(pos)
        return [self.indirect(start + 4 * i) for i in range(length)]

    def bytes_field(self, table: int, index: int) -> bytes | None:
        """A [ubyte] or string field."""
        pos = self.field(table, index)
        if pos is None:
            return None
        start, length = self.vector(pos)
        if start + length > len(self.data):
            raise ModelFileError(f"{self.name} is not a valid TFLite file (a vector runs past its end)")
        return bytes(self.data[start:start + length])

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        pos = self.field(table, index)
        return default if pos is None else self._unpack(fmt, pos)


def is_tflite(data: bytes) -> bool:
    """Whether `data` starts like a TFLite flatbuffer (root offset, then the "TFL3" identifier)."""
    return len(data) >= 8 and data[4:8] == FILE_IDENTIFIER


def read_entries(data: bytes, name: str = "the model") -> dict[str, bytes]:
    """{entry name: bytes} of the Model.metadata entries of a TFLite flatbuffer (`name` is used in errors).

    ModelFileError when `data` is not a TFLite flatbuffer or its metadata cannot be read.
    """
    if not is_tflite(data):
        raise ModelFileError(f"{name} is not a TFLite file (no {FILE_IDENTIFIER.decode()} identifier)")
    r = _Reader(data, name)
    model = r.indirect(0)
    buffers = r.table_vector(model, MODEL_BUFFERS)
    entries = {}
    for entry in r.table_vector(model, MODEL_METADATA):
        key = (r.bytes_field(entry, METADATA_NAME) or b"").decode("utf-8", errors="replace")
        index = r.scalar(entry, METADATA_BUFFER, "<I")
        if index >= len(buffers):
            raise ModelFileError(f"{name}: metadata entry {key!r} points at buffer {index} of {len(buffers)}")
        entries[key] = _buffer_bytes(r, buffers[index], data, name)
    return entries


def _buffer_bytes(r: _Reader, buffer: int, data: bytes, name: str) -> bytes:
    """A Buffer's bytes: inline, or (models over 2 GB) at offset/size from the start of the file."""
    offset = r.scalar(buffer, BUFFER_OFFSET, "<Q")
    if offset > 1:  # 0 and 1 both mean "no external data" in the schema
        size = r.scalar(buffer, BUFFER_SIZE, "<Q")
        if offset + size > len(data):
            raise ModelFileError(f"{name} is not a valid TFLite file (a buffer runs past its end)")
        return bytes(data[offset:offset + size])
    return r.bytes_field(buffer, BUFFER_DATA) or b""


def read_metadata(path: Path) -> ArtifactMetadata:
    """The record inside the .tflite file at `path`; ModelFileError when it has none."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e}") from e
    return metadata_of(data, str(path))


def metadata_of(data: bytes, name: str) -> ArtifactMetadata:
    """The record inside .tflite bytes (`name` is used in errors)."""
    entries = read_entries(data, name)
    if METADATA_KEY not in entries:
        raise ModelFileError(f"{name} is a TFLite file without deim-edge metadata; export it with "
                             f"python -m deim_edge.export --target tflite")
    return ArtifactMetadata.from_json(entries[METADATA_KEY])


def schema():
    """The TFLite flatbuffer schema's Python classes (LiteRT's copy, else TensorFlow's)."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tensorflow.lite.python import schema_py_generated
    return schema_py_generated


def embed(data: bytes, metadata: ArtifactMetadata, renames: dict[int, str] | None = None) -> bytes:
    """`data` (a .tflite) with the metadata JSON as Model.metadata entry METADATA_KEY (replacing one there), and
    the first subgraph's tensors renamed as `renames` says (tensor index -> name)."""
    import flatbuffers
    import numpy as np

    fb = schema()
    model = fb.ModelT.InitFromPackedBuf(bytearray(data), 0)
    for index, name in (renames or {}).items():
        model.subgraphs[0].tensors[index].name = name
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(metadata.to_json().encode("utf-8"), np.uint8)
    model.buffers.append(buffer)
    entry = fb.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    kept = [m for m in (model.metadata or []) if _text(m.name) != METADATA_KEY]
    model.metadata = [*kept, entry]
    builder = flatbuffers.Builder(len(data) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def write_metadata(path: Path, metadata: ArtifactMetadata) -> None:
    """Replace the record inside the .tflite file at `path` (written beside it, then renamed over it)."""
    data = embed(path.read_bytes(), metadata)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _text(value: str | bytes | None) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value or "")
