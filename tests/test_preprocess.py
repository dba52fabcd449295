"""load_image (paths, every array kind), preprocess (stretch, letterbox, normalization, layouts) and
Transform (boxes back to the original image)."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from conftest import DATA
from deim_edge.errors import ConfigError, ImageError
from deim_edge.preprocess import Transform, load_image, preprocess

PHOTOS = sorted((DATA / "images").glob("*.jpg"))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _random_image(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (h, w) if channels == 0 else (h, w, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# ---------------------------------------------------------------- load_image: files

def test_photos_are_present():
    assert {p.name for p in PHOTOS} == {"astronaut.jpg", "chelsea.jpg", "coffee.jpg"}
    assert all(p.stat().st_size < 100_000 for p in PHOTOS)


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_load_photo_as_rgb(path):
    image = load_image(path)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    np.testing.assert_array_equal(image, cv2.imread(str(path))[:, :, ::-1])
    np.testing.assert_array_equal(load_image(str(path)), image)


def test_load_non_ascii_path(tmp_path):
    path = tmp_path / "café 写真 ü.jpg"
    shutil.copy(PHOTOS[0], path)
    np.testing.assert_array_equal(load_image(path), load_image(PHOTOS[0]))


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="no such image file") as e:
        load_image(path)
    assert str(path) in str(e.value)


def test_load_directory(tmp_path):
    with pytest.raises(ImageError, match="is a directory") as e:
        load_image(tmp_path)
    assert str(tmp_path) in str(e.value)


@pytest.mark.parametrize("content", [b"this is not an image\n", b"", b"\xff\xd8\xff\xe0broken jpeg"])
def test_load_not_an_image(tmp_path, content):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match="not an image") as e:
        load_image(path)
    assert str(path) in str(e.value)


def test_load_rejects_other_types():
    with pytest.raises(ImageError, match="path or a numpy array"):
        load_image([[1, 2, 3]])
    with pytest.raises(ConfigError, match="color"):
        load_image(_random_image(4, 4), color="BRG")


# ---------------------------------------------------------------- load_image: arrays

def test_bgr_is_the_default_and_rgb_is_explicit():
    bgr = _random_image(5, 7)
    np.testing.assert_array_equal(load_image(bgr), bgr[:, :, ::-1])
    np.testing.assert_array_equal(load_image(bgr, color="BGR"), bgr[:, :, ::-1])
    rgb = load_image(bgr, color="RGB")
    assert rgb is bgr  # RGB uint8 input: no copy


@pytest.mark.parametrize("shape", [(6, 9), (6, 9, 1)])
def test_grayscale_to_three_channels(shape):
    gray = _random_image(6, 9, channels=0).reshape(shape)
    out = load_image(gray)
    assert out.shape == (6, 9, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray.reshape(6, 9))


@pytest.mark.parametrize("color", ["BGR", "RGB"])
def test_alpha_is_dropped(color):
    four = _random_image(4, 5, channels=4)
    expected = four[:, :, 2::-1] if color == "BGR" else four[:, :, :3]
    np.testing.assert_array_equal(load_image(four, color=color), expected)


def test_uint16_scaled_to_8_bit():
    image = np.array([[[0, 257, 65535], [128 * 257, 1000, 65000]]], dtype=np.uint16)
    out = load_image(image, color="RGB")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[[0, 1, 255], [128, 4, 253]]])


def test_float_in_unit_range_scaled():
    image = np.array([[[0.0, 0.5, 1.0], [-0.002, 0.2, 1.002]]], dtype=np.float32)  # within rounding of [0, 1]
    np.testing.assert_array_equal(load_image(image, color="RGB"), [[[0, 128, 255], [0, 51, 255]]])
    assert load_image(image.astype(np.float64), color="RGB").dtype == np.uint8


def test_float_out_of_range_refused():
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4, 3), 200.0, np.float32))


@pytest.mark.parametrize("dtype", [bool, np.int32, np.int8, np.complex64])
def test_unsupported_dtypes(dtype):
    with pytest.raises(ImageError, match="dtype"):
        load_image(np.zeros((4, 4, 3), dtype=dtype))


def test_non_contiguous_views():
    base = _random_image(20, 30, channels=4, seed=3)
    views = [base[:, ::-1, :3], base[2:15, 5:25, :3], base[::2, ::3, :3], base[:, :, 2::-1]]
    for view in views:
        assert not view.flags.c_contiguous
        np.testing.assert_array_equal(load_image(view), np.ascontiguousarray(view)[:, :, ::-1])
        np.testing.assert_array_equal(load_image(view, color="RGB"), view)
    np.testing.assert_array_equal(load_image(base[:, ::-1], color="RGB"), base[:, ::-1, :3])


@pytest.mark.parametrize("shape", [(0, 5, 3), (5, 0, 3), (0, 0), (0, 4, 1)])
def test_empty_arrays(shape):
    with pytest.raises(ImageError, match="empty") as e:
        load_image(np.zeros(shape, np.uint8))
    assert str(shape) in str(e.value)


@pytest.mark.parametrize("shape", [(5,), (2, 5, 5, 3), (5, 5, 2), (5, 5, 5)])
def test_wrong_shapes(shape):
    with pytest.raises(ImageError) as e:
        load_image(np.zeros(shape, np.uint8))
    assert str(shape) in str(e.value)


# ---------------------------------------------------------------- preprocess: pixels

def _reference(image: np.ndarray, size: tuple[int, int], mean=None, std=None) -> np.ndarray:
    """Stretch as DEIMv2 evaluates: bilinear resize, /255, (x - mean) / std; HWC float64."""
    out = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) / 255.0
    return out if mean is None else (out - np.array(mean)) / np.array(std)


@pytest.mark.parametrize("mean,std", [(None, None), (MEAN, STD)])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_stretch_matches_reference(mean, std, layout):
    image = _random_image(480, 640)
    batch, (transform,) = preprocess([image], (320, 416), mean=mean, std=std, layout=layout)
    assert batch.dtype == np.float32 and batch.flags.c_contiguous
    expected = _reference(image, (320, 416), mean, std)
    if layout == "NCHW":
        assert batch.shape == (1, 3, 320, 416)
        expected = expected.transpose(2, 0, 1)
    else:
        assert batch.shape == (1, 320, 416, 3)
    np.testing.assert_allclose(batch[0], expected, atol=1e-6, rtol=0)
    assert transform == Transform((480, 640), (320, 416), (320 / 480, 416 / 640), (0, 0))


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_photos_preprocess(path):
    image = load_image(path)
    batch, _ = preprocess([image], (640, 640), mean=MEAN, std=STD)
    np.testing.assert_allclose(batch[0], _reference(image, (640, 640), MEAN, STD).transpose(2, 0, 1), atol=1e-6)


def test_batch_of_different_sizes_and_views():
    images = [_random_image(480, 640), _random_image(300, 451, seed=1)[:, ::-1], _random_image(320, 320, seed=2)]
    batch, transforms = preprocess(images, (320, 320))
    assert batch.shape == (3, 3, 320, 320)
    assert [t.original_size for t in transforms] == [(480, 640), (300, 451), (320, 320)]
    for image, plane in zip(images, batch):
        np.testing.assert_allclose(plane, _reference(image, (320, 320)).transpose(2, 0, 1), atol=1e-6)


def test_one_array_is_a_batch_of_one():
    image = _random_image(48, 64)
    batch, transforms = preprocess(image, (32, 32))
    assert batch.shape == (1, 3, 32, 32) and len(transforms) == 1


def test_out_receives_the_batch():
    images = [_random_image(48, 64), _random_image(30, 20, seed=1)]
    expected, _ = preprocess(images, (32, 32), mean=MEAN, std=STD)
    out = np.full((2, 3, 32, 32), np.nan, np.float32)
    batch, _ = preprocess(images, (32, 32), mean=MEAN, std=STD, out=out)
    assert batch is out
    np.testing.assert_array_equal(out, expected)
    nhwc = np.empty((3, 32, 32, 3), np.float32)
    batch, _ = preprocess(images, (32, 32), layout="NHWC", out=nhwc[:2])  # the first rows of a bigger buffer
    np.testing.assert_array_equal(nhwc[:2], preprocess(images, (32, 32), layout="NHWC")[0])
    for bad in (np.empty((2, 32, 32, 3), np.float32), np.empty((2, 3, 32, 32), np.float64),
                np.empty((2, 3, 32, 64), np.float32)[..., ::2]):
        with pytest.raises(ConfigError, match="out must be"):
            preprocess(images, (32, 32), out=bad)


def _official_letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The public DEIMv2 onnx_inf.py letterbox (square input), with OpenCV's resize instead of PIL's."""
    h, w = image.shape[:2]
    ratio = min(size / w, size / h)
    new_w, new_h = int(w * ratio), int(h * ratio)
    canvas = np.zeros((size, size, 3), np.uint8)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    canvas[top:top + new_h, left:left + new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return canvas, (top, left)


@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (300, 451), (517, 333), (320, 320)])
def test_letterbox_matches_official_layout(shape):
    image = _random_image(*shape, seed=4)
    canvas, (top, left) = _official_letterbox(image, 320)
    batch, (transform,) = preprocess([image], (320, 320), resize="letterbox", layout="NHWC")
    np.testing.assert_allclose(batch[0], canvas / 255.0, atol=1e-6)
    assert transform.pad == (top, left)


