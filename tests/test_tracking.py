"""Tracking and counting: the bundled synthetic model tracks a rendered video of moving shapes (tests/moving_shapes.py)
through Detector.track, scored with the CLEAR and identity metrics against the video's ground truth, and counts
its line crossings and zone visits; then the analytics API's converters, options and errors one by one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import moving_shapes as shapes
from deim_edge import Detector
from deim_edge.counting import LineCounter, ZoneCounter
from deim_edge.errors import ConfigError, ImageError
from deim_edge.results import Detections
from deim_edge.tracking import Tracker, one_per_box

sv = pytest.importorskip("supervision", reason="counting needs the analytics extra: pip install 'deim-edge[analytics]'")
tracker_eval = pytest.importorskip("trackers.eval", reason="tracking needs the analytics extra")

MIN_IOU = 0.5  # a tracked box matches a true one at this overlap (MOTChallenge's)
NAMES = ("a", "b", "c")


@pytest.fixture(scope="module")
def detector(trained_onnx: Path) -> Detector:
    return Detector(trained_onnx, threads=1)


@pytest.fixture(scope="module")
def truth() -> shapes.Truth:
    return shapes.render(seed=0)


@pytest.fixture(scope="module")
def run(detector: Detector, truth: shapes.Truth, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The video tracked through Detector.track (from an MJPG file) and counted: each frame's Detections, the
    line's and zone's final counts and the zone's occupancy per frame."""
    video = shapes.write_video(truth.frames, tmp_path_factory.mktemp("video") / "shapes.avi")
    line, zone = LineCounter(*shapes.LINE), ZoneCounter(shapes.ZONE)
    outputs, occupancy = [], []
    for _, dets in detector.track(video):
        line.update(dets)
        zone.update(dets)
        outputs.append(dets)
        occupancy.append(zone.counts["now_per_class"])
    return {"outputs": outputs, "line": line.counts, "zone": zone.counts, "occupancy": occupancy}


def _scored(truth: shapes.Truth, ids: list[np.ndarray], boxes: list[np.ndarray]) -> dict:
    """CLEAR and identity metrics of tracked boxes (per frame: ids [M], boxes [M,4]) against the truth. A box that
    covers an object too hidden to count (and no counted one) is left out, neither right nor wrong."""
    gt_ids, track_ids, similarity = [], [], []
    for t, (frame_ids, frame_boxes) in enumerate(zip(ids, boxes)):
        iou = tracker_eval.box_iou(truth.boxes[t], frame_boxes)  # [K,M]
        if len(truth.ignored[t]) and len(frame_boxes):
            hidden = tracker_eval.box_iou(truth.ignored[t], frame_boxes).max(0) >= MIN_IOU
            keep = ~hidden | (iou.max(0, initial=0) >= MIN_IOU)
            frame_ids, iou = frame_ids[keep], iou[:, keep]
        gt_ids.append(truth.ids[t])
        track_ids.append(frame_ids)
        similarity.append(iou)
    clear = tracker_eval.compute_clear_metrics(gt_ids, track_ids, similarity, threshold=MIN_IOU)
    identity = tracker_eval.compute_identity_metrics(gt_ids, track_ids, similarity, threshold=MIN_IOU)
    return {"MOTA": clear["MOTA"], "IDF1": identity["IDF1"], "IDSW": clear["IDSW"], "Frag": clear["Frag"],
            "FP": clear["CLR_FP"], "FN": clear["CLR_FN"], "TP": clear["CLR_TP"]}


def _good_tracking(m: dict) -> bool:
    """What this model and tracker clearly reach on the video: one re-entry (a new id is expected), a brief full
    occlusion and some missed frames."""
    return m["MOTA"] >= 0.65 and m["IDF1"] >= 0.65 and m["IDSW"] <= 4 and m["Frag"] <= 10


