"""ONNX Runtime: deim-edge exports (metadata inside) and the official DEIMv2 ONNX files."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..decode import official_to_topk
from ..errors import MissingDependencyError, ModelFileError
from ..metadata import COCO_CLASSES, METADATA_KEY, OFFICIAL, ArtifactMetadata
from ..variants import VARIANTS
from . import check_count, model_file

# the tensors of the public DEIMv2 export: name -> (ONNX Runtime type, shape; None: any size)
OFFICIAL_INPUTS = {"images": ("tensor(float)", (None, 3, None, None)),  # [N,3,H,W]
                   "orig_target_sizes": ("tensor(int64)", (None, 2))}  # [N,2] (w, h)
OFFICIAL_OUTPUTS = {"labels": ("tensor(int64)", (None, None)),  # [N,K]
                    "boxes": ("tensor(float)", (None, None, 4)),  # [N,K,4] xyxy pixels
                    "scores": ("tensor(float)", (None, None))}  # [N,K]


def import_onnxruntime():
    """The onnxruntime module; MissingDependencyError naming the extra when it is not installed."""
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError("the ONNX Runtime backend needs onnxruntime: pip install 'deim-edge[onnx]' "
                                     "(or onnxruntime-gpu for CUDA)") from e
    return onnxruntime


def ort_session(model: bytes | str | Path, threads: int | None = 1, *,
                providers: Sequence[str] = ("CPUExecutionProvider",), quiet: bool = True):
    """An onnxruntime InferenceSession of `model` (a file, or a serialized ModelProto) with `threads` intra-op
    threads (None: onnxruntime's choice) on `providers`; `quiet` keeps ONNX Runtime's warnings out of the log.
    ModelFileError when ONNX Runtime cannot load the model."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if quiet:
        options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else os.fspath(model), options,
                                    providers=list(providers))
    except Exception as e:  # onnxruntime raises its own untyped errors for unreadable models
        what = "the serialized model" if isinstance(model, bytes) else str(model)
        raise ModelFileError(f"{what} is not a loadable ONNX model: {str(e).splitlines()[0]}") from e


class OnnxRuntime:
    """An ONNX model in an onnxruntime InferenceSession.

    threads: intra-op threads (default: onnxruntime's choice); providers: e.g.
    ["CUDAExecutionProvider", "CPUExecutionProvider"] (default: CPU).
    """

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int | None = None, providers: list[str] | None = None) -> None:
        self.session = ort_session(model_file(path), check_count("threads", threads),
                                   providers=providers or ["CPUExecutionProvider"], quiet=False)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        custom = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY in custom:
            self.metadata = ArtifactMetadata.from_json(custom[METADATA_KEY])
        elif set(self.input_names) == set(OFFICIAL_INPUTS) and set(self.output_names) == set(OFFICIAL_OUTPUTS):
            _check_official(path, self.session)
            self.metadata = _official_metadata(path, self.session)
        else:
            raise ModelFileError(
                f"{path} has no deim-edge metadata and is not an official DEIMv2 export (inputs "
                f"{self.input_names}, outputs {self.output_names}); export it with python -m deim_edge.export")
        self._image_input = "images" if "images" in self.input_names else self.input_names[0]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        feed = {self._image_input: images}
        if self.metadata.output == OFFICIAL:
            h, w = images.shape[2:]
            feed["orig_target_sizes"] = np.tile(np.array([[w, h]], dtype=np.int64), (images.shape[0], 1))
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, feed)))
        if self.metadata.output == OFFICIAL:
            scores, labels, boxes = official_to_topk(outputs["labels"], outputs["boxes"], outputs["scores"],
                                                     images.shape[2:])
            return {"scores": scores, "labels": labels, "boxes": boxes}
        return outputs