def test_letterbox_geometry_and_pad_value():
    image = np.full((480, 640, 3), 255, np.uint8)
    batch, (t,) = preprocess([image], (320, 320), resize="letterbox", pad_value=114, mean=MEAN, std=STD)
    assert t == Transform((480, 640), (320, 320), (0.5, 0.5), (40, 0))
    pad = (114 / 255 - np.array(MEAN)) / np.array(STD)
    white = (1 - np.array(MEAN)) / np.array(STD)
    for c in range(3):
        np.testing.assert_allclose(batch[0, c, :40], pad[c], atol=1e-6)
        np.testing.assert_allclose(batch[0, c, 280:], pad[c], atol=1e-6)
        np.testing.assert_allclose(batch[0, c, 40:280], white[c], atol=1e-6)
    rgb_pad, _ = preprocess([image], (320, 320), resize="letterbox", pad_value=(10, 20, 30), layout="NHWC")
    np.testing.assert_allclose(rgb_pad[0, 0, 0], np.array([10, 20, 30]) / 255, atol=1e-7)


def test_letterbox_fills_the_limiting_side_exactly():
    # int(77 * (320 / 77)) is 319 in floating point; the image must still span all 320 columns
    _, (t,) = preprocess([_random_image(50, 77)], (320, 320), resize="letterbox")
    assert t.pad[1] == 0 and t.scale[1] == 320 / 77
    _, (t,) = preprocess([_random_image(1, 1000)], (320, 320), resize="letterbox")  # height rounds to 0
    assert t.scale[0] == 1.0


