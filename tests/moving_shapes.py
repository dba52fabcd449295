"""A test video of shapes on known paths, with its ground truth: each frame's objects (id, class, visible box),
the crossings of a line and the visits of a polygon zone. Shapes are drawn the way deim_edge.synthetic draws its
training scenes (sizes in its range, flat colours on one textured background).

The story (320x320, 30 fps, 180 frames; "in" is supervision's, see `LINE`):
- a circle crosses the frame left to right (the line: in) and leaves; a large square enters from the top and moves
  down, passing over the circle, which it hides for a few frames (the square is drawn in front);
- a ring crosses the line (in), leaves on the right, and re-enters later lower down, moving left: it crosses the
  line again (out) and ends inside the zone;
- a triangle comes in from the bottom, passes through the zone, crosses the line (in) and leaves at the top.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deim_edge import synthetic

NAMES = ("circle", "square", "triangle", "ring")  # the synthetic model's classes, in label order
SIZE = (320, 320)  # h, w
FPS = 30.0
NUM_FRAMES = 180
LINE = ((160.0, 10.0), (160.0, 310.0))  # drawn downwards: a centre moving to larger x crosses "in"
ZONE = np.array([[30, 200], [150, 200], [150, 300], [30, 300]], np.float64)
MIN_VISIBLE = 0.5  # an object counts in a frame when at least this fraction of it shows; less is "ignored"
PAD = 120  # shapes are drawn on a canvas this much larger on each side, to know their full area

# (class, circumradius px, rotation, keyframes (frame, x, y)); positions in between are linear, the object exists
# from its first keyframe to its last. Listed back to front: later objects are drawn over earlier ones.
OBJECTS = (
    ("circle", 20, 0.0, ((0, 30, 70), (170, 370, 70))),
    ("ring", 26, 0.0, ((0, 40, 150), (80, 360, 150), (115, 360, 250), (179, 104, 250))),
    ("triangle", 30, 0.1, ((20, 40, 330), (100, 190, 170), (170, 190, -40))),
    ("square", 44, 0.15, ((55, 260, -30), (179, 260, 218))),
)


@dataclass(frozen=True)
class Truth:
    """The video's frames (BGR uint8) and, per frame, the objects that count: ids [K], labels [K] and visible
    boxes [K,4] (x1, y1, x2, y2; x2 = last column + 1), plus the visible boxes of objects too hidden to count
    (`ignored`, [J,4]). Counts follow LineCounter's and ZoneCounter's rules, applied to the visible boxes' centres
    on the frames where an object counts: `line_in`/`line_out` {class name: crossings}, `zone_visits` {class
    name: distinct objects ever inside}, `zone_now` per frame {class name: objects inside}."""

    frames: list[np.ndarray]
    ids: list[np.ndarray]
    labels: list[np.ndarray]
    boxes: list[np.ndarray]
    ignored: list[np.ndarray]
    line_in: dict[str, int]
    line_out: dict[str, int]
    zone_visits: dict[str, int]
    zone_now: list[dict[str, int]]


def render(seed: int = 0) -> Truth:
    """The video and its ground truth. `seed` picks the background, the colours and small changes of size and
    rotation; the paths (and so the counts) stay the same."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    background = synthetic.background(rng, h, w)
    looks = [(r * rng.uniform(0.9, 1.1), rot + rng.uniform(-0.1, 0.1), _colour(rng, background))
             for _, r, rot, _ in OBJECTS]
    frames, ids, labels, boxes, ignored = [], [], [], [], []
    for t in range(NUM_FRAMES):
        image, instances, full_areas = background.copy(), np.zeros((h, w), np.int32), {}
        for k, ((shape, _, _, keys), (r, rot, colour)) in enumerate(zip(OBJECTS, looks)):
            center = _position(keys, t)
            if center is None:
                continue
            mask = _mask(shape, center, r, rot)
            full_areas[k] = int(mask.sum())
            visible = mask[PAD:PAD + h, PAD:PAD + w]
            image[visible] = colour
            instances[visible] = k + 1
        frame = _objects(instances, full_areas)
        frames.append(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        ids.append(np.array([k for k, _, counts in frame if counts], np.int64))
        labels.append(np.array([NAMES.index(OBJECTS[k][0]) for k in ids[-1]], np.int64))
        boxes.append(np.array([box for _, box, counts in frame if counts], np.float32).reshape(-1, 4))
        ignored.append(np.array([box for _, box, counts in frame if not counts], np.float32).reshape(-1, 4))
    line_in, line_out = _crossings(ids, boxes)
    zone_visits, zone_now = _zone(ids, boxes)
    return Truth(frames, ids, labels, boxes, ignored, line_in, line_out, zone_visits, zone_now)


def write_video(frames: list[np.ndarray], path: str | Path) -> Path:
    """The BGR frames as an MJPG .avi at FPS; returns the path."""
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (frames[0].shape[1], frames[0].shape[0]))
    if not writer.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG video to {path}")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def side(point: np.ndarray) -> float:
    """Which side of LINE a point is on: > 0 on the side supervision's LineZone counts "in" crossings from."""
    (sx, sy), (ex, ey) = LINE
    return (ex - sx) * (point[1] - sy) - (ey - sy) * (point[0] - sx)


