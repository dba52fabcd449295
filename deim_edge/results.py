"""Detections: what a detector found in one image, with converters (JSON, COCO results, supervision) and
drawing."""

from __future__ import annotations

import colorsys
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import cv2
import numpy as np

from .errors import ConfigError, ImageError

# Dataset category id of each of the 80 contiguous COCO labels (metadata.COCO_CLASSES order);
# pass it to Detections.to_coco to score against COCO annotation files.
COCO80_TO_91 = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28, 31, 32, 33,
    34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61,
    62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84, 85, 86, 87, 88, 89, 90,
)


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections in one image: boxes x1,y1,x2,y2 in original-image pixels, scores, labels
    (indices into `names`), the image's (h, w), and after tracking each one's track id (-1: not yet
    a confirmed track)."""

    xyxy: np.ndarray  # [N,4] float32
    scores: np.ndarray  # [N] float32
    labels: np.ndarray  # [N] int64
    names: tuple[str, ...] = ()
    image_size: tuple[int, int] | None = None  # (h, w)
    tracker_id: np.ndarray | None = None  # [N] int64, or None when not tracked

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not len(xyxy) == len(scores) == len(labels):
            raise ConfigError(f"xyxy, scores and labels must have one row per detection, "
                              f"got {len(xyxy)}, {len(scores)} and {len(labels)}")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "names", tuple(self.names))
        if self.tracker_id is not None:
            tracker_id = np.asarray(self.tracker_id, dtype=np.int64).reshape(-1)
            if len(tracker_id) != len(scores):
                raise ConfigError(f"tracker_id must have one entry per detection, got {len(tracker_id)} for "
                                  f"{len(scores)}")
            object.__setattr__(self, "tracker_id", tracker_id)
        if self.image_size is not None:
            object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))

    @classmethod
    def empty(cls, names: Sequence[str] = (), image_size: tuple[int, int] | None = None) -> Detections:
        """No detections."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   tuple(names), image_size)

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: int | slice | np.ndarray | Sequence[int]) -> Detections:
        """The detections picked by a boolean mask, an index array, a slice or one index."""
        if isinstance(index, (int, np.integer)):
            index = [index]
        return replace(self, xyxy=self.xyxy[index], scores=self.scores[index], labels=self.labels[index],
                       tracker_id=None if self.tracker_id is None else self.tracker_id[index])

    def filter(self, conf: float | None = None, classes: Iterable[int | str] | None = None) -> Detections:
        """The detections scoring at least `conf` whose class is in `classes` (labels or names)."""
        keep = np.ones(len(self), bool)
        if conf is not None:
            keep &= self.scores >= conf
        if classes is not None:
            classes = classes if isinstance(classes, Iterable) and not isinstance(classes, str) else [classes]
            keep &= np.isin(self.labels, [self._label_of(c) for c in classes])
        return self[keep]

    def _label_of(self, cls: int | str) -> int:
        if isinstance(cls, str):
            if cls not in self.names:
                raise ConfigError(f"unknown class name {cls!r}; the model's classes are {', '.join(self.names)}")
            return self.names.index(cls)
        if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)):
            raise ConfigError(f"classes takes class names or whole-number labels, got {cls!r}")
        return int(cls)

    @property
    def class_names(self) -> list[str]:
        """The class name of each detection (the label as text where names has none)."""
        return [self._name(label) for label in self.labels.tolist()]

    def _name(self, label: int) -> str:
        return self.names[label] if 0 <= label < len(self.names) else str(label)

    def to_dict(self) -> dict:
        """{"image_size": [h, w] or None, "detections": [{"box", "score", "label", "name"}, ...]};
        boxes rounded to 0.01 px, scores to 1e-5; tracked detections add "track" (their id, -1: none yet)."""
        records = [{"box": [round(v, 2) for v in box], "score": round(score, 5), "label": label,
                    "name": self._name(label)}
                   for box, score, label in zip(self.xyxy.tolist(), self.scores.tolist(), self.labels.tolist())]
        if self.tracker_id is not None:
            for record, track in zip(records, self.tracker_id.tolist()):
                record["track"] = track
        return {"image_size": None if self.image_size is None else list(self.image_size), "detections": records}

    def to_json(self) -> str:
        """The detections as a JSON list of {"box": [x1, y1, x2, y2], "score", "label", "name"}."""
        return json.dumps(self.to_dict()["detections"])

    def to_coco(self, image_id: int, category_ids: Sequence[int] | Mapping[int, int] | None = None) -> list[dict]:
        """COCO results records {"image_id", "category_id", "bbox": [x, y, w, h], "score"}.

        category_ids maps each label to its dataset category id (COCO80_TO_91 for COCO's 80
        classes); without it the label is the category id.
        """
        records = []
        for (x1, y1, x2, y2), score, label in zip(self.xyxy.tolist(), self.scores.tolist(), self.labels.tolist()):
            if category_ids is None:
                category = label
            else:
                try:
                    category = category_ids[label]
                except (IndexError, KeyError):
                    raise ConfigError(f"category_ids has no entry for label {label}") from None
            records.append({"image_id": image_id, "category_id": int(category),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
        return records

    def to_supervision(self):  # -> supervision.Detections
        """These detections as a `supervision.Detections` (class names in data["class_name"], tracker ids kept),
        for supervision's annotators, zones and tools. Needs the analytics extra."""
        sv = import_supervision()
        return sv.Detections(xyxy=self.xyxy.copy(), confidence=self.scores.copy(), class_id=self.labels.copy(),
                             tracker_id=None if self.tracker_id is None else self.tracker_id.copy(),
                             data={"class_name": np.array(self.class_names, dtype=str)})

    @classmethod
    def from_supervision(cls, detections, names: Sequence[str] | None = None,
                         image_size: tuple[int, int] | None = None) -> Detections:
        """Detections from a `supervision.Detections`. Class names: `names` (indexed by class_id), else
        the class_name data supervision carries, else none. A missing confidence reads as 1, a missing
        class_id as 0."""
        sv = import_supervision()
        if not isinstance(detections, sv.Detections):
            raise ConfigError(f"from_supervision takes a supervision.Detections, got {type(detections).__name__}")
        n = len(detections)
        labels = np.zeros(n, np.int64) if detections.class_id is None else detections.class_id.astype(np.int64)
        if names is None:
            names = _names_from(labels, detections.data.get("class_name"))
        scores = np.ones(n, np.float32) if detections.confidence is None else detections.confidence
        return cls(detections.xyxy, scores, labels, tuple(names), image_size, detections.tracker_id)

    def draw(self, image: np.ndarray, color: str = "BGR", thickness: int | None = None,
             show_labels: bool = True) -> np.ndarray:
        """A copy of `image` (HxWx3 uint8, channel order `color`) with each box and its
        "name score" drawn in a color that is fixed per class; the input is left unchanged."""
        if color not in ("BGR", "RGB"):
            raise ConfigError(f"color must be 'BGR' or 'RGB', got {color!r}")
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            got = (f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray)
                   else type(image).__name__)
            raise ImageError(f"draw needs an HxWx3 uint8 image, got {got}")
        if self.image_size is not None and image.shape[:2] != self.image_size:
            raise ImageError(f"the image is {image.shape[1]}x{image.shape[0]} but these detections are for "
                             f"{self.image_size[1]}x{self.image_size[0]}; draw on the image they came from")
        canvas = np.array(image, order="C")  # a copy: the input is never drawn on
        line = thickness or max(1, round(max(canvas.shape[:2]) / 400))
        font_scale = 0.4 * line
        tracks = [None] * len(self) if self.tracker_id is None else self.tracker_id.tolist()
        for (x1, y1, x2, y2), score, label, track in zip(self.xyxy.tolist(), self.scores.tolist(),
                                                         self.labels.tolist(), tracks):
            rgb = class_color(label)
            box_color = rgb[::-1] if color == "BGR" else rgb
            p1, p2 = (round(x1), round(y1)), (round(x2), round(y2))
            cv2.rectangle(canvas, p1, p2, box_color, line, cv2.LINE_AA)
            if show_labels:
                text = f"{self._name(label)} {score:.2f}" if track is None or track < 0 else \
                    f"#{track} {self._name(label)} {score:.2f}"
                _draw_label(canvas, text, p1, box_color, font_scale, line)
        return canvas


def import_supervision():
    """The supervision package, or a ConfigError naming the extra that installs it."""
    try:
        import supervision
    except ImportError:
        raise ConfigError("this needs the supervision package: pip install 'deim-edge[analytics]'") from None
    return supervision


def _names_from(labels: np.ndarray, class_names) -> tuple[str, ...]:  # noqa: ANN001
    """Class names indexed by label, from one name per detection (supervision's data["class_name"]); labels
    without a detection get their number as name."""
    if class_names is None or not len(labels):
        return ()
    named = {int(label): str(name) for label, name in zip(labels.tolist(), list(class_names))}
    return tuple(named.get(i, str(i)) for i in range(max(named) + 1))


def class_color(label: int) -> tuple[int, int, int]:
    """A bright RGB color, the same for a label everywhere, neighbouring labels far apart in hue."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def _draw_label(canvas: np.ndarray, text: str, corner: tuple[int, int], fill: tuple[int, int, int],
                font_scale: float, line: int) -> None:
    """Text on a filled box above `corner` (inside the box when there is no room above)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    (text_w, text_h), baseline = cv2.getTextSize(text, font, font_scale, max(1, line // 2))
    x, y = corner
    top = y - text_h - baseline - 2 if y - text_h - baseline - 2 >= 0 else y
    cv2.rectangle(canvas, (x, top), (x + text_w + 2, top + text_h + baseline + 2), fill, cv2.FILLED)
    ink = (0, 0, 0) if sum(fill) > 384 else (255, 255, 255)
    cv2.putText(canvas, text, (x + 1, top + text_h + 1), font, font_scale, ink, max(1, line // 2), cv2.LINE_AA)