def _confirmed(outputs: list[Detections]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per frame, the ids and boxes of detections in a confirmed track."""
    kept = [d[d.tracker_id >= 0] for d in outputs]
    return [d.tracker_id for d in kept], [d.xyxy for d in kept]


# --- the video, end to end ----------------------------------------------------------------------------------------

def test_tracking_metrics_on_moving_shapes(run: dict, truth: shapes.Truth):
    ids, boxes = _confirmed(run["outputs"])
    m = _scored(truth, ids, boxes)
    print(f"\nmoving shapes (seed 0, {len(truth.frames)} frames, {sum(map(len, truth.ids))} true boxes): "
          + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()))
    assert _good_tracking(m), m


def test_metric_thresholds_fail_broken_trackers(run: dict, truth: shapes.Truth):
    ids, boxes = _confirmed(run["outputs"])
    rng = np.random.default_rng(0)
    shuffled = [rng.permutation(frame_ids) for frame_ids in ids]  # the same boxes, ids dealt out anew each frame
    untracked = [np.arange(len(b)) + 1000 * t for t, b in enumerate(boxes)]  # a new id for every box
    for broken in (shuffled, untracked):
        m = _scored(truth, broken, boxes)
        assert not _good_tracking(m), m


def test_line_counts_match_the_truth(run: dict, truth: shapes.Truth):
    print(f"\nline: true in {truth.line_in} out {truth.line_out}; counted in {run['line']['in_per_class']} "
          f"out {run['line']['out_per_class']}")
    assert run["line"]["in_per_class"] == truth.line_in
    assert run["line"]["out_per_class"] == truth.line_out
    assert run["line"]["in"] == sum(truth.line_in.values()) and run["line"]["out"] == sum(truth.line_out.values())


def test_zone_counts_match_the_truth(run: dict, truth: shapes.Truth):
    agree = np.mean([now == true for now, true in zip(run["occupancy"], truth.zone_now)])
    print(f"\nzone: true visits {truth.zone_visits}, counted {run['zone']['visits_per_class']}; occupancy agrees on "
          f"{agree:.1%} of frames")
    assert run["zone"]["visits_per_class"] == truth.zone_visits
    assert run["zone"]["visits"] == sum(truth.zone_visits.values())
    assert run["zone"]["now_per_class"] == truth.zone_now[-1]
    assert agree >= 0.9


def test_track_takes_frames_in_memory(detector: Detector, truth: shapes.Truth):
    frames = [f[..., ::-1] for f in truth.frames[:20]]  # RGB
    out = [dets for _, dets in detector.track(iter(frames), color="RGB")]
    assert len(out) == 20 and all(d.tracker_id is not None for d in out)
    assert len({int(i) for d in out[5:] for i in d.tracker_id if i >= 0}) >= 2


def test_track_rejects_one_image_and_non_iterables(detector: Detector):
    with pytest.raises(ImageError, match="for one image call the detector"):
        next(detector.track(np.zeros((64, 64, 3), np.uint8)))
    for bad in (3.5, None, True):
        with pytest.raises(ImageError, match="iterable of frames"):
            next(detector.track(bad))


def test_moving_shapes_truth_is_what_the_story_says(truth: shapes.Truth):
    assert truth.line_in == {"circle": 1, "ring": 1, "triangle": 1} and truth.line_out == {"ring": 1}
    assert truth.zone_visits == {"ring": 1, "triangle": 1}
    ring = shapes.NAMES.index("ring")
    gone = [t for t, labels in enumerate(truth.labels) if ring not in labels.tolist()]
    assert gone and gone[0] > 50 and gone[-1] < 130  # the ring leaves and comes back
    circle = shapes.NAMES.index("circle")
    hidden = [t for t in range(100, 125) if circle not in truth.labels[t].tolist()]
    assert hidden  # the square hides the circle for a while
    again = shapes.render(seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(truth.frames[::30], again.frames[::30]))


# --- converters ---------------------------------------------------------------------------------------------------

def _dets(tracker_id: list[int] | None = None) -> Detections:
    return Detections(xyxy=[[10, 20, 60, 80], [100, 100, 150, 170], [5, 5, 25, 25]], scores=[0.9, 0.6, 0.3],
                      labels=[2, 0, 2], names=NAMES, image_size=(240, 320), tracker_id=tracker_id)


def test_supervision_round_trip_keeps_everything():
    d = _dets([7, -1, 3])
    s = d.to_supervision()
    assert isinstance(s, sv.Detections) and list(s.data["class_name"]) == ["c", "a", "c"]
    back = Detections.from_supervision(s, names=NAMES, image_size=d.image_size)
    np.testing.assert_array_equal(back.xyxy, d.xyxy)
    np.testing.assert_array_equal(back.scores, d.scores)
    np.testing.assert_array_equal(back.labels, d.labels)
    np.testing.assert_array_equal(back.tracker_id, [7, -1, 3])
    assert back.names == NAMES and back.image_size == (240, 320)
    named = Detections.from_supervision(s)  # names from the class_name data alone
    assert named.class_names == ["c", "a", "c"]
    assert Detections.from_supervision(_dets().to_supervision()).tracker_id is None
    with pytest.raises(ConfigError, match="supervision.Detections"):
        Detections.from_supervision(d)


# --- the tracker ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", [
    {"frame_rate": 0}, {"frame_rate": "30"}, {"lost_frames": 0}, {"lost_frames": 2.5}, {"min_frames": True},
    {"new_track_conf": 1.5}, {"high_conf": -0.1}, {"min_iou": None}, {"low_conf": 2}, {"duplicate_iou": float("nan")},
])
def test_tracker_rejects_bad_options(option: dict):
    with pytest.raises(ConfigError, match=next(iter(option))):
        Tracker(**option)


def _moving(t: int, boxes: list[list[float]], scores: list[float], labels: list[int] | None = None) -> Detections:
    """Boxes shifted 4 px right per frame t."""
    xyxy = np.asarray(boxes, np.float32) + np.array([4 * t, 0, 4 * t, 0], np.float32)
    return Detections(xyxy=xyxy, scores=scores, labels=labels or [0] * len(boxes), names=NAMES)


def test_tracker_keeps_one_id_per_object():
    tracker = Tracker()
    boxes = [[10, 10, 50, 50], [10, 120, 60, 170]]
    seen = [tracker.update(_moving(t, boxes, [0.8, 0.6])) for t in range(8)]
    assert (seen[0].tracker_id == -1).all()  # a track needs min_frames before it gets an id
    ids = {tuple(sorted(d.tracker_id.tolist())) for d in seen[2:]}
    assert ids == {(0, 1)}
    empty = tracker.update(Detections.empty(NAMES))
    assert len(empty) == 0 and empty.tracker_id is not None
    tracker.reset()
    assert (tracker.update(_moving(0, boxes, [0.8, 0.6])).tracker_id == -1).all()


def test_a_track_keeps_its_class_while_the_detector_flickers():
    tracker = Tracker()
    flicker = [0, 0, 0, 1, 0, 2, 0, 1]
    out = [tracker.update(_moving(t, [[10, 10, 50, 50]], [0.7], [label])) for t, label in enumerate(flicker)]
    assert [d.labels.tolist() for d in out[1:]] == [[0]] * 7


def test_tracker_tracks_each_object_once():
    tracker = Tracker()
    copies = [[10, 10, 50, 50], [10, 10, 50, 50], [11, 10, 51, 49], [200, 10, 240, 50]]
    for t in range(5):
        out = tracker.update(_moving(t, copies, [0.7, 0.6, 0.65, 0.15], [1, 2, 1, 0]))
    assert len(out) == 1 and out.tracker_id.tolist() == [0] and out.labels.tolist() == [1]  # 0.15: below low_conf
    assert len(Tracker(duplicate_iou=1.0).update(_moving(0, copies, [0.7, 0.6, 0.65, 0.9]))) == 3
    with pytest.raises(ConfigError, match="Detections of one frame"):
        tracker.update(np.zeros((1, 4)))


def test_one_per_box_keeps_the_best_class_of_each_box():
    d = Detections(xyxy=[[0, 0, 10, 10], [5, 5, 20, 20], [0, 0, 10, 10]], scores=[0.4, 0.5, 0.7], labels=[0, 1, 2],
                   names=NAMES)
    kept = one_per_box(d)
    assert kept.labels.tolist() == [1, 2] and kept.scores.tolist() == pytest.approx([0.5, 0.7])
    assert len(one_per_box(Detections.empty(NAMES))) == 0


# --- counters -------------------------------------------------------------------------------------------------------

def _track_at(center: tuple[float, float], track: int = 1, label: int = 0) -> Detections:
    x, y = center
    return Detections(xyxy=[[x - 5, y - 5, x + 5, y + 5]], scores=[0.9], labels=[label], names=NAMES,
                      tracker_id=[track])


def test_line_in_is_upwards_across_a_line_drawn_left_to_right():
    line = LineCounter((0, 100), (300, 100))
    for y in (150, 130, 110, 90, 70):  # up the screen: "in"
        line.update(_track_at((50, y), label=1))
    for y in (90, 110, 130):  # back down: "out", as class c
        line.update(_track_at((50, y), label=2))
    assert line.counts == {"in": 1, "out": 1, "in_per_class": {"b": 1}, "out_per_class": {"c": 1}}
    down = LineCounter((100, 0), (100, 300))  # drawn downwards: "in" is to the right
    for x in (50, 80, 120, 150):
        down.update(_track_at((x, 50)))
    assert down.counts["in"] == 1 and down.counts["out"] == 0


def test_zone_counts_now_and_distinct_visitors():
    zone = ZoneCounter([(0, 0), (100, 0), (100, 100), (0, 100)])
    inside = zone.update(Detections(xyxy=[[10, 10, 30, 30], [40, 40, 60, 60], [200, 200, 210, 210], [5, 5, 9, 9]],
                                    scores=[0.9] * 4, labels=[0, 1, 0, 0], names=NAMES, tracker_id=[1, 2, 3, -1]))
    assert inside.tolist() == [True, True, False, False]  # an untracked box (-1) never counts
    zone.update(_track_at((50, 50), track=1))
    zone.update(_track_at((150, 50), track=1))
    assert zone.counts == {"now": 0, "now_per_class": {}, "visits": 2, "visits_per_class": {"a": 1, "b": 1}}


@pytest.mark.parametrize("make", [
    lambda: LineCounter((0, 0), (0, 0)), lambda: LineCounter((0, 0), (1, 2, 3)), lambda: LineCounter((0, 0), ("a", 1)),
    lambda: LineCounter((0, float("nan")), (5, 5)), lambda: ZoneCounter([(0, 0), (10, 0)]),
    lambda: ZoneCounter([(0, 0), (10, 0), (10, float("inf"))]), lambda: ZoneCounter("square"),
])
def test_counters_reject_bad_geometry(make):
    with pytest.raises(ConfigError, match="line|zone"):
        make()


def test_counters_refuse_untracked_detections():
    for counter in (LineCounter((0, 0), (10, 10)), ZoneCounter([(0, 0), (10, 0), (10, 10)])):
        with pytest.raises(ConfigError, match="Detector.track or Tracker.update"):
            counter.update(_dets())
        with pytest.raises(ConfigError, match="one frame's Detections"):
            counter.update([_dets([1, 2, 3])])


def test_drawing_changes_pixels():
    image = np.full((240, 320, 3), 60, np.uint8)
    line, zone = LineCounter((20, 120), (300, 120)), ZoneCounter([(30, 30), (200, 30), (200, 200)])
    for counter in (line, zone):
        canvas = image.copy()
        counter.draw(canvas)
        assert (canvas != image).any()
    tracked, untracked = _dets([7, -1, 3]).draw(image), _dets().draw(image)
    assert (tracked != image).any() and (tracked != untracked).any()  # "#7" and "#3" are written on the boxes
    assert (image == 60).all()