def _position(keys: tuple, t: int) -> np.ndarray | None:
    """The object's centre at frame t, or None outside its keyframes."""
    frames = [k[0] for k in keys]
    if not frames[0] <= t <= frames[-1]:
        return None
    return np.array([np.interp(t, frames, [k[1] for k in keys]), np.interp(t, frames, [k[2] for k in keys])])


def _colour(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    """A flat RGB colour far from the background's mean, as synthetic.draw_scene prefers."""
    mean = background.reshape(-1, 3).mean(0)
    colour = rng.integers(0, 256, 3)
    for _ in range(50):
        if np.abs(colour - mean).sum() > 200:
            break
        colour = rng.integers(0, 256, 3)
    return colour.astype(np.uint8)


def _mask(shape: str, center: np.ndarray, r: float, rot: float) -> np.ndarray:
    """A bool mask of one shape on the padded canvas."""
    h, w = SIZE
    return synthetic.shape_mask(shape, h + 2 * PAD, w + 2 * PAD, center + PAD, r, rot)


def _objects(instances: np.ndarray, full_areas: dict[int, int]) -> list[tuple[int, list[float], bool]]:
    """(object, visible box, whether it counts) for each object with a visible pixel."""
    found = []
    for k, area in full_areas.items():
        ys, xs = np.nonzero(instances == k + 1)
        if len(xs):
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            found.append((k, box, len(xs) >= MIN_VISIBLE * area))
    return found


def _centres(ids: list[np.ndarray], boxes: list[np.ndarray]) -> dict[int, list[tuple[int, np.ndarray]]]:
    """{object: [(frame, visible box centre)]} over the frames where it counts."""
    paths: dict[int, list[tuple[int, np.ndarray]]] = {}
    for t, (frame_ids, frame_boxes) in enumerate(zip(ids, boxes)):
        for k, box in zip(frame_ids.tolist(), frame_boxes):
            paths.setdefault(k, []).append((t, (box[:2] + box[2:]) / 2))
    return paths


def _crossings(ids: list[np.ndarray], boxes: list[np.ndarray]) -> tuple[dict[str, int], dict[str, int]]:
    """Per class, the centre crossings of LINE from its "in" side ({name: n}) and back."""
    line_in: dict[str, int] = {}
    line_out: dict[str, int] = {}
    for k, path in _centres(ids, boxes).items():
        sides = [np.sign(side(c)) for _, c in path if side(c) != 0]
        for before, after in zip(sides, sides[1:]):
            if before != after:
                counts = line_in if before > 0 else line_out
                counts[OBJECTS[k][0]] = counts.get(OBJECTS[k][0], 0) + 1
    return line_in, line_out


def _zone(ids: list[np.ndarray], boxes: list[np.ndarray]) -> tuple[dict[str, int], list[dict[str, int]]]:
    """Per class, the objects whose centre was ever inside ZONE, and per frame those inside."""
    contour = ZONE.astype(np.float32).reshape(-1, 1, 2)
    now: list[dict[str, int]] = [{} for _ in ids]
    visitors: dict[str, set[int]] = {}
    for k, path in _centres(ids, boxes).items():
        name = OBJECTS[k][0]
        for t, c in path:
            if cv2.pointPolygonTest(contour, (float(c[0]), float(c[1])), False) >= 0:
                now[t][name] = now[t].get(name, 0) + 1
                visitors.setdefault(name, set()).add(k)
    return {name: len(objects) for name, objects in sorted(visitors.items())}, now
