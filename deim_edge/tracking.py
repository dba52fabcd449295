"""Tracking: Detections across frames get stable ids from ByteTrack, as the `trackers` package (Roboflow's
maintained home of supervision's former ByteTrack) implements it. Needs the analytics extra.

`Tracker` follows one stream; `Detector.track` runs a detector and a Tracker over a video, a camera, a stream
or any iterable of frames.
"""

from __future__ import annotations

import numbers
from dataclasses import replace

import numpy as np

from .errors import ConfigError
from .results import Detections


class Tracker:
    """ByteTrack over one stream of frames: `update(detections)` once per frame, in order, returns them with
    `tracker_id` (-1 for detections not yet part of a confirmed track). A tracked detection's label is its
    track's class, the one with the highest summed score over the track's detections so far, so an object keeps
    one class while the detector's choice flickers (counts per class depend on it).

    frame_rate: the stream's frames per second; lost_frames: how long a track is kept without a matching
    detection (occlusions, leaving and re-entering) before its id is retired, counted in frames of a 30 fps
    stream as ByteTrack counts it (lost_frames / 30 seconds at any frame rate); new_track_conf: the score a
    detection needs to start a track (only high_conf ones can); high_conf: detections at least this sure are
    matched first, the rest only to tracks left over (ByteTrack's second stage); min_iou: the least overlap of
    a match; min_frames: the frames in a row a new track needs before it gets an id; low_conf: detections below
    it are left out; duplicate_iou: of boxes overlapping by more than this, only the best-scoring one is tracked
    (1: only exact copies are dropped).
    The detector should keep detections down to low_conf for the second stage to see the uncertain ones;
    `Detector.track` does that.

    The defaults suit DEIMv2's scores (most true objects 0.4-0.7, background mostly below 0.2) and its NMS-free
    decode, which can give one object two boxes; measured on tests/moving_shapes.py videos, dropping those
    copies and the boxes below 0.2 takes MOTA from about -0.2 to 0.8.
    """

    def __init__(self, frame_rate: float = 30.0, lost_frames: int = 30, new_track_conf: float = 0.5,
                 high_conf: float = 0.5, min_iou: float = 0.3, min_frames: int = 2, low_conf: float = 0.2,
                 duplicate_iou: float = 0.5) -> None:
        for name, value, low, high in (("frame_rate", frame_rate, 1e-3, 1e4), ("new_track_conf", new_track_conf, 0, 1),
                                       ("high_conf", high_conf, 0, 1), ("min_iou", min_iou, 0, 1),
                                       ("low_conf", low_conf, 0, 1), ("duplicate_iou", duplicate_iou, 0, 1)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= value <= high:
                raise ConfigError(f"{name} must be a number within [{low:g}, {high:g}], got {value!r}")
        for name, value in (("lost_frames", lost_frames), ("min_frames", min_frames)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ConfigError(f"{name} must be a whole number of at least 1, got {value!r}")
        ByteTrackTracker = byte_track()
        self.low_conf, self.duplicate_iou = float(low_conf), float(duplicate_iou)
        self._tracker = ByteTrackTracker(
            lost_track_buffer=int(lost_frames), frame_rate=float(frame_rate),
            track_activation_threshold=float(new_track_conf), minimum_consecutive_frames=int(min_frames),
            minimum_iou_threshold=float(min_iou), high_conf_det_threshold=float(high_conf))
        self._votes: dict[int, dict[int, float]] = {}  # track id -> {label: summed score}
        self._last_seen: dict[int, int] = {}  # track id -> the frame it was last matched in
        self._frame = 0

    def update(self, detections: Detections, conf: float | None = None) -> Detections:
        """The next frame's detections with their track ids (in the tracker's order, which may differ); with
        `conf`, only those in a track or scoring at least `conf` (the detector ran down to low_conf for the
        tracker's second stage; the uncertain ones it did not match are left out)."""
        if not isinstance(detections, Detections):
            raise ConfigError(f"Tracker.update takes the Detections of one frame, got {type(detections).__name__}")
        found = one_per_box(detections[detections.scores >= self.low_conf]).to_supervision()
        tracked = self._tracker.update(found.with_nms(threshold=self.duplicate_iou, class_agnostic=True))
        self._frame += 1
        tracked = self._vote(Detections.from_supervision(tracked, names=detections.names,
                                                         image_size=detections.image_size))
        return tracked if conf is None else tracked[(tracked.tracker_id >= 0) | (tracked.scores >= conf)]

    def reset(self) -> None:
        """Forget every track (a new stream starts); ids count from 0 again."""
        self._tracker.reset()
        self._votes.clear()
        self._last_seen.clear()

    def _vote(self, tracked: Detections) -> Detections:
        """The detections with each tracked one relabelled to its track's class so far; tracks retired by
        ByteTrack are forgotten."""
        labels = tracked.labels.copy()
        for i, (track, label, score) in enumerate(zip(tracked.tracker_id.tolist(), tracked.labels.tolist(),
                                                      tracked.scores.tolist())):
            if track >= 0:
                votes = self._votes.setdefault(track, {})
                votes[label] = votes.get(label, 0.0) + score
                labels[i] = max(votes, key=votes.__getitem__)
                self._last_seen[track] = self._frame
        retired = [t for t, seen in self._last_seen.items()
                   if self._frame - seen > self._tracker.maximum_frames_without_update + 1]
        for track in retired:
            del self._votes[track], self._last_seen[track]
        return replace(tracked, labels=labels)


def byte_track() -> type:
    """trackers' ByteTrackTracker class, or a ConfigError naming the extra that installs it."""
    try:
        from trackers import ByteTrackTracker
    except ImportError:
        raise ConfigError("tracking needs the trackers package: pip install 'deim-edge[analytics]'") from None
    return ByteTrackTracker


def one_per_box(detections: Detections) -> Detections:
    """The best-scoring class of each box. The decode ranks every (query, class) pair, so one query's box can
    come out once per class that scores; a tracker would start a track for each."""
    order = np.argsort(-detections.scores, kind="stable")
    _, first = np.unique(detections.xyxy[order], axis=0, return_index=True)
    return detections[np.sort(order[first])]
