"""TFLite / LiteRT: deim-edge .tflite exports, whose metadata lives inside the flatbuffer.

Needs only ai-edge-litert (or the older tflite-runtime, or tensorflow). The converted graph takes
NHWC images; run() takes NCHW like every runtime and transposes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ConfigError, MetadataError, MissingDependencyError, ModelFileError
from ..formats.tflite import is_tflite, metadata_of
from ..metadata import OUTPUT_NAMES, ArtifactMetadata
from . import check_count, model_file

INSTALL = "pip install 'deim-edge[tflite]' (or just ai-edge-litert to run)"


def import_interpreter():
    """(Interpreter, OpResolverType) of ai-edge-litert, else tflite-runtime, else tensorflow."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
        return Interpreter, OpResolverType
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter, OpResolverType
        return Interpreter, OpResolverType
    except ImportError:
        pass
    try:
        import tensorflow as tf
        return tf.lite.Interpreter, tf.lite.experimental.OpResolverType
    except ImportError as e:
        raise MissingDependencyError(f"the TFLite backend needs ai-edge-litert: {INSTALL}") from e


class TfliteRuntime:
    """A .tflite model in a LiteRT Interpreter.

    threads: CPU threads (default: LiteRT's choice); xnnpack: apply the XNNPACK delegate (the default;
    False runs LiteRT's builtin kernels only).
    """

    name = "tflite"

    def __init__(self, path: Path, threads: int | None = None, xnnpack: bool = True) -> None:
        threads = check_count("threads", threads)
        path = model_file(Path(path))
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ModelFileError(f"cannot read {path}: {e}") from e
        if not is_tflite(data):
            raise ModelFileError(f"{path} is not a TFLite file; export one with "
                                 f"python -m deim_edge.export --target tflite")
        try:
            self.metadata = metadata_of(data, str(path))
        except MetadataError as e:
            raise ModelFileError(f"{path}: {e}") from e
        if self.metadata.output not in OUTPUT_NAMES:
            raise ModelFileError(f"{path}: unsupported output layout {self.metadata.output!r}")

        Interpreter, OpResolverType = import_interpreter()
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = Interpreter(model_path=os.fspath(path), num_threads=threads,
                                           experimental_op_resolver_type=resolver)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:  # LiteRT reports unloadable models as ValueError
            raise ModelFileError(f"{path} cannot be loaded by LiteRT: {str(e).splitlines()[0]}") from e
        self.threads, self.xnnpack = threads, xnnpack

        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1 or len(inputs[0]["shape"]) != 4:
            raise ModelFileError(f"{path}: expected one 4-D image input, got "
                                 f"{[tuple(i['shape']) for i in inputs]}")
        self._input = inputs[0]
        shape = tuple(int(s) for s in self._input["shape"])
        self.nhwc = shape[3] == 3 and shape[1] != 3  # onnx2tf makes images NHWC; H, W are multiples of 32
        self._outputs = map_outputs(self.interpreter.get_output_details(), self.metadata, path)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The NCHW batch run() takes."""
        n, a, b, c = (int(s) for s in self._input["shape"])
        return (n, c, a, b) if self.nhwc else (n, a, b, c)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape[1:]:
            raise ConfigError(f"{self.name} expects images of shape {self.input_shape}, got {images.shape}")
        if images.shape[0] != self.input_shape[0]:
            self._resize(images.shape[0])
        # straight into the input buffer, transposed on the way (no view may outlive this line: invoke checks)
        x = images.transpose(0, 2, 3, 1) if self.nhwc else images
        np.copyto(self.interpreter.tensor(self._input["index"])(), x)
        self.interpreter.invoke()
        out = {}
        for name, index in self._outputs.items():
            value = self.interpreter.get_tensor(index)
            out[name] = value.astype(np.int64) if name == "labels" else value.astype(np.float32, copy=False)
        return out

    def _resize(self, batch: int) -> None:
        """Another batch size, where the model allows it (a batch dimension of -1)."""
        signature = self._input.get("shape_signature")
        if signature is None or int(signature[0]) != -1:
            raise ConfigError(f"this TFLite model has a fixed batch of {self.input_shape[0]}, got {batch} images")
        shape = [batch, *(int(s) for s in self._input["shape"][1:])]
        self.interpreter.resize_tensor_input(self._input["index"], shape, strict=True)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]


def map_outputs(details: list[dict], metadata: ArtifactMetadata, path: Path) -> dict[str, int]:
    """{layout name: tensor index}: by tensor name (deim-edge exports name them), else by shape and dtype."""
    wanted = OUTPUT_NAMES[metadata.output]
    by_name = {d["name"]: d["index"] for d in details}
    if all(n in by_name for n in wanted):
        return {n: by_name[n] for n in wanted}
    c = metadata.num_classes

    def fits(name: str, d: dict) -> bool:
        shape, integer = tuple(int(s) for s in d["shape"]), np.issubdtype(d["dtype"], np.integer)
        if name == "labels":
            return integer and len(shape) == 2
        if name == "scores":
            return not integer and len(shape) == 2
        if name == "logits":
            return not integer and len(shape) == 3 and shape[2] == c
        return not integer and len(shape) == 3 and shape[2] == 4  # boxes

    candidates = {n: [d["index"] for d in details if fits(n, d)] for n in wanted}
    chosen = {}
    for n in sorted(wanted, key=lambda n: len(candidates[n])):  # the least ambiguous first
        left = [i for i in candidates[n] if i not in chosen.values()]
        if not left:
            break
        chosen[n] = left[0]
    if len(chosen) != len(wanted) or len(details) != len(wanted):
        found = [(d["name"], tuple(int(s) for s in d["shape"]), np.dtype(d["dtype"]).name) for d in details]
        raise ModelFileError(f"{path}: cannot find the {metadata.output} outputs {', '.join(wanted)} among {found}; "
                             f"export it again with python -m deim_edge.export --target tflite")
    return chosen
