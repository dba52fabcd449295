"""TensorRT engines without torch: the engine file format, the build options, the FP16-sensitive layers
kept in FP32, the version gate, the engine-cache key, and building an engine from ONNX with the TensorRT
Python API. Shared by the runtime (which builds engines for ONNX files and bundles) and the export.

Engine file (`.engine`), format 1; the runtime reads the header without TensorRT:

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

A raw engine (trtexec --saveEngine) has no header: the runtime reads one only with the artifact's
metadata.json beside it (as in a TensorRT bundle).

TensorRT bundle (`<name>.trt/`, written by the export where no engine can be built): <name>.onnx (the
TensorRT-ready graph, metadata embedded), metadata.json, build.json (the BuildOptions below and the file
names), build.sh (the trtexec command) and README.txt.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from .. import __version__
from ..errors import ConfigError, ExportError, MissingDependencyError, ModelFileError
from ..fileio import atomic_path
from ..metadata import METADATA_KEY, TOPK, ArtifactMetadata
from ..progress import step, warn

MAGIC = b"DEIMTRT\x00"
FORMAT = 1
BUNDLE_SUFFIX = ".trt"
BUILD_FILE, METADATA_FILE = "build.json", "metadata.json"
PRECISIONS = ("fp32", "fp16", "int8")  # int8: an explicit-precision (QDQ) graph, the rest FP16
DEFAULT_MAX_BATCH = 8  # of the optimization profile of a dynamic-batch engine (min 1, opt = max)
TOPK_MAX_K = 3840  # TensorRT's ITopKLayer limit

INSTALL = "pip install 'deim-edge[tensorrt]' (on Jetson: TensorRT comes with JetPack)"
MIN_VERSION = (8, 6)  # native GridSample (IGridSampleLayer) came with TensorRT 8.6
BAD_FP16_VERSIONS = ((10, 4),)  # FP16 DEIMv2/D-FINE engines with wrong outputs (see README.txt of a bundle)

# Where FP16 breaks DETR-style detectors (reports against TensorRT 10.4 and D-FINE/DEIM/RT-DETR forums):
# attention scores and softmax, the sampling offsets and locations of the deformable attention (a pixel
# error grows with the feature map), RMSNorm (x^2 overflows FP16 above 256), the box-distribution softmax
# and integral (FDR), and the query selection. Rules match the scope of ONNX node names as
# torch.onnx.export writes them ("/model/decoder/decoder/layers.0/cross_attn/Softmax"), which the ONNX
# parser keeps as TensorRT layer and tensor names. Bump FP32_RULES_VERSION when the rules change: it is
# part of the engine-cache key.
FP32_RULES_VERSION = 1
FP32_RULES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((reason, re.compile(pattern)) for reason, pattern in (
    ("the hybrid encoder's transformer layer (AIFI, N to X): the first attention",
     r"^/model/encoder/encoder\.\d+/"),
    ("the ViT backbone's first block: attention and its LayerNorms (S to X)",
     r"^/model/backbone/[^/]+/blocks\.0/(attn|norm\d?)/"),
    ("the decoder's first layer", r"^/model/decoder/decoder/layers\.0/"),
    ("deformable cross-attention in every decoder layer: sampling offsets, attention-weight softmax, locations",
     r"^/model/decoder/decoder/layers\.\d+/cross_attn/"),
    ("RMSNorm in every decoder layer", r"^/model/decoder/decoder/layers\.\d+/(norm\d*|gateway/norm)/"),
    ("decoder heads, box distributions and their integral (FDR), box refinement, LQE",
     r"^/model/decoder/decoder/(?!layers\.)"),
    ("query selection: encoder heads, anchors, top-k", r"^/model/decoder/(?!decoder/)"),
    ("the decode in the graph: top-k, sigmoid, box corners", r"^/[^/]+$"),
))


def fp32_reason(name: str) -> str | None:
    """Why the layer (ONNX node or TensorRT layer/tensor) `name` stays FP32 in FP16 engines, or None."""
    for reason, pattern in FP32_RULES:
        if pattern.search(name):
            return reason
    return None


def fp32_names(names: Iterable[str]) -> list[str]:
    """The names the FP32 rules select, in the order given."""
    return [n for n in names if fp32_reason(n) is not None]


# ---------------------------------------------------------------------------------------------- version gate

def parse_version(version: str) -> tuple[int, ...]:
    """(10, 4, 0, 26) from "10.4.0.26"; the leading numbers of each dot-separated part."""
    parts = []
    for part in str(version).split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        parts.append(int(match.group()))
    if not parts:
        raise ConfigError(f"cannot read the TensorRT version {version!r}")
    return tuple(parts)


def check_version(version: str, precision: str) -> tuple[int, ...]:
    """The parsed `version`; MissingDependencyError for TensorRT versions that cannot build DEIMv2, a warning
    for those known to build wrong engines at `precision`."""
    v = parse_version(version)
    if v[:2] < MIN_VERSION:
        raise MissingDependencyError(
            f"TensorRT {version} has no native GridSample, which DEIMv2's decoder needs: use TensorRT "
            f"{'.'.join(map(str, MIN_VERSION))} or newer (JetPack 6 on Jetson; pip install -U 'deim-edge[tensorrt]')")
    if precision in ("fp16", "int8") and v[:2] in BAD_FP16_VERSIONS:
        warn(f"TensorRT {version}: FP16 engines of DEIMv2-like detectors built by TensorRT "
             f"{'.'.join(map(str, v[:2]))}.x are known to give wrong or empty detections. deim-edge keeps the "
             f"sensitive layers in FP32, the reported fix; if detections still look wrong, use TensorRT 10.3 "
             f"or 10.6+, or the trt-fp32 target")
    return v


def import_tensorrt():
    """The tensorrt module; MissingDependencyError naming the extra when it is not installed."""
    try:
        import tensorrt
    except ImportError as e:
        raise MissingDependencyError(f"the TensorRT backend needs tensorrt: {INSTALL}") from e
    return tensorrt


# ---------------------------------------------------------------------------------------------- build options

@dataclass(frozen=True)
class DeviceInfo:
    """The CUDA device an engine is built for: engines run only where TensorRT and GPU match."""

    name: str
    compute_capability: str  # "8.7"
    index: int = 0


@dataclass(frozen=True)
class BuildOptions:
    """How an engine is built: precision ("fp32" | "fp16"), workspace_gb (TensorRT's workspace memory
    pool), dla_core (a Jetson DLA core, with GPU fallback; FP16 only), max_batch (the largest batch of a
    dynamic-batch engine, default 8), timing_cache (a file that keeps layer timings between builds)."""

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
    def from_options(cls, precision: str, options: dict[str, Any]) -> "BuildOptions":
        """From a target's options (workspace_gb, dla_core, max_batch, timing_cache; others ignored)."""
        return cls(precision=precision, workspace_gb=float(options.get("workspace_gb", 4.0)),
                   dla_core=None if options.get("dla_core") is None else int(options["dla_core"]),
                   max_batch=None if options.get("max_batch") is None else int(options["max_batch"]),
                   timing_cache=None if options.get("timing_cache") is None else str(options["timing_cache"]))

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


