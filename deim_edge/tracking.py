"""Tracking: Detections across frames get stable ids from ByteTrack, as the `trackers` package (Roboflow's
maintained home of supervision's former ByteTrack) implements it. Needs the analytics extra.

`Tracker` follows one stream; `Detector.track` runs a detector and a Tracker over a video, a camera, a stream
or any iterable of frames.
"""

from __future__ import annotations

import numbers

import numpy as np

from .errors import ConfigError
from .results import Detections


class Tracker:
    """ByteTrack over one stream of frames: `update(detections)` once per frame, in order, returns them with
    `tracker_id` (-1 for detections not yet part of a confirmed track).

    frame_rate: the stream's frames per second; lost_frames: how many frames a track is kept without a matching
    detection (occlusions, leaving and re-entering) before its id is retired; new_track_conf: the score a
    detection needs to start a track; high_conf: detections at least this sure are matched first, the rest
    only to tracks left over (ByteTrack's second stage); min_iou: the least overlap of a match; min_frames: the
    frames in a row a new track needs before it gets an id.
    The detector should keep detections down to about 0.1 (Detector(conf=0.1)) for the second stage to see
    the uncertain ones; `Detector.track` does that.
    """

    def __init__(self, frame_rate: float = 30.0, lost_frames: int = 30, new_track_conf: float = 0.5,
                 high_conf: float = 0.5, min_iou: float = 0.1, min_frames: int = 2) -> None:
        for name, value, low, high in (("frame_rate", frame_rate, 1e-3, 1e4), ("new_track_conf", new_track_conf, 0, 1),
                                       ("high_conf", high_conf, 0, 1), ("min_iou", min_iou, 0, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
                raise ConfigError(f"{name} must be a number within [{low:g}, {high:g}], got {value!r}")
        for name, value in (("lost_frames", lost_frames), ("min_frames", min_frames)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
        try:
            from trackers import ByteTrackTracker
        except ImportError:
            raise ConfigError("tracking needs the trackers package: pip install 'deim-edge[analytics]'") from None
        self._tracker = ByteTrackTracker(
            lost_track_buffer=int(lost_frames), frame_rate=float(frame_rate),
            track_activation_threshold=float(new_track_conf), minimum_consecutive_frames=int(min_frames),
            minimum_iou_threshold=float(min_iou), high_conf_det_threshold=float(high_conf))

    def update(self, detections: Detections) -> Detections:
        """The next frame's detections with their track ids (in the tracker's order, which may differ)."""
        if not isinstance(detections, Detections):
            raise ConfigError(f"Tracker.update takes the Detections of one frame, got {type(detections).__name__}")
        tracked = self._tracker.update(one_per_box(detections).to_supervision())
        return Detections.from_supervision(tracked, names=detections.names, image_size=detections.image_size)

    def reset(self) -> None:
        """Forget every track (a new stream starts); ids keep counting up."""
        self._tracker.reset()


def one_per_box(detections: Detections) -> Detections:
    """The best-scoring class of each box. The decode ranks every (query, class) pair, so one query's box can
    come out once per class that scores; a tracker would start a track for each."""
    order = np.argsort(-detections.scores, kind="stable")
    _, first = np.unique(detections.xyxy[order], axis=0, return_index=True)
    return detections[np.sort(order[first])]
