"""Counting tracked objects: crossings of a line (in and out, per class) and occupancy of a polygon zone (per
class, now and all visits), with supervision's LineZone and PolygonZone doing the geometry. Each counter takes
one frame's tracked Detections at a time (`Detector.track` or `Tracker.update` give them) and draws itself.
Needs the analytics extra.

A box is placed by its centre: it crosses the line when its centre moves to the line's other side, and it is in
a zone while its centre is inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from .errors import ConfigError
from .results import Detections, import_supervision

Point = Sequence[float]


def _points(value: Sequence[Point], least: int, what: str) -> np.ndarray:
    """[N,2] float array of at least `least` finite x,y points, or ConfigError naming `what`."""
    try:
        points = np.asarray(value, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        points = np.zeros((0, 2))
    if len(points) < least or not np.isfinite(points).all() or np.size(value) != points.size:
        raise ConfigError(f"{what} takes at least {least} x,y points in pixels, got {value!r}")
    return points


def _per_class(counts: dict[int, int], names: Sequence[str]) -> dict[str, int]:
    return {(names[c] if 0 <= c < len(names) else str(c)): int(n) for c, n in sorted(counts.items()) if n}


def _center_anchor():  # noqa: ANN202
    return [import_supervision().Position.CENTER]


def _require_tracks(detections: Detections, who: str) -> None:
    if not isinstance(detections, Detections):
        raise ConfigError(f"{who}.update takes one frame's Detections, got {type(detections).__name__}")
    if detections.tracker_id is None:
        raise ConfigError(f"{who} counts tracked objects: pass detections from Detector.track or Tracker.update")


class LineCounter:
    """Objects whose centre crosses the line from `start` to `end` (image pixels): "in" is a crossing from the
    right of the line to its left as seen on screen looking from start to end (for a line drawn left to right,
    upwards; for one drawn downwards, to the right), "out" the other way; each track counts once per crossing,
    in the class it has when it crosses."""

    def __init__(self, start: Point, end: Point, name: str = "line") -> None:
        (x1, y1), (x2, y2) = _points([start, end], 2, "a line")
        if (x1, y1) == (x2, y2):
            raise ConfigError(f"a line needs two different points, got {start!r} twice")
        sv = import_supervision()
        self.name, self.start, self.end = name, (x1, y1), (x2, y2)
        self._zone = sv.LineZone(start=sv.Point(x1, y1), end=sv.Point(x2, y2), triggering_anchors=_center_anchor())
        self._names: tuple[str, ...] = ()

    def update(self, detections: Detections) -> tuple[np.ndarray, np.ndarray]:
        """Count one frame; (crossed in, crossed out) as a bool per detection."""
        _require_tracks(detections, "LineCounter")
        self._names = detections.names or self._names
        return self._zone.trigger(detections.to_supervision())

    @property
    def counts(self) -> dict:
        """{"in": total, "out": total, "in_per_class": {name: n}, "out_per_class": {name: n}}."""
        return {"in": int(self._zone.in_count), "out": int(self._zone.out_count),
                "in_per_class": _per_class(self._zone.in_count_per_class, self._names),
                "out_per_class": _per_class(self._zone.out_count_per_class, self._names)}

    def draw(self, image: np.ndarray, color: tuple[int, int, int] = (255, 255, 255)) -> None:
        """The line and its in/out counts, drawn on `image` in place."""
        p1 = tuple(int(round(v)) for v in self.start)
        p2 = tuple(int(round(v)) for v in self.end)
        line = max(1, round(max(image.shape[:2]) / 300))
        cv2.line(image, p1, p2, color, line, cv2.LINE_AA)
        c = self.counts
        _text(image, f"{self.name}: in {c['in']} out {c['out']}", p1, color)


class ZoneCounter:
    """Objects whose centre is inside a polygon (image pixels): how many now, per class, and how many distinct
    tracks have been inside since the start (each under the class it last had inside)."""

    def __init__(self, polygon: Sequence[Point], name: str = "zone") -> None:
        self.name = name
        self.polygon = _points(polygon, 3, "a zone").round().astype(np.int64)
        self._zone = import_supervision().PolygonZone(polygon=self.polygon, triggering_anchors=_center_anchor())
        self._now: dict[int, int] = {}
        self._visitors: dict[int, int] = {}  # track id -> its class when last inside
        self._names: tuple[str, ...] = ()

    def update(self, detections: Detections) -> np.ndarray:
        """Count one frame; whether each detection is inside (untracked ones, id -1, are never counted)."""
        _require_tracks(detections, "ZoneCounter")
        self._names = detections.names or self._names
        inside = self._zone.trigger(detections.to_supervision()) & (detections.tracker_id >= 0)
        labels, tracks = detections.labels[inside].tolist(), detections.tracker_id[inside].tolist()
        self._now = {label: labels.count(label) for label in set(labels)}
        self._visitors.update(zip(tracks, labels))
        return inside

    @property
    def counts(self) -> dict:
        """{"now": n, "now_per_class": {name: n}, "visits": distinct tracks so far, "visits_per_class": {...}}."""
        labels = list(self._visitors.values())
        visits = {label: labels.count(label) for label in set(labels)}
        return {"now": sum(self._now.values()), "now_per_class": _per_class(self._now, self._names),
                "visits": len(self._visitors), "visits_per_class": _per_class(visits, self._names)}

    def draw(self, image: np.ndarray, color: tuple[int, int, int] = (255, 255, 255)) -> None:
        """The zone's outline and its counts, drawn on `image` in place."""
        line = max(1, round(max(image.shape[:2]) / 300))
        cv2.polylines(image, [self.polygon.astype(np.int32).reshape(-1, 1, 2)], True, color, line, cv2.LINE_AA)
        c = self.counts
        corner = tuple(int(v) for v in self.polygon.min(0))
        _text(image, f"{self.name}: {c['now']} now, {c['visits']} visits", corner, color)


def _text(image: np.ndarray, text: str, corner: tuple[int, int], color: tuple[int, int, int]) -> None:
    """Text on a dark box just above `corner` (below it when there is no room), in place."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.4, image.shape[0] / 1000)
    thick = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, font, scale, thick)
    x = int(np.clip(corner[0], 0, max(0, image.shape[1] - w - 4)))
    y = corner[1] - 4 if corner[1] - h - base - 4 >= 0 else corner[1] + h + 4
    cv2.rectangle(image, (x, y - h - 2), (x + w + 4, y + base), (0, 0, 0), cv2.FILLED)
    cv2.putText(image, text, (x + 2, y), font, scale, color, thick, cv2.LINE_AA)