# ---------------------------------------------------------------- Transform

def _box_on_image(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    x1, y1, x2, y2 = box
    image[y1:y2, x1:x2] = 255
    return image


def _found_box(plane: np.ndarray) -> np.ndarray:
    """x1,y1,x2,y2 (pixel edges) of the pixels at least half bright, normalized to the plane."""
    ys, xs = np.nonzero(plane >= 0.5)
    h, w = plane.shape
    return np.array([[xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h]], np.float32)


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
@pytest.mark.parametrize("shape,box", [((480, 640), (100, 60, 300, 200)), ((300, 451), (37, 81, 400, 299)),
                                       ((640, 480), (0, 0, 123, 517)), ((200, 200), (50, 50, 150, 150))])
def test_box_round_trip_within_one_pixel(resize, shape, box):
    image = _box_on_image(*shape, box)
    batch, (t,) = preprocess([image], (320, 320), resize=resize)
    back = t.to_original(_found_box(batch[0, 0]))
    assert back.dtype == np.float32 and back.shape == (1, 4)
    np.testing.assert_allclose(back[0], box, atol=1.0)


@pytest.mark.parametrize("resize", ["stretch", "letterbox"])
def test_to_input_inverts_to_original(resize):
    _, (t,) = preprocess([_random_image(300, 451)], (320, 416), resize=resize)
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 1, (50, 2, 2)) * np.array([451, 300])
    boxes = np.concatenate([xy.min(1), xy.max(1)], axis=1).astype(np.float32)
    np.testing.assert_allclose(t.to_original(t.to_input(boxes)), boxes, atol=1e-3)


def test_to_original_clips_to_the_image():
    t = Transform((480, 640), (320, 320), (0.5, 0.5), (40, 0))  # letterboxed 640x480
    boxes = np.array([[-0.1, 0.0, 1.2, 0.1], [0.25, 0.5, 0.5, 0.75]], np.float32)
    np.testing.assert_allclose(t.to_original(boxes), [[0, 0, 640, 0], [160, 240, 320, 400]])
    assert t.to_original(np.zeros((0, 4), np.float32)).shape == (0, 4)


# ---------------------------------------------------------------- preprocess: bad arguments

@pytest.mark.parametrize("kwargs,match", [({"resize": "crop"}, "resize"), ({"layout": "CHW"}, "layout"),
                                          ({"mean": MEAN}, "mean and std"), ({"input_size": (0, 320)}, "positive"),
                                          ({"input_size": 320}, "height, width")])
def test_bad_options(kwargs, match):
    kwargs = {"input_size": (32, 32), **kwargs}
    with pytest.raises(ConfigError, match=match):
        preprocess([_random_image(8, 8)], **kwargs)


@pytest.mark.parametrize("image", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8),
                                   np.zeros((8, 8, 3), np.float32), np.zeros((0, 8, 3), np.uint8), "a.jpg"])
def test_bad_images(image):
    with pytest.raises(ImageError, match="image 0"):
        preprocess([image], (32, 32))


def test_no_images():
    with pytest.raises(ImageError, match="no images"):
        preprocess([], (32, 32))