def engine_cache_key(onnx_sha256: str, options: BuildOptions, tensorrt_version: str, device: DeviceInfo) -> str:
    """The key of a cached engine: it changes with the ONNX bytes, the precision and batch profile, the
    TensorRT version, the GPU (name and compute capability), and the FP32 rules."""
    record = {"onnx_sha256": onnx_sha256, "precision": options.precision, "dla_core": options.dla_core,
              "max_batch": options.max_batch, "tensorrt": tensorrt_version, "gpu": device.name,
              "compute_capability": device.compute_capability, "format": FORMAT, "fp32_rules": FP32_RULES_VERSION}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- engine files

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
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        return None, data
    start = len(MAGIC) + 4
    if len(data) < start:
        raise ModelFileError(f"{path} is a truncated deim-edge TensorRT engine; rebuild it")
    (size,) = struct.unpack("<I", data[len(MAGIC):start])
    if len(data) < start + size:
        raise ModelFileError(f"{path} is a truncated deim-edge TensorRT engine; rebuild it")
    try:
        header = json.loads(data[start:start + size].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{path}: the deim-edge header of this TensorRT engine is garbled ({e}); "
                             f"rebuild it") from e
    if not isinstance(header, dict) or "deim_edge" not in header:
        raise ModelFileError(f"{path}: the deim-edge header of this TensorRT engine has no metadata; rebuild it")
    if int(header.get("format", FORMAT)) > FORMAT:
        raise ModelFileError(f"{path} is a deim-edge engine of format {header['format']}, newer than this deim-edge "
                             f"reads ({FORMAT}); upgrade deim-edge")
    return header, data[start + size:]