def _check_official(path: Path, session) -> None:
    """ModelFileError unless the tensors named like the official export's have its types and shapes."""
    wrong = []
    for arg in (*session.get_inputs(), *session.get_outputs()):
        kind, shape = {**OFFICIAL_INPUTS, **OFFICIAL_OUTPUTS}[arg.name]
        fits = len(arg.shape) == len(shape) and all(want is None or got == want for got, want in zip(arg.shape, shape))
        if arg.type != kind or not fits:
            wrong.append(f"{arg.name} is {_tensor(arg.type, arg.shape)}, not {_tensor(kind, shape)}")
    if wrong:
        raise ModelFileError(f"{path} has the official DEIMv2 export's tensor names but not its tensors ("
                             f"{'; '.join(wrong)}): it is no DEIMv2 export; export a checkpoint with "
                             "python -m deim_edge.export")


def _tensor(kind: str, shape) -> str:
    """'tensor(float)', [None, 3, 'H', 640] -> 'float [?,3,?,640]'."""
    dims = ",".join(str(d) if isinstance(d, int) else "?" for d in shape)
    return f"{kind.removeprefix('tensor(').removesuffix(')')} [{dims}]"


def _official_metadata(path: Path, session) -> ArtifactMetadata:
    """Official exports carry no metadata: take the input size from the graph, the variant (for its
    normalization) from the graph's weight shapes, and the official inference script's letterbox."""
    shape = session.get_inputs()[0].shape  # [N, 3, H, W]
    if not all(isinstance(d, int) for d in shape[2:]):
        raise ModelFileError(f"{path}: the official export's input size is not fixed ({shape}); "
                             "pass imgsz= to Detector")
    size = (shape[2], shape[3])
    variant = _official_variant(path)
    if variant is None:
        warnings.warn(f"{path.name}: could not tell which DEIMv2 variant this official export is; assuming "
                      "x/255 input (Atto to N). For S to X pass mean=(0.485, 0.456, 0.406), "
                      "std=(0.229, 0.224, 0.225) to Detector", stacklevel=3)
        return ArtifactMetadata(input_size=size, class_names=COCO_CLASSES, output=OFFICIAL, resize="letterbox",
                                batch=None, producer="DEIMv2 official export")
    return ArtifactMetadata.for_variant(variant, input_size=size, output=OFFICIAL, resize="letterbox", batch=None,
                                        producer="DEIMv2 official export")


def _official_variant(path: Path) -> str | None:
    """The variant whose structure the graph holds; None when no variant or several match, or without onnx.

    Told by weight shapes, which constant folding, BatchNorm fusion, onnxsim and onnxslim keep; the number of
    weights is no guide (0.8 to 1.05 of the deploy parameters: the exporter merges equal tensors, such as an
    untrained model's identical layers, and simplifiers fold constants in). The shapes: the decoder's
    box-distribution head [hidden, 4 * (reg_max + 1)], its SwiGLU FFN's [hidden, dim_feedforward] in and
    [dim_feedforward / 2, hidden] out (each either way round, as MatMul and Gemm store them), and a ViT's 16x16
    patch embedding exactly when the variant has one (S to X). No two variants share these, and the
    unpublished HGNetv2 S-L configs of the DEIMv2 code match none.
    """
    try:
        import onnx
    except ImportError:
        return None
    graph = onnx.load(os.fspath(path), load_external_data=False).graph
    constants = [a.t for node in graph.node if node.op_type == "Constant" for a in node.attribute if a.name == "value"]
    shapes = {tuple(t.dims) for t in (*graph.initializer, *constants)}
    matrices = shapes | {s[::-1] for s in shapes if len(s) == 2}
    patch_embedding = any(s[1:] == (3, 16, 16) for s in shapes if len(s) == 4)
    found = []
    for v in VARIANTS.values():
        d = v.decoder
        decoder = {(d.hidden_dim, 4 * (d.reg_max + 1)), (d.hidden_dim, d.dim_feedforward),
                   (d.dim_feedforward // 2, d.hidden_dim)}
        if decoder <= matrices and patch_embedding == (v.backbone.sta_channels > 0):
            found.append(v.name)
    return found[0] if len(found) == 1 else None
