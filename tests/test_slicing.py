"""Sliced inference: on a 2400x2400 scene of 120 small shapes the bundled model at 320 finds almost nothing
whole and most of them tile by tile; objects cut by tile borders come out once; tiles go through the runtime
in batches, also for artifacts with a fixed batch; an image that fits in one tile is detected as without
slicing."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import assert_same_detections

from deim_edge import Detector
from deim_edge.errors import ConfigError
from deim_edge.results import Detections
from deim_edge.slicing import check_slicing, detect_sliced
from deim_edge.synthetic import SHAPES, background, random_shape_mask

pytest.importorskip("supervision")

SIZE, TILE, OVERLAP = 2400, 320, 0.2  # the scene's side; tiles of the model's input size
NUM_OBJECTS, NUM_ON_BORDERS = 120, 30
GAP = 12  # the least free space between two objects' boxes


def tile_borders() -> list[int]:
    """The coordinates where a tile of the slicing grid ends or starts inside the scene (on both axes): tiles
    start every TILE - overlap pixels, the last one flush with the far edge (supervision's InferenceSlicer)."""
    stride = TILE - round(TILE * OVERLAP)
    starts = [*range(0, SIZE - TILE, stride), SIZE - TILE]
    return sorted({*starts[1:], *(s + TILE for s in starts[:-1])})


def small_shape(rng: np.random.Generator, shape: str) -> np.ndarray:
    """The bool mask, cropped to its extent, of one shape 32-64 pixels across (circumradius about 16-32: the
    smallest the model saw in training at its 320 input), drawn as synthetic scenes draw them."""
    while True:
        mask = random_shape_mask(rng, shape, 170, 170)
        ys, xs = np.nonzero(mask)
        if 32 <= max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 <= 64:
            return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def paint(rng: np.random.Generator, region: np.ndarray, mask: np.ndarray) -> None:
    """Fill `mask` of `region` with a colour that stands out from what it covers (as synthetic.draw_scene)."""
    mean = region[mask].mean(0)
    color = rng.integers(0, 256, 3)
    for _ in range(10):
        if np.abs(color - mean).sum() > 150:
            break
        color = rng.integers(0, 256, 3)
    region[mask] = color


def large_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A SIZE x SIZE RGB scene of NUM_OBJECTS small shapes, none touching another: image, boxes [N,4] (the exact
    extent of each shape's pixels), labels [N], and which objects straddle a tile border [N] (the first
    NUM_ON_BORDERS, centred on a border in x, y or both, so one tile sees a piece and its neighbour the whole)."""
    rng = np.random.default_rng(seed)
    image = background(rng, SIZE, SIZE)
    borders = tile_borders()
    boxes, labels = np.zeros((0, 4), np.float32), []
    while len(boxes) < NUM_OBJECTS:
        label = int(rng.integers(4))
        mask = small_shape(rng, SHAPES[label])
        h, w = mask.shape
        if len(boxes) < NUM_ON_BORDERS:
            on_x, on_y = [(True, False), (False, True), (True, True)][len(boxes) % 3]
            cx = rng.choice(borders) if on_x else rng.uniform(w, SIZE - w)
            cy = rng.choice(borders) if on_y else rng.uniform(h, SIZE - h)
            x, y = int(np.clip(cx - w // 2, 0, SIZE - w)), int(np.clip(cy - h // 2, 0, SIZE - h))
        else:
            x, y = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
        box = np.array([x, y, x + w, y + h], np.float32)
        if ((np.minimum(boxes[:, 2:], box[2:]) - np.maximum(boxes[:, :2], box[:2])) > -GAP).all(1).any():
            continue  # too close to an object already there
        paint(rng, image[y:y + h, x:x + w], mask)
        boxes, labels = np.vstack([boxes, box]), labels + [label]
    on_border = np.arange(NUM_OBJECTS) < NUM_ON_BORDERS
    return image, boxes, np.array(labels, np.int64), on_border


def overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """IoU and IOS (intersection over the smaller box) of each box of a [N,4] with each of b [M,4]: [N,M] each."""
    inter = np.prod(np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]),
                            0, None), axis=2)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], axis=1), np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None] - inter), inter / np.minimum(area_a[:, None], area_b[None])


def matched(dets: Detections, boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches at IoU 0.5 and the same class, best scores first: (which objects were found [N],
    which detections found one [M])."""
    iou, _ = overlaps(boxes, dets.xyxy)
    found, used = np.zeros(len(boxes), bool), np.zeros(len(dets), bool)
    for j in np.argsort(-dets.scores, kind="stable"):
        candidates = np.where((iou[:, j] >= 0.5) & ~found & (labels == dets.labels[j]), iou[:, j], -1)
        if candidates.max() >= 0:
            found[candidates.argmax()] = used[j] = True
    return found, used


def on_objects(dets: Detections, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which object each detection lies on (the one it overlaps most), and whether it does: IoU at least 0.5,
    or mostly inside it or around it (IOS at least 0.7, as a piece of a cut object is)."""
    iou, ios = overlaps(boxes, dets.xyxy)
    nearest = iou.argmax(0) if len(boxes) else np.zeros(len(dets), np.int64)
    columns = np.arange(len(dets))
    return nearest, (iou[nearest, columns] >= 0.5) | (ios[nearest, columns] >= 0.7)


def same_class_repeats(dets: Detections, boxes: np.ndarray) -> np.ndarray:
    """How many more detections than one of some class lie on each object [N] (0: counted at most once)."""
    nearest, on = on_objects(dets, boxes)
    counts = np.zeros((len(boxes), max(int(dets.labels.max(initial=0)) + 1, 1)), np.int64)
    np.add.at(counts, (nearest[on], dets.labels[on]), 1)
    return np.clip(counts - 1, 0, None).sum(1)


class RecordingRuntime:
    """A runtime that passes each call on and records its batch size; `batch` overrides the artifact's."""

    def __init__(self, runtime, batch: int | None = None) -> None:
        self.inner, self.name, self.calls = runtime, runtime.name, []
        self.metadata = runtime.metadata if batch is None else runtime.metadata.with_(batch=batch)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        self.calls.append(len(images))
        return self.inner.run(images)


@pytest.fixture(scope="module")
def scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return large_scene()


@pytest.fixture(scope="module")
def results(trained_onnx, scene) -> dict:
    """The scene detected whole and tile by tile, with the batch size of each runtime call of the sliced run."""
    image = scene[0]
    recorder = RecordingRuntime(Detector(trained_onnx, threads=1).runtime)
    return {"whole": Detector(trained_onnx, threads=1)(image, color="RGB"),
            "sliced": Detector(recorder, slice=TILE, overlap=OVERLAP)(image, color="RGB"), "calls": recorder.calls}


def test_tiles_find_the_small_objects_the_whole_image_loses(scene, results):
    _, boxes, labels, on_border = scene
    recall = {kind: matched(results[kind], boxes, labels)[0] for kind in ("whole", "sliced")}
    print(f"\nrecall at IoU 0.5 over {len(boxes)} objects 32-64 px in {SIZE}x{SIZE}: whole image "
          f"{recall['whole'].mean():.3f}, {TILE}-px tiles {recall['sliced'].mean():.3f} (of the "
          f"{on_border.sum()} across tile borders: {recall['sliced'][on_border].mean():.3f})")
    assert recall["sliced"].mean() >= 0.75
    assert recall["sliced"].mean() >= recall["whole"].mean() + 0.5
    assert recall["sliced"][on_border].mean() >= 0.6


def test_objects_cut_by_tile_borders_are_counted_once(scene, results):
    _, boxes, labels, on_border = scene
    dets = results["sliced"]
    repeats = same_class_repeats(dets, boxes)
    _, on = on_objects(dets, boxes)
    _, used = matched(dets, boxes, labels)
    print(f"\n{len(dets)} detections: {on.mean():.3f} on an object, {used.mean():.3f} matched one-to-one with "
          f"its class; objects found twice in one class: {(repeats > 0).sum()} (across borders "
          f"{(repeats[on_border] > 0).sum()} of {on_border.sum()})")
    assert repeats[on_border].sum() == 0
    assert (repeats > 0).mean() <= 0.03
    assert on.mean() >= 0.85  # what is found is on the objects; nothing is made up at the tile seams


def test_tiles_go_through_the_runtime_in_batches(results):
    tiles = len(tile_borders()) // 2 + 1  # per axis
    calls = results["calls"]
    assert sum(calls) == tiles ** 2 and max(calls) == 8 and calls.count(8) == tiles ** 2 // 8, calls


def test_an_artifact_with_a_fixed_batch_gets_full_batches(trained_onnx, scene):
    image = scene[0][:900, :700]
    fixed = RecordingRuntime(Detector(trained_onnx, threads=1).runtime, batch=5)
    sliced = Detector(fixed, slice=TILE, overlap=OVERLAP)(image, color="RGB")
    dynamic = Detector(trained_onnx, threads=1, slice=TILE, overlap=OVERLAP)(image, color="RGB")
    assert fixed.calls == [5, 5, 5]  # 3 x 4 tiles, five at a time, the last two padded with blank ones
    assert len(dynamic) > 5
    assert_same_detections(sliced, dynamic, box_atol=1e-3, score_atol=1e-5)


def test_an_image_that_fits_in_one_tile_is_detected_as_without_slicing(trained_onnx, scene):
    image = scene[0][1000:1300, 900:1240]
    plain = Detector(trained_onnx, threads=1)(image, color="RGB")
    sliced = Detector(trained_onnx, threads=1, slice=640)(image, color="RGB")
    assert len(plain) > 0 and sliced.image_size == plain.image_size == (300, 340)
    assert_same_detections(sliced, plain, box_atol=1e-4)


def test_colour_order_is_kept_through_the_tiles(trained_onnx, scene):
    image = np.ascontiguousarray(scene[0][:700, :700])
    detector = Detector(trained_onnx, threads=1, slice=TILE, overlap=OVERLAP)
    from_rgb, from_bgr = detector(image, color="RGB"), detector(np.ascontiguousarray(image[..., ::-1]))
    assert len(from_rgb) > 0 and from_rgb.names == ("circle", "square", "triangle", "ring")
    assert_same_detections(from_bgr, from_rgb, box_atol=1e-4)


def test_every_tile_has_the_slice_size_and_boxes_stay_inside_the_image():
    """No overlap on a 700x500 image: the tiles reaching past its right and bottom edges (60 and 244 pixels of
    image) come padded with black to the full 320x256, and a box the detector puts in the padding is clipped to
    the image, or dropped when it lies wholly there."""
    image = np.random.default_rng(0).integers(1, 256, (500, 700, 3), np.uint8)
    seen: list[np.ndarray] = []

    def detect(tiles: list[np.ndarray]) -> list[Detections]:
        seen.extend(tiles)
        return [Detections([[40, 10, 80, 50], [100, 250, 120, 256]], [0.9, 0.8], [0, 1], image_size=(256, 320))
                for _ in tiles]

    found = detect_sliced(detect, image, (320, 256), 0.0, batch=4, names=("a", "b"))
    assert len(seen) == 3 * 2 and all(t.shape == (256, 320, 3) for t in seen)
    np.testing.assert_array_equal(seen[0], image[:256, :320])
    np.testing.assert_array_equal(seen[2][:, :60], image[:256, 640:])  # the tile at the right edge, then black
    assert not seen[2][:, 60:].any() and not seen[5][244:].any() and seen[5][:244, :60].all()
    assert found.image_size == (500, 700) and found.names == ("a", "b")
    first, second = found[found.labels == 0], found[found.labels == 1]
    assert len(first) == 6 and sorted(first.xyxy[:, 2].tolist()) == [80, 80, 400, 400, 700, 700]  # clipped at 700
    assert len(second) == 2 and second.xyxy[:, 3].tolist() == [256, 256]  # only in the two tiles it is inside


@pytest.mark.parametrize("slice_wh, overlap", [(10, 0.2), (31, 0.2), ((640,), 0.2), ((640, 480, 3), 0.2),
                                               (640.0, 0.2), (True, 0.2), ("640", 0.2), ((640, 16), 0.2),
                                               (640, 1.0), (640, -0.1), (640, 1.5), (640, "0.2"), (640, True)])
def test_bad_slicing_is_a_config_error(slice_wh, overlap):
    with pytest.raises(ConfigError, match="slice takes|overlap is"):
        check_slicing(slice_wh, overlap)


def test_slicing_is_checked_before_the_model_loads():
    with pytest.raises(ConfigError, match="at least 32"):
        Detector("no-such-model.onnx", slice=16)
    assert check_slicing(640, 0) == ((640, 640), 0.0)
    assert check_slicing((640, 480), 0.25) == ((640, 480), 0.25)


def test_slicing_without_the_extra_names_it_before_the_model_loads(monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # import supervision now fails
    with pytest.raises(ConfigError, match=r"deim-edge\[analytics\]"):
        Detector("no-such-model.onnx", slice=640)