def header_metadata(header: dict[str, Any]) -> ArtifactMetadata:
    """The artifact metadata kept in an engine header."""
    return ArtifactMetadata.from_json(json.dumps(header["deim_edge"]))


# ---------------------------------------------------------------------------------------------- ONNX and bundles

def onnx_metadata(data: bytes) -> ArtifactMetadata | None:
    """The deim-edge metadata embedded in ONNX model bytes (metadata_props), read without the onnx package;
    None when there is none. ModelFileError for bytes that are not an ONNX model."""
    try:
        props = _onnx_metadata_props(data)
    except (ValueError, IndexError, UnicodeDecodeError) as e:
        raise ModelFileError(f"not an ONNX model ({e})") from e
    return ArtifactMetadata.from_json(props[METADATA_KEY]) if METADATA_KEY in props else None


def _onnx_metadata_props(data: bytes) -> dict[str, str]:
    """ModelProto.metadata_props (field 14, entries key=1, value=2) from the protobuf wire format."""
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
    """build.json and metadata.json of a bundle folder."""
    record = {"format": FORMAT, "onnx": onnx_name, "engine": f"../{Path(onnx_name).stem}.engine",
              "options": options.to_json()}
    (path / BUILD_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (path / METADATA_FILE).write_text(metadata.to_json() + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------- building

def build_engine(onnx: bytes, metadata: ArtifactMetadata, options: BuildOptions, device: DeviceInfo,
                 gate: bool = True) -> tuple[dict[str, Any], bytes]:
    """(header, serialized engine) of the ONNX model bytes `onnx` built on `device` (the current CUDA
    device) with the TensorRT Python API. In FP16 the layers the FP32 rules select keep FP32 (precision and
    output types, obeyed). ExportError when TensorRT cannot parse or build. gate: check the TensorRT
    version first (check_version; callers that did already pass False)."""
    trt = import_tensorrt()
    if gate:
        check_version(trt.__version__, options.precision)
    profile = options.batch_profile(metadata)
    logger = _logger(trt)
    builder = trt.Builder(logger)
    major = parse_version(trt.__version__)[0]
    # TensorRT 10 networks are always explicit-batch; 8.x needs the flag for ONNX
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    step(f"parsing the ONNX graph with TensorRT {trt.__version__}")
    if not parser.parse(onnx):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse the ONNX graph: {errors or logger.last_errors()}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    if options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        if options.precision == "int8":  # the graph's Q/DQ scales are used, no calibrator (explicit precision)
            config.set_flag(trt.BuilderFlag.INT8)
        kept = constrain_fp32(trt, network, config if options.dla_core is not None else None)
        if kept:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means FP32: TF32 convolutions drift ~1e-3
        kept = []
    images = network.get_input(0)
    if profile is not None:
        if images.shape[0] != -1:
            raise ExportError(f"the metadata says dynamic batch but the ONNX input has a fixed batch "
                              f"{images.shape[0]}; export again")
        p = builder.create_optimization_profile()
        shape = tuple(images.shape)[1:]
        p.set_shape(images.name, (profile[0], *shape), (profile[1], *shape), (profile[2], *shape))
        config.add_optimization_profile(p)
    if options.dla_core is not None:
        cores = builder.num_DLA_cores
        if options.dla_core >= cores:
            raise ConfigError(f"dla_core {options.dla_core}: this device has {cores or 'no'} DLA cores"
                              + (f" (0 to {cores - 1})" if cores else " (DLA is on Jetson AGX Orin and Orin NX)"))
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(options.dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache = _load_timing_cache(config, options.timing_cache)

    step(f"building the TensorRT {options.precision} engine on {device.name}"
         + (f" ({len(kept)} layers kept in FP32)" if kept else "")
         + (f", batch {profile[0]}-{profile[2]}" if profile else "") + "; this takes minutes on a Jetson")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None and kept:
        warn("TensorRT found no engine that obeys the FP32 layer constraints; building again with them "
             f"as preferences ({logger.last_errors()})")
        config.clear_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT {trt.__version__} could not build the engine: {logger.last_errors()}. "
                          f"If it ran out of memory, raise workspace_gb (now {options.workspace_gb:g})")
    if cache is not None:
        _save_timing_cache(config, Path(options.timing_cache))
    header = {
        "format": FORMAT, "producer": f"deim-edge {__version__}",
        "deim_edge": json.loads(metadata.with_(precision=options.precision).to_json()),
        "tensorrt": trt.__version__,
        "device": {"name": device.name, "compute_capability": device.compute_capability},
        "precision": options.precision, "fp32_layers": len(kept), "dla_core": options.dla_core,
        "batch": None if profile is None else dict(zip(("min", "opt", "max"), profile)),
        "onnx_sha256": hashlib.sha256(onnx).hexdigest(),
    }
    return header, bytes(memoryview(serialized))


def constrain_fp32(trt, network, config=None) -> list[str]:
    """Keep the layers the FP32 rules select (by layer name or output tensor name) in FP32: layer.precision
    and the output types of their float outputs. With a DLA `config`, also pin them to the GPU (DLA has no
    FP32). Returns the names of the layers constrained."""
    floats = (trt.float32, trt.float16)
    skip = {getattr(trt.LayerType, t) for t in ("CONSTANT", "SHAPE", "ASSERTION", "CAST") if hasattr(trt.LayerType, t)}
    kept = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in skip:
            continue
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if not any(fp32_reason(name) for name in [layer.name, *(t.name for t in outputs)]):
            continue
        inputs = [t for t in (layer.get_input(j) for j in range(layer.num_inputs)) if t is not None]
        if not any(t.dtype in floats for t in inputs + outputs):
            continue
        if any(getattr(t, "is_shape_tensor", False) for t in outputs):
            continue
        layer.precision = trt.float32
        for j, t in enumerate(outputs):
            if t.dtype in floats:
                layer.set_output_type(j, trt.float32)
        if config is not None:
            config.set_device_type(layer, trt.DeviceType.GPU)
        kept.append(layer.name)
    return kept


def _parser_error(error) -> str:  # noqa: ANN001 -- a tensorrt.ParserError
    try:
        return f"node {error.node()}: {error.desc()}"
    except Exception:  # noqa: BLE001 -- older bindings: the error's own text
        return str(error)


def _logger(trt):
    """A TensorRT logger that keeps the errors (for exception messages) and shows them as progress steps."""

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:  # noqa: ANN001 -- called by TensorRT
            if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                self.errors.append(str(msg))
                step(f"TensorRT: {msg}")

        def last_errors(self) -> str:
            return " | ".join(self.errors[-3:]) or "no error message (set TensorRT's logger to VERBOSE to see more)"

    return Logger()


def _load_timing_cache(config, path: str | None):
    """Start from the timing cache file at `path` (if it exists) and make it the config's; None without one."""
    if path is None:
        return None
    file = Path(path).expanduser()
    previous = b""
    if file.is_file():
        previous = file.read_bytes()
        step(f"reusing the timing cache {file} ({len(previous) / 1e6:.1f} MB)")
    try:
        cache = config.create_timing_cache(previous)
    except Exception:  # noqa: BLE001 -- TensorRT rejects caches of other versions in its own ways
        cache = None
    if cache is None and previous:
        warn(f"the timing cache {file} is not readable by this TensorRT; starting a new one")
        cache = config.create_timing_cache(b"")
    if cache is not None:
        config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _save_timing_cache(config, path: Path) -> None:
    file = path.expanduser()
    try:
        with atomic_path(file) as tmp:
            tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    except OSError as e:  # the engine is built: losing the cache must not lose it
        warn(f"could not save the timing cache {file}: {e}")
        return
    step(f"saved the timing cache {file}")
