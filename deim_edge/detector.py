"""Detector: artifact -> runtime; image -> preprocess -> run -> decode -> Detections."""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Union

import numpy as np

from .decode import decode
from .errors import ConfigError, ImageError
from .media import Video
from .metadata import RAW, RESIZE_MODES, ArtifactMetadata
from .preprocess import Transform, load_image, normalization, preprocess
from .results import Detections
from .runtimes import Runtime, load_runtime
from .slicing import check_slicing, detect_sliced
from .tracking import Tracker

ImageSource = Union[str, os.PathLike, np.ndarray]


class Detector:
    """One DEIMv2 detector over any artifact (.onnx, .pth, ...), configured by the artifact's metadata.

    conf: minimum score kept; max_det: most detections per image (default: the artifact's);
    classes: keep only these labels (ids or names, or just one). resize ("stretch" | "letterbox"), mean
    and std override the artifact's preprocessing (useful for official DEIMv2 ONNX files, which carry
    none). slice=(w, h) (or one side) detects tile by tile with `overlap` (a fraction of the tile), for
    small objects in large images (see slicing.py; the analytics extra). Remaining keyword arguments go to the
    runtime (e.g. threads=1, providers=[...], variant= for .pth files).
    """

    def __init__(self, model: str | os.PathLike | Runtime, backend: str | None = None, conf: float = 0.25,
                 max_det: int | None = None, classes: Iterable[int | str] | int | str | None = None,
                 resize: str | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 slice: int | Sequence[int] | None = None, overlap: float = 0.2, **runtime_options) -> None:
        if isinstance(conf, bool) or not isinstance(conf, numbers.Real) or not 0.0 <= conf <= 1.0:
            raise ConfigError(f"conf must be a number within [0, 1] (the lowest score kept), got {conf!r}")
        if max_det is not None and (isinstance(max_det, bool) or not isinstance(max_det, numbers.Integral)
                                    or max_det < 1):
            raise ConfigError(f"max_det must be a whole number of at least 1 (the most detections per image), "
                              f"got {max_det!r}; leave it out for the model's own")
        if resize is not None and resize not in RESIZE_MODES:
            raise ConfigError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        self.slicing = None if slice is None else check_slicing(slice, overlap)  # ((w, h), overlap)
        if isinstance(model, (str, os.PathLike)):
            self.runtime: Runtime = load_runtime(model, backend, **runtime_options)
        elif hasattr(model, "run") and hasattr(model, "metadata"):  # an opened runtime (e.g. TorchRuntime.of)
            self.runtime = model
        else:
            raise ConfigError(f"Detector takes a model file or an opened runtime, not {type(model).__name__}")
        meta = self.runtime.metadata
        mean, std = normalization(meta.mean if mean is None else mean, meta.std if std is None else std)
        self.metadata: ArtifactMetadata = meta.with_(resize=resize or meta.resize, mean=mean, std=std)
        self.conf = float(conf)
        self.max_det = int(max_det) if max_det is not None else self.metadata.max_det
        self.classes = self._class_ids(classes)
        self._buffer = np.empty((0, 3, *self.metadata.input_size), np.float32)  # reused input batch

    @property
    def names(self) -> tuple[str, ...]:
        return self.metadata.class_names

    def __call__(self, source: ImageSource | Sequence[ImageSource], color: str = "BGR"
                 ) -> Detections | list[Detections]:
        """Detect on one image (path or array) or a list of them; arrays are `color` ordered (BGR
        as OpenCV reads them, or RGB). Returns one Detections per image."""
        single = not isinstance(source, (list, tuple))
        if single and not isinstance(source, (str, os.PathLike, np.ndarray)):
            hint = ("; decode encoded bytes first: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)"
                    if isinstance(source, (bytes, bytearray, memoryview)) else "")
            raise ImageError(f"Detector takes an image path, a numpy array, or a list of them; "
                             f"got {type(source).__name__}{hint}")
        images = [load_image(s, color=color) for s in ([source] if single else source)]
        if not images:
            raise ImageError("no images given")
        results = self._detect_each(images, self.conf)
        return results[0] if single else results

    predict = __call__

    def track(self, source: str | os.PathLike | int | Iterable[np.ndarray], color: str = "BGR",
              tracker: Tracker | None = None) -> Iterator[tuple[np.ndarray, Detections]]:
        """(frame, its detections with tracker_id) for each frame of `source`, in order: a video file, a stream
        URL, a camera index, or any iterable of frames (`color` ordered arrays; a video's frames are BGR).
        Detections down to the tracker's low_conf go to it (ByteTrack's second stage matches the uncertain
        ones to existing tracks); those of a track, or at least `conf`, come out. `tracker` defaults to a
        Tracker at the video's frame rate (the analytics extra). A bad source is an ImageError here, before
        the first frame is asked for."""
        if isinstance(source, (str, os.PathLike, int)) and not isinstance(source, bool):
            video = Video(source)
            return self._track(video, color, tracker or Tracker(frame_rate=video.fps or 30.0), video)
        if isinstance(source, np.ndarray) or not isinstance(source, Iterable):
            raise ImageError(f"track takes a video file, a stream URL, a camera index or an iterable of frames, "
                             f"got {type(source).__name__}" + ("; for one image call the detector" if
                                                               isinstance(source, np.ndarray) else ""))
        return self._track(source, color, tracker or Tracker(), None)

    def _track(self, frames: Iterable[np.ndarray], color: str, tracker: Tracker, video: Video | None
               ) -> Iterator[tuple[np.ndarray, Detections]]:
        low = min(self.conf, tracker.low_conf)
        try:
            for frame in frames:
                yield frame, tracker.update(self._detect_each([load_image(frame, color=color)], low)[0], self.conf)
        finally:
            if video is not None:
                video.close()

    def _detect_each(self, images: list[np.ndarray], conf: float) -> list[Detections]:
        """The detections scoring at least `conf` in each image (RGB uint8): whole, or tile by tile."""
        if self.slicing is None:
            return self._detect(images, conf)
        return [detect_sliced(lambda tiles: self._detect(tiles, conf), image, *self.slicing,
                              batch=self.metadata.batch, names=self.names) for image in images]

    def _detect(self, images: list[np.ndarray], conf: float) -> list[Detections]:
        """The detections scoring at least `conf` in each image (RGB uint8), run in batches the artifact takes."""
        results: list[Detections] = []
        for chunk in self._chunks(images):
            batch, transforms = self.preprocess(chunk)
            results.extend(self.postprocess(self.infer(self._fill_static_batch(batch)), transforms, conf))
        return results

    def preprocess(self, images: list[np.ndarray]) -> tuple[np.ndarray, list[Transform]]:
        """RGB uint8 images -> the network's input batch and what resizing did to each image.

        The batch lives in a buffer the next call reuses (fresh large arrays cost page faults).
        """
        m = self.metadata
        if len(self._buffer) < len(images):
            self._buffer = np.empty((len(images), 3, *m.input_size), np.float32)
        return preprocess(images, m.input_size, resize=m.resize, mean=m.mean, std=m.std,
                          out=self._buffer[: len(images)])

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The runtime call alone."""
        return self.runtime.run(batch)

    def postprocess(self, outputs: dict[str, np.ndarray], transforms: list[Transform], conf: float | None = None
                    ) -> list[Detections]:
        """Raw or top-k outputs -> Detections in original-image pixels, filtered by classes and by `conf`
        (default: the detector's)."""
        conf = self.conf if conf is None else conf
        if self.metadata.output == RAW:
            scores, labels, boxes = decode(outputs["logits"], outputs["boxes"], self.max_det)
        else:
            scores, labels, boxes = outputs["scores"], outputs["labels"], outputs["boxes"]
        results = []
        for i, t in enumerate(transforms):
            keep = scores[i, : self.max_det] >= conf
            if self.classes is not None:
                keep &= np.isin(labels[i, : self.max_det], self.classes)
            results.append(Detections(
                xyxy=t.to_original(boxes[i, : self.max_det][keep]), scores=scores[i, : self.max_det][keep],
                labels=labels[i, : self.max_det][keep].astype(np.int64), names=self.names,
                image_size=t.original_size))
        return results

    def _chunks(self, images: list[np.ndarray]) -> Iterable[list[np.ndarray]]:
        size = self.metadata.batch or len(images)
        for start in range(0, len(images), size):
            yield images[start:start + size]

    def _fill_static_batch(self, batch: np.ndarray) -> np.ndarray:
        """Pad a short last chunk with blank images for artifacts with a fixed batch size."""
        missing = (self.metadata.batch or 0) - batch.shape[0]
        if missing <= 0:
            return batch
        return np.concatenate([batch, np.zeros((missing, *batch.shape[1:]), batch.dtype)])

    def _class_ids(self, classes: Iterable[int | str] | int | str | None) -> np.ndarray | None:
        if classes is None:
            return None
        if isinstance(classes, (str, bytes, numbers.Integral)) or not isinstance(classes, Iterable):
            classes = [classes]  # one class (or a value reported below)
        ids = []
        for c in classes:
            if isinstance(c, str):
                if c not in self.names:
                    raise ConfigError(f"unknown class {c!r}; this model knows: {', '.join(self.names)}")
                ids.append(self.names.index(c))
            elif not isinstance(c, numbers.Integral) or isinstance(c, bool):
                raise ConfigError(f"classes takes class names or whole-number ids (0..{len(self.names) - 1}), "
                                  f"got {c!r}")
            elif 0 <= c < len(self.names):
                ids.append(int(c))
            else:
                raise ConfigError(f"class id {c} is outside 0..{len(self.names) - 1}")
        if not ids:
            raise ConfigError("classes is empty, so nothing would be detected; leave it out to keep every class")
        return np.array(ids, dtype=np.int64)

    def __repr__(self) -> str:
        m = self.metadata
        return (f"Detector({m.variant or 'unknown variant'}, {self.runtime.name}, {m.input_size[0]}x{m.input_size[1]}"
                f" {m.resize}, {m.output} outputs, {m.num_classes} classes)")
