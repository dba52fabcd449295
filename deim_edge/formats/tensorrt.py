"""The deim-edge TensorRT files, read and written in pure Python (no tensorrt): engine files and bundle folders.

Engine file (`.engine`), format 1:

    bytes 0-7     magic b"DEIMTRT\\x00"
    bytes 8-11    n, the header's length: unsigned 32-bit little-endian
    bytes 12-     the header: n bytes of UTF-8 JSON, an object with
                    "format": 1, "producer": "deim-edge 0.1.0",
                    "deim_edge": the artifact metadata (ArtifactMetadata.to_json(), as an object),
                    "tensorrt": the version of TensorRT that built the engine, e.g. "10.3.0.30",
                    "device": {"name": "Orin", "compute_capability": "8.7"},
                    "precision": "fp32" | "fp16" | "int8", "fp32_layers": layers kept in FP32 (fp16/int8 engines),
                    "dla_core": null | int, "batch": null (static) | {"min", "opt", "max"} (dynamic),
                    "onnx_sha256": hex digest of the ONNX file the engine was built from
    then          the serialized engine (what IBuilder.build_serialized_network returns), to the end

A raw engine (trtexec --saveEngine) has no header: its metadata is the metadata.json (or <name>.json) beside it,
as in a TensorRT bundle.

TensorRT bundle (`<name>.trt/`, written by the export where no engine can be built): <name>.onnx (the
TensorRT-ready graph, metadata embedded), metadata.json, build.json (the file names and the BuildOptions),
build.sh (the trtexec command) and README.txt. BuildOptions, how an engine is built, is part of both records
(build.json, the engine header).
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from .. import __version__
from ..errors import ConfigError, ModelFileError
from ..fileio import atomic_path
from ..metadata import TOPK, ArtifactMetadata

PRECISIONS = ("fp32", "fp16", "int8")  # int8: an explicit-precision (QDQ) graph, the rest FP16
DEFAULT_MAX_BATCH = 8  # of the optimization profile of a dynamic-batch engine (min 1, opt = max)
TOPK_MAX_K = 3840  # TensorRT's ITopKLayer limit


@dataclass(frozen=True)
class BuildOptions:
    """precision ("fp32" | "fp16" | "int8"), workspace_gb (TensorRT's workspace memory pool), dla_core (a Jetson
    DLA core, with GPU fallback; FP16/INT8 only), max_batch (the largest batch of a dynamic-batch engine,
    default 8), timing_cache (a file that keeps layer timings between builds)."""

    precision: str = "fp16"
    workspace_gb: float = 4.0
    dla_core: int | None = None
    max_batch: int | None = None
    timing_cache: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not float(self.workspace_gb) > 0:
            raise ConfigError(f"workspace_gb must be positive, got {self.workspace_gb}")
        if self.dla_core is not None:
            if int(self.dla_core) < 0:
                raise ConfigError(f"dla_core must be 0 or more (or None), got {self.dla_core}")
            if self.precision == "fp32":
                raise ConfigError("DLA cores run FP16 or INT8 layers only: use trt-fp16 or trt-int8 with dla_core")
        if self.max_batch is not None and int(self.max_batch) < 1:
            raise ConfigError(f"max_batch must be at least 1, got {self.max_batch}")

    @classmethod
    def from_options(cls, precision: str, options: Mapping[str, Any]) -> "BuildOptions":
        """From a target's options (workspace_gb, dla_core, max_batch, timing_cache; others ignored)."""
        def given(key: str, kind: type) -> Any:
            return None if options.get(key) is None else kind(options[key])

        return cls(precision=precision, workspace_gb=float(options.get("workspace_gb", 4.0)),
                   dla_core=given("dla_core", int), max_batch=given("max_batch", int),
                   timing_cache=given("timing_cache", str))

    def batch_profile(self, metadata: ArtifactMetadata) -> tuple[int, int, int] | None:
        """(min, opt, max) batch of a dynamic-batch engine; None for a fixed batch. ConfigError for options
        that do not fit the metadata."""
        if metadata.output == TOPK and metadata.max_det > TOPK_MAX_K:
            raise ConfigError(f"TensorRT's top-k keeps at most {TOPK_MAX_K} detections; export with "
                              f"max_det <= {TOPK_MAX_K} (or decode='host')")
        if metadata.batch is not None:
            if self.max_batch is not None and self.max_batch != metadata.batch:
                raise ConfigError(f"max_batch applies to dynamic-batch engines (--dynamic-batch); this one takes "
                                  f"batches of {metadata.batch}")
            return None
        top = self.max_batch or DEFAULT_MAX_BATCH
        return 1, top, top

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


MAGIC = b"DEIMTRT\x00"
FORMAT = 1
BUNDLE_SUFFIX = ".trt"
BUILD_FILE, METADATA_FILE = "build.json", "metadata.json"


# ---------------------------------------------------------------------------------------------- engine files

def engine_header(metadata: ArtifactMetadata, **build: Any) -> dict[str, Any]:
    """The header of an engine with `metadata`; `build` says how it was built (the keys above)."""
    return {"format": FORMAT, "producer": f"deim-edge {__version__}", "deim_edge": json.loads(metadata.to_json()),
            **build}


def write_engine_file(path: Path, header: dict[str, Any], engine: bytes | memoryview) -> Path:
    """Write header + serialized engine to `path` (atomically) in the format above."""
    data = json.dumps(header, sort_keys=True).encode("utf-8")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<I", len(data)))
        f.write(data)
        f.write(engine)
    return Path(path)


