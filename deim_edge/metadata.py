"""The JSON record every exported artifact carries, so `Detector(path)` needs no other argument."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace

from .errors import MetadataError
from .sizes import as_hw
from .variants import Variant, get_variant

METADATA_KEY = "deim_edge"  # key of the record in an artifact's metadata (ONNX metadata_props, ...)
# extra[HALF_FLOAT_OPS]: the export measured this INT8 artifact with its float ops in the CPU's half precision
# ({"precision": "bf16", "drop": ...}) within its accuracy budget; runtimes that can may then run them so
HALF_FLOAT_OPS = "half_float_ops"
FORMAT_VERSION = 1

# Output layouts an artifact can have.
RAW = "raw"  # logits [B,Q,C] and boxes [B,Q,4] normalized cx,cy,w,h: the host decodes
TOPK = "topk"  # scores [B,K], labels [B,K], boxes [B,K,4] normalized x1,y1,x2,y2: decoded in the graph
OFFICIAL = "official"  # the public DEIMv2 export: images + orig_target_sizes in; labels, boxes (pixels), scores out
OUTPUT_LAYOUTS = (RAW, TOPK, OFFICIAL)
OUTPUT_NAMES = {RAW: ("logits", "boxes"), TOPK: ("scores", "labels", "boxes")}  # the outputs of our artifacts
RESIZE_MODES = ("stretch", "letterbox")

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)


@dataclass(frozen=True)
class ArtifactMetadata:
    """What a runtime needs to feed an artifact and read its outputs.

    Pixels go in as RGB, resized to input_size (h, w) by `resize`, scaled to [0, 1], then
    normalized by mean/std when given, laid out NCHW float32 (runtimes that need NHWC transpose).
    """

    input_size: tuple[int, int]
    class_names: tuple[str, ...]
    variant: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    resize: str = "stretch"
    output: str = RAW
    max_det: int = 300
    precision: str = "fp32"
    batch: int | None = 1  # None: any batch size
    producer: str = ""
    extra: dict = field(default_factory=dict)  # e.g. accuracy figures measured at export
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h <= 0 or w <= 0:
            raise MetadataError(f"input_size must be positive, got {self.input_size}")
        if self.output not in OUTPUT_LAYOUTS:
            raise MetadataError(f"unknown output layout {self.output!r}; expected one of {OUTPUT_LAYOUTS}")
        if self.resize not in RESIZE_MODES:
            raise MetadataError(f"unknown resize mode {self.resize!r}; expected one of {RESIZE_MODES}")
        if (self.mean is None) != (self.std is None):
            raise MetadataError("give both mean and std, or neither")
        if not self.class_names:
            raise MetadataError("class_names is empty")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @classmethod
    def for_variant(cls, variant: str | Variant, input_size: int | tuple[int, int] | None = None,
                    class_names: tuple[str, ...] | list[str] | None = None, **fields) -> "ArtifactMetadata":
        """The record of a `variant` model: its normalization and input size; COCO names by default."""
        from . import __version__

        v = get_variant(variant)
        size = input_size if input_size is not None else v.input_size
        size = as_hw(size)
        names = tuple(class_names) if class_names is not None else COCO_CLASSES
        defaults = {"variant": v.name, "mean": v.mean, "std": v.std, "max_det": v.num_top_queries,
                    "producer": f"deim-edge {__version__}"}
        return cls(input_size=size, class_names=names, **{**defaults, **fields})

    def with_(self, **changes) -> "ArtifactMetadata":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "ArtifactMetadata":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MetadataError(f"the artifact's deim-edge metadata is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise MetadataError("the artifact's deim-edge metadata is not a JSON object")
        version = data.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise MetadataError(f"metadata format {version} is newer than this deim-edge understands "
                                f"({FORMAT_VERSION}); upgrade deim-edge")
        known = set(cls.__dataclass_fields__)
        try:
            data = {k: v for k, v in data.items() if k in known}
            for key in ("input_size", "class_names", "mean", "std"):
                if data.get(key) is not None:
                    data[key] = tuple(data[key])
            return cls(**data)
        except TypeError as e:
            raise MetadataError(f"the artifact's deim-edge metadata is incomplete: {e}") from e
