"""Building engines from ONNX with the TensorRT Python API: the version gate, the build itself (workspace, batch
profile, DLA with GPU fallback, the FP32 rules obeyed, a timing cache between builds), and the engine files of
ONNX bytes and of bundles."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ..errors import ConfigError, CudaUnavailableError, ExportError, MissingDependencyError
from ..fileio import atomic_path
from ..formats.tensorrt import BuildOptions, engine_header, read_bundle, write_engine_file
from ..metadata import ArtifactMetadata
from ..progress import step, warn
from .cuda import DeviceInfo, open_cuda
from .fp32 import fp32_reason

INSTALL = "pip install 'deim-edge[tensorrt]' (on Jetson: TensorRT comes with JetPack)"
MIN_VERSION = (8, 6)  # native GridSample (IGridSampleLayer) came with TensorRT 8.6
BAD_FP16_VERSIONS = ((10, 4),)  # FP16 DEIMv2/D-FINE engines with wrong outputs (see README.txt of a bundle)


def import_tensorrt():
    """The tensorrt module; MissingDependencyError naming the extra when it is not installed."""
    try:
        import tensorrt
    except ImportError as e:
        raise MissingDependencyError(f"the TensorRT backend needs tensorrt: {INSTALL}") from e
    return tensorrt


def parse_version(version: str) -> tuple[int, ...]:
    """(10, 4, 0, 26) from "10.4.0.26", (8, 6, 1) from "8.6.1.post1": the leading dot-separated numbers."""
    match = re.match(r"\d+(\.\d+)*", str(version))
    if match is None:
        raise ConfigError(f"cannot read the TensorRT version {version!r}")
    return tuple(int(part) for part in match.group().split("."))


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


def cuda_status(device: int = 0) -> str | None:
    """None when tensorrt is installed and CUDA device `device` is usable; otherwise what is missing."""
    try:
        import_tensorrt()
        open_cuda(device).close()
    except (MissingDependencyError, CudaUnavailableError) as e:
        return str(e)
    return None


def build_engine_file(onnx: bytes, metadata: ArtifactMetadata, options: BuildOptions, out: Path,
                      device: int = 0, gate: bool = True) -> Path:
    """Build the engine of ONNX bytes on CUDA device `device` and write it, header included, to `out`
    (gate: check the TensorRT version first, see build_engine)."""
    cuda = open_cuda(device)
    try:
        header, engine = build_engine(onnx, metadata, options, cuda.info, gate=gate)
    finally:
        cuda.close()
    return write_engine_file(out, header, engine)


def build_bundle(bundle: Path, out: Path | None = None, device: int = 0) -> Path:
    """Build the engine of a TensorRT bundle (`<name>.trt/`) on this machine, as its build.json says; writes
    `out`, by default `<name>.engine` beside the bundle. Returns the path written."""
    b = read_bundle(Path(bundle))
    import_tensorrt()
    out = Path(out) if out is not None else b.engine
    if out.suffix.lower() not in (".engine", ".plan"):
        raise ConfigError(f"the engine file {out} must end with .engine (runtimes are chosen by file suffix)")
    return build_engine_file(b.onnx.read_bytes(), b.metadata, b.options, out, device)


def build_engine(onnx: bytes, metadata: ArtifactMetadata, options: BuildOptions, device: DeviceInfo,
                 gate: bool = True) -> tuple[dict, bytes]:
    """(header, serialized engine) of the ONNX model bytes `onnx` built on `device` (the current CUDA device).
    In FP16 and INT8 the layers the FP32 rules select keep FP32 (precision and output types, obeyed). ExportError
    when TensorRT cannot parse or build. gate: check the TensorRT version first (callers that did pass False)."""
    trt = import_tensorrt()
    if gate:
        check_version(trt.__version__, options.precision)
    profile = options.batch_profile(metadata)
    logger = _logger(trt)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; 8.x needs the flag for ONNX
    explicit = parse_version(trt.__version__)[0] < 10
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if explicit else 0)
    parser = trt.OnnxParser(network, logger)
    step(f"parsing the ONNX graph with TensorRT {trt.__version__}")
    if not parser.parse(onnx):
        errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT {trt.__version__} cannot parse the ONNX graph: {errors or logger.last_errors()}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * (1 << 30)))
    kept = []
    if options.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        if options.precision == "int8":  # the graph's Q/DQ scales are used, no calibrator (explicit precision)
            config.set_flag(trt.BuilderFlag.INT8)
        kept = constrain_fp32(trt, network, config if options.dla_core is not None else None)
        if kept:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means FP32: TF32 convolutions drift ~1e-3
    images = network.get_input(0)
    if profile is not None:
        if images.shape[0] != -1:
            raise ExportError(f"the metadata says dynamic batch but the ONNX input has a fixed batch "
                              f"{images.shape[0]}; export again")
        p = builder.create_optimization_profile()
        shape = tuple(images.shape)[1:]
        p.set_shape(images.name, *((batch, *shape) for batch in profile))
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
    header = engine_header(
        metadata.with_(precision=options.precision), tensorrt=trt.__version__,
        device={"name": device.name, "compute_capability": device.compute_capability},
        precision=options.precision, fp32_layers=len(kept), dla_core=options.dla_core,
        batch=None if profile is None else dict(zip(("min", "opt", "max"), profile)),
        onnx_sha256=hashlib.sha256(onnx).hexdigest())
    return header, bytes(memoryview(serialized))


def constrain_fp32(trt, network, config=None) -> list[str]:  # noqa: ANN001 -- tensorrt objects
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


def _logger(trt):  # noqa: ANN001
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


def _load_timing_cache(config, path: str | None):  # noqa: ANN001
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


def _save_timing_cache(config, path: Path) -> None:  # noqa: ANN001
    file = path.expanduser()
    try:
        with atomic_path(file) as tmp:
            tmp.write_bytes(memoryview(config.get_timing_cache().serialize()))
    except OSError as e:  # the engine is built: losing the cache must not lose it
        warn(f"could not save the timing cache {file}: {e}")
        return
    step(f"saved the timing cache {file}")