def read_engine_file(path: Path) -> tuple[dict[str, Any] | None, bytes]:
    """(header, serialized engine) of a deim-edge engine file; (None, the bytes) for a file without the magic
    (a raw TensorRT engine). ModelFileError for a truncated or garbled header."""
    with open(path, "rb") as f:
        header = _read_header(f, Path(path))
        if header is None:
            f.seek(0)
        return header, f.read()


def engine_metadata(path: Path, header: dict[str, Any] | None) -> ArtifactMetadata:
    """The metadata of the engine file at `path` with `header` (read_engine_file's): the header's, or for a raw
    engine the metadata file beside it. ModelFileError when a raw engine has none."""
    if header is not None:
        return ArtifactMetadata.from_json(json.dumps(header["deim_edge"]))
    beside = _beside(path)
    try:
        return ArtifactMetadata.from_json(beside.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelFileError(f"cannot read {beside}: {e}") from e


def _read_header(f: BinaryIO, path: Path) -> dict[str, Any] | None:
    if f.read(len(MAGIC)) != MAGIC:
        return None
    prefix = f.read(4)
    size = struct.unpack("<I", prefix)[0] if len(prefix) == 4 else None
    data = f.read(size) if size is not None else b""
    if size is None or len(data) < size:
        raise ModelFileError(f"{path} is a truncated deim-edge TensorRT engine; rebuild it")
    try:
        header = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: the deim-edge header of this TensorRT engine is garbled ({e}); "
                             f"rebuild it") from e
    if not isinstance(header, dict) or "deim_edge" not in header:
        raise ModelFileError(f"{path}: the deim-edge header of this TensorRT engine has no metadata; rebuild it")
    if int(header.get("format", FORMAT)) > FORMAT:
        raise ModelFileError(f"{path} is a deim-edge engine of format {header['format']}, newer than this deim-edge "
                             f"reads ({FORMAT}); upgrade deim-edge")
    return header


def _beside(engine: Path) -> Path:
    """The metadata file of a raw engine: <name>.json or metadata.json beside it."""
    for path in (engine.with_suffix(".json"), engine.parent / METADATA_FILE):
        if path.is_file():
            return path
    raise ModelFileError(f"{engine} is not a deim-edge TensorRT engine (no deim-edge header) and has no "
                         f"{METADATA_FILE} beside it. Build engines with python -m deim_edge.export "
                         f"--build-engine BUNDLE, or put the bundle's {METADATA_FILE} beside a trtexec engine")


# ---------------------------------------------------------------------------------------------- bundles

@dataclass(frozen=True)
class Bundle:
    """A TensorRT bundle folder as read from disk."""

    path: Path
    onnx: Path
    metadata: ArtifactMetadata
    options: BuildOptions

    @property
    def engine(self) -> Path:
        """Where --build-engine writes the engine: beside the bundle, named like it."""
        return self.path.parent / f"{self.onnx.stem}.engine"


def read_bundle(path: Path) -> Bundle:
    """The bundle at `path`; ModelFileError for a folder that is not one."""
    path = Path(path)
    build = path / BUILD_FILE
    if not path.is_dir() or not build.is_file():
        raise ModelFileError(f"{path} is not a deim-edge TensorRT bundle (a folder with {BUILD_FILE}); write one with "
                             f"python -m deim_edge.export --target trt-fp16 (on a machine without TensorRT or a GPU)")
    try:
        record = json.loads(build.read_text(encoding="utf-8"))
        options = BuildOptions(**record["options"])
        onnx = path / record["onnx"]
        metadata = ArtifactMetadata.from_json((path / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: the bundle is incomplete or damaged ({type(e).__name__}: {e}); "
                             f"export it again") from e
    if not onnx.is_file():
        raise ModelFileError(f"{path}: the bundle's ONNX file {onnx.name} is missing; export it again")
    return Bundle(path, onnx, metadata, options)


def write_bundle_record(path: Path, onnx_name: str, options: BuildOptions, metadata: ArtifactMetadata) -> None:
    """build.json and metadata.json of the bundle folder `path`."""
    record = {"format": FORMAT, "onnx": onnx_name, "engine": f"../{Path(onnx_name).stem}.engine",
              "options": options.to_json()}
    (path / BUILD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (path / METADATA_FILE).write_text(metadata.to_json() + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- the format record's

def read_metadata(path: Path) -> ArtifactMetadata:
    """The metadata of an engine file (its header, or the metadata file beside a raw engine) or of a bundle
    folder (its metadata.json), read without TensorRT."""
    path = Path(path)
    if path.is_dir():
        return read_bundle(path).metadata
    try:
        with open(path, "rb") as f:
            header = _read_header(f, path)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e}") from e
    return engine_metadata(path, header)


def write_metadata(path: Path, metadata: ArtifactMetadata) -> None:
    """Replace the metadata of an engine file (its header, rewritten in place; for a raw engine the metadata file
    beside it) or of a bundle folder (its metadata.json)."""
    path = Path(path)
    if path.is_dir():
        target = read_bundle(path).path / METADATA_FILE
    else:
        header, engine = read_engine_file(path)
        if header is not None:
            write_engine_file(path, {**header, "deim_edge": json.loads(metadata.to_json())}, engine)
            return
        target = _beside(path)
    with atomic_path(target) as tmp:
        tmp.write_text(metadata.to_json() + "\n", encoding="utf-8")
