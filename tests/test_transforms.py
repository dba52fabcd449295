"""Training transforms: boxes follow the pixels, Dense O2O ops, the epoch schedule, reproducibility."""
import numpy as np
import pytest

from deim_edge.training.dense_o2o import (AugmentationPolicy, Mosaic, TrainPipeline, copy_blend, mixup,
                                          multiscale_sizes)
from deim_edge.training.transforms import (Compose, RandomHorizontalFlip, RandomIoUCrop, RandomPhotometricDistort,
                                           RandomZoomOut, Resize, SanitizeBoundingBoxes, hflip)
from deim_edge.variants import get_variant

COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def _sample(rng, h=120, w=160, n=3):
    """Grey background with n non-overlapping filled rectangles of unique colours at the boxes."""
    image = np.full((h, w, 3), 90, np.uint8)
    boxes = []
    for k in range(n):
        x1, y1 = k * (w // 3) + int(rng.integers(0, 10)), int(rng.integers(0, h - 40))
        x2, y2 = x1 + int(rng.integers(15, 40)), y1 + int(rng.integers(15, 40))
        image[y1:y2, x1:x2] = COLORS[k]
        boxes.append([x1, y1, x2, y2])
    target = {"boxes": np.array(boxes, np.float32), "labels": np.arange(n, dtype=np.int64),
              "image_id": 7, "orig_size": (h, w)}
    return image, target


def _color_box(image, color):
    """Tight xyxy box (pixel edges) of the pixels close to `color`, or None."""
    ys, xs = np.nonzero(np.abs(image.astype(int) - color).sum(-1) < 60)
    return None if len(xs) == 0 else np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _assert_boxes_track_colors(image, target, tol=2.0):
    assert len(target["boxes"]) == len(target["labels"])
    for box, label in zip(target["boxes"], target["labels"]):
        found = _color_box(image, COLORS[label])
        assert found is not None
        np.testing.assert_allclose(found, box, atol=tol)


@pytest.mark.parametrize("op", [RandomZoomOut(p=1.0), RandomIoUCrop(p=1.0), RandomHorizontalFlip(p=1.0),
                                Resize((96, 128)), Resize((200, 300)), Resize(64)])
def test_boxes_follow_geometric_transforms(op):
    rng = np.random.default_rng(0)
    for _ in range(10):
        image, target = _sample(rng, n=1 if isinstance(op, RandomIoUCrop) else 3)
        out, tgt = op(image, target, rng)
        _assert_boxes_track_colors(out, tgt)


def test_iou_crop_drops_boxes_with_centre_outside_and_resize_sizes():
    rng = np.random.default_rng(1)
    image, target = _sample(rng, n=3)
    for _ in range(20):
        out, tgt = RandomIoUCrop(p=1.0)(image, target, rng)
        h, w = out.shape[:2]
        assert (tgt["boxes"][:, 2] <= w).all() and (tgt["boxes"][:, 3] <= h).all()
        assert (tgt["boxes"] >= 0).all()
    assert Resize(64).output_size(120, 160) == (64, 85)
    assert Resize((32, 48))(image, target)[0].shape == (32, 48, 3)


def test_flip_twice_is_identity():
    image, target = _sample(np.random.default_rng(2))
    out, tgt = hflip(*hflip(image, target))
    np.testing.assert_array_equal(out, image)
    np.testing.assert_array_equal(tgt["boxes"], target["boxes"])


def test_sanitize_drops_tiny_degenerate_and_outside_boxes_in_sync():
    image = np.zeros((50, 60, 3), np.uint8)
    boxes = np.array([[0, 0, 20, 20], [5, 5, 8, 30], [10, 10, 10, 30], [-1, 0, 20, 20], [40, 40, 61, 49],
                      [30, 30, 45, 45]], np.float32)
    target = {"boxes": boxes, "labels": np.arange(6, dtype=np.int64), "area": np.arange(6.0), "image_id": 1,
              "orig_size": (50, 60)}
    _, out = SanitizeBoundingBoxes(min_size=4)(image, target)
    np.testing.assert_array_equal(out["labels"], [0, 5])
    np.testing.assert_array_equal(out["area"], [0.0, 5.0])
    np.testing.assert_array_equal(out["boxes"], boxes[[0, 5]])


def test_photometric_keeps_shape_boxes_and_changes_pixels():
    rng = np.random.default_rng(3)
    image, target = _sample(rng)
    image = (image.astype(int) + rng.integers(0, 60, image.shape)).clip(0, 255).astype(np.uint8)
    op = RandomPhotometricDistort(p=1.0)
    out, tgt = op(image, target, rng)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    np.testing.assert_array_equal(tgt["boxes"], target["boxes"])
    same, _ = RandomPhotometricDistort(p=0.0)(image, target, rng)
    np.testing.assert_array_equal(same, image)


def test_photometric_swaps_channels_only_when_allowed():
    rng = np.random.default_rng(5)
    image, target = _sample(rng)
    image = (image.astype(int) + rng.integers(0, 60, image.shape)).clip(0, 255).astype(np.uint8)
    no_colour = dict(brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=(0.0, 0.0), p=1.0)
    swapped = [RandomPhotometricDistort(**no_colour)(image, target, np.random.default_rng(s))[0] for s in range(6)]
    assert any(not np.array_equal(out, image) for out in swapped)  # only a permutation changes these pixels
    assert all(sorted(out.reshape(-1, 3).sum(0).tolist()) == sorted(image.reshape(-1, 3).sum(0).tolist())
               for out in swapped)
    for seed in range(6):
        kept, _ = RandomPhotometricDistort(**no_colour, channel_swap=False)(image, target, np.random.default_rng(seed))
        np.testing.assert_array_equal(kept, image)


def test_mosaic_output_size_and_boxes_inside_canvas():
    rng = np.random.default_rng(4)
    mosaic = Mosaic(output_size=80, max_cached_images=3)
    for _ in range(6):
        image, target = _sample(rng)
        out, tgt = mosaic(image, target, rng)
        assert out.shape == (160, 2 * 106, 3)  # shorter side 80 -> 80 x 106 tiles
        b = tgt["boxes"]
        assert len(b) == len(tgt["labels"]) and len(b) > 0
        assert (b >= 0).all() and (b[:, 2] <= out.shape[1]).all() and (b[:, 3] <= out.shape[0]).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
    assert len(mosaic.cache) == 3


def test_mosaic_without_rotation_keeps_boxes_tight():
    rng = np.random.default_rng(5)
    mosaic = Mosaic(output_size=120, rotation_range=0, scaling_range=(1.0, 1.0), translation_range=(0, 0),
                    max_cached_images=1)
    image, target = _sample(rng, n=1)
    out, tgt = mosaic(image, target, rng)  # four copies of the same sample
    assert len(tgt["boxes"]) == 4
    for box in tgt["boxes"]:
        x1, y1, x2, y2 = box.round().astype(int)
        crop = out[y1:y2, x1:x2].astype(int)
        assert (np.abs(crop - COLORS[0]).sum(-1) < 60).mean() > 0.95


def test_a_cropping_mosaic_keeps_the_objects_size():
    rng = np.random.default_rng(7)
    mosaic = Mosaic(output_size=120, rotation_range=0, scaling_range=(1.0, 1.0), translation_range=(0, 0),
                    max_cached_images=1, crop=120)
    image, target = _sample(rng, h=120, w=120, n=1)
    size = target["boxes"][0, 2:] - target["boxes"][0, :2]
    seen = 0
    for _ in range(8):
        out, tgt = mosaic(image, target, rng)  # a 120 x 120 window of a 240 x 240 mosaic of four copies
        assert out.shape == (120, 120, 3)
        b = tgt["boxes"]
        assert (b >= 0).all() and (b[:, 2:] <= 120).all()
        whole = [box for box in b if box[0] > 0 and box[1] > 0 and box[2] < 120 and box[3] < 120]
        for box in whole:  # not cut by the window: exactly the size it had
            np.testing.assert_allclose(box[2:] - box[:2], size)
            x1, y1, x2, y2 = box.round().astype(int)
            assert (np.abs(out[y1:y2, x1:x2].astype(int) - COLORS[0]).sum(-1) < 60).mean() > 0.95
        seen += len(whole)
    assert seen > 0


def test_mixup_keeps_both_box_sets():
    rng = np.random.default_rng(6)
    (a, ta), (b, tb) = _sample(rng, n=2), _sample(rng, n=3)
    images, targets = mixup([a, b], [ta, tb], beta=0.5)
    assert len(targets[0]["boxes"]) == 5 and len(targets[1]["boxes"]) == 5
    np.testing.assert_array_equal(targets[0]["boxes"][:2], ta["boxes"])
    np.testing.assert_array_equal(targets[0]["boxes"][2:], tb["boxes"])
    np.testing.assert_array_equal(targets[0]["labels"], [0, 1, 0, 1, 2])
    np.testing.assert_allclose(targets[0]["mixup"], [0.5, 0.5, 0.5, 0.5, 0.5])
    expected = np.rint(0.5 * a.astype(float) + 0.5 * b.astype(float))
    np.testing.assert_array_equal(images[0], expected)


@pytest.mark.parametrize("expand", [None, (0.1, 0.25)])
def test_copy_blend_adds_objects_and_keeps_background(expand):
    rng = np.random.default_rng(7)
    samples = [_sample(rng, n=3) for _ in range(2)]
    images = [(im.astype(int) + rng.integers(0, 50, im.shape)).astype(np.uint8) for im, _ in samples]
    targets = [t for _, t in samples]
    out, tgts = copy_blend(images, targets, beta=0.5, rng=rng, num_objects=3, area_threshold=100,
                           expand_ratios=expand)
    for image, before, result, tgt in zip(images, targets, out, tgts):
        n = len(before["boxes"])
        assert len(tgt["boxes"]) == n + 3 == len(tgt["labels"]) == len(tgt["mixup"])
        np.testing.assert_allclose(tgt["mixup"], [1.0] * n + [0.5] * 3)
        pasted = np.zeros(image.shape[:2], bool)
        grow = 0.0 if expand is None else expand[1]
        for x1, y1, x2, y2 in tgt["boxes"][n:]:
            ew, eh = int((x2 - x1) * grow), int((y2 - y1) * grow)
            pasted[max(int(y1) - eh, 0):int(y2) + eh, max(int(x1) - ew, 0):int(x2) + ew] = True
        assert pasted.any()
        np.testing.assert_array_equal(result[~pasted], image[~pasted])
        changed = np.any(result != image, axis=-1)
        assert changed[pasted].any()


def test_copy_blend_blends_rather_than_overwrites():
    image = np.full((64, 64, 3), 200, np.uint8)
    source = np.full((64, 64, 3), 0, np.uint8)
    source[10:30, 10:30] = 100
    t = lambda boxes: {"boxes": np.array(boxes, np.float32).reshape(-1, 4),  # noqa: E731
                       "labels": np.zeros(len(boxes), np.int64), "image_id": 0, "orig_size": (64, 64)}
    out, tgts = copy_blend([image, source], [t([]), t([[10, 10, 30, 30]])], beta=0.5,
                           rng=np.random.default_rng(8), num_objects=1, expand_ratios=None)
    x1, y1, x2, y2 = tgts[0]["boxes"][0].astype(int)
    assert (out[0][y1:y2, x1:x2] == 150).all()  # 0.5 * 200 + 0.5 * 100
    assert (out[0] == 200).sum() == 64 * 64 * 3 - 20 * 20 * 3


def test_multiscale_sizes_match_reference_rule():
    assert multiscale_sizes(640, 3) == [480, 512, 544, 576, 608, 640, 640, 640, 800, 768, 736, 704, 672]
    assert multiscale_sizes(320, 1) == [224, 256, 288, 320, 384, 352, 320]


def test_policy_atto_full_recipe():
    policy = AugmentationPolicy(get_variant("deimv2-atto").recipe)
    a = policy.at
    assert not a(3).photometric and not a(3).mosaic
    assert a(4).photometric and a(4).mosaic and a(249).mosaic
    assert not a(250).mosaic and a(250).photometric and a(399).photometric
    assert not a(400).photometric
    assert not any(a(e).mixup or a(e).copyblend or a(e).multiscale for e in range(500))  # disabled in atto
    assert policy.stop_epoch == 468 and policy.aug_end == 468


def test_policy_atto_scaled_to_20_epochs():
    policy = AugmentationPolicy(get_variant("deimv2-atto").recipe, epochs=20)
    assert policy.mosaic_epochs == (1, 10) and policy.photometric_epochs == (1, 16)
    assert policy.stop_epoch == 19 and policy.aug_end == 19
    assert not policy.at(0).photometric and policy.at(1).mosaic and not policy.at(10).mosaic
    assert policy.at(15).photometric and not policy.at(16).photometric


def test_policy_vit_s_full_and_scaled():
    recipe = get_variant("deimv2-s").recipe  # policy (4, 64, 120), mixup (4, 64), copyblend (4, 120), stop 120
    full = AugmentationPolicy(recipe)
    assert full.at(4).mixup and not full.at(64).mixup and full.at(119).copyblend and not full.at(120).copyblend
    assert full.at(119).multiscale and not full.at(120).multiscale
    short = AugmentationPolicy(recipe, epochs=20)  # x 20/132, no-aug tail of round(12 * 20/132) = 2
    assert short.mixup_epochs == (1, 10) and short.copyblend_epochs == (1, 18) and short.stop_epoch == 18
    assert not any(short.at(e).photometric or short.at(e).multiscale for e in (18, 19))
    rng = np.random.default_rng(9)
    sizes = {short.batch_size_px(5, 640, rng) for _ in range(200)}
    assert sizes <= set(multiscale_sizes(640, recipe.base_size_repeat)) and len(sizes) > 5
    assert short.batch_size_px(18, 640, rng) is None


def test_reproducible_for_a_seed():
    def run(seed):
        rng = np.random.default_rng(seed)
        data = np.random.default_rng(10)
        pipe = TrainPipeline(AugmentationPolicy(get_variant("deimv2-s").recipe, epochs=20), size=(96, 96))
        outs = [pipe(*_sample(data), epoch=3, rng=rng) for _ in range(6)]
        images, targets = pipe.policy.mix_batch([o[0] for o in outs], [o[1] for o in outs], 3, rng)
        return images, targets

    (i1, t1), (i2, t2), (i3, _) = run(0), run(0), run(1)
    for a, b, ta, tb in zip(i1, i2, t1, t2):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ta["boxes"], tb["boxes"])
    assert any(not np.array_equal(a, c) for a, c in zip(i1, i3))
    assert all(im.shape == (96, 96, 3) for im in i1)


def test_compose_passes_its_generator():
    image, target = _sample(np.random.default_rng(11))
    ops = [RandomZoomOut(p=0.5), RandomHorizontalFlip()]
    a = Compose(ops, rng=np.random.default_rng(5))(image, target)
    b = Compose(ops, rng=np.random.default_rng(5))(image, target)
    np.testing.assert_array_equal(a[0], b[0])
