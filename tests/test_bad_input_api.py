"""Bad input to the Detector API ends in a DeimEdgeError that says what to do, never in a traceback or a wrong
answer: options are checked when the Detector is made (ConfigError), images when it is called (ImageError)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from deim_edge import Detector
from deim_edge.errors import ConfigError, ImageError
from deim_edge.media import read_image
from deim_edge.preprocess import preprocess

# classes: circle, square, triangle, ring
MODEL = Path(__file__).parents[1] / "deim_edge" / "assets" / "deimv2-atto-synthetic.pth"
SHAPES = MODEL.parent / "samples" / "shapes-1.jpg"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def runtime():
    """The bundled model, opened once; each test makes its Detector over it."""
    return Detector(MODEL).runtime


@pytest.fixture(scope="module")
def det(runtime) -> Detector:
    return Detector(runtime)


# ---------------------------------------------------------------- what is passed as images

@pytest.mark.parametrize("source", [None, 5, 2.5, {}, iter([]), b"\xff\xd8\xff", bytearray(b"abc")],
                         ids=["None", "int", "float", "dict", "iterator", "bytes", "bytearray"])
def test_a_source_that_is_not_an_image_names_what_is_taken(det, source):
    with pytest.raises(ImageError, match="Detector takes an image path, a numpy array, or a list of them") as e:
        det(source)
    assert f"got {type(source).__name__}" in str(e.value)


def test_bytes_say_how_to_decode_them(det):
    with pytest.raises(ImageError, match=r"got bytes; decode encoded bytes first: cv2\.imdecode"):
        det(SHAPES.read_bytes())


@pytest.mark.parametrize("items", [[None], [np.zeros((8, 8, 3), np.uint8), None], [5], [b"abc"], [[1, 2, 3]]],
                         ids=["None", "array-None", "int", "bytes", "nested-list"])
def test_a_list_item_that_is_not_an_image(det, items):
    with pytest.raises(ImageError, match="expected an image path or a numpy array, got"):
        det(items)


@pytest.mark.parametrize("source", ["", [""]], ids=["path", "in-a-list"])
def test_an_empty_path(det, source):
    with pytest.raises(ImageError, match="the image path is empty; pass an image file's path or a numpy array"):
        det(source)


def test_a_batch_array_says_to_pass_a_list(det):
    with pytest.raises(ImageError, match="pass a batch as a list of images"):
        det(np.zeros((2, 8, 8, 3), np.uint8))


def test_lists_and_tuples_are_batches(det):
    image = cv2.imread(str(SHAPES))
    one = det(image)
    for batch in ([image, str(SHAPES)], (image, SHAPES)):
        both = det(batch)
        assert isinstance(both, list) and len(both) == 2
        for dets in both:
            np.testing.assert_allclose(dets.xyxy, one.xyxy, atol=1e-3)


# ---------------------------------------------------------------- float images

def _shapes_float() -> np.ndarray:
    return cv2.imread(str(SHAPES)).astype(np.float32) / 255


def _with_pixel(value: float) -> np.ndarray:
    image = _shapes_float()
    image[10, 10, 1] = value
    return image


@pytest.mark.parametrize("image", [np.full((8, 8, 3), -0.5, np.float32), _shapes_float() * 2 - 1,
                                   _with_pixel(NAN), _with_pixel(INF), _with_pixel(-INF),
                                   np.full((8, 8, 3), NAN), np.full((8, 8, 3), 200.0, np.float32)],
                         ids=["negative", "normalized", "one-NaN", "one-inf", "one-minus-inf", "all-NaN", "0-255"])
def test_float_images_must_be_finite_within_0_1(det, image):
    with pytest.raises(ImageError, match=r"a float image must hold finite values in \[0, 1\] .*divide 0-255 values "
                                         r"by 255, pass pixels before normalizing them, or pass uint8"):
        det(image)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_images_within_rounding_of_0_1_are_detected(det, dtype):
    reference = det(str(SHAPES))
    image = _shapes_float()
    image[0, 0] = (-0.002, 1.002, 0.5)  # rounding error of a conversion
    dets = det(image.astype(dtype))
    np.testing.assert_array_equal(dets.labels, reference.labels)
    np.testing.assert_allclose(dets.xyxy, reference.xyxy, atol=1.0)


# ---------------------------------------------------------------- image files

def _huge_png(path: Path) -> Path:
    """A small PNG whose header claims 60000 x 60000 pixels."""
    data = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", 60000, 60000)  # width, height
    data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))  # the CRC of the chunk's type and data
    path.write_bytes(data)
    return path


def _huge_jpeg(path: Path) -> Path:
    """A small JPEG whose frame header (SOF0) claims 60000 x 60000 pixels."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("write,name", [(_huge_png, "big.png"), (_huge_jpeg, "big.jpg")], ids=["png", "jpeg"])
def test_an_image_larger_than_opencv_decodes_names_its_size_and_the_limit(det, tmp_path, write, name):
    path = write(tmp_path / name)
    for read in (det, read_image):  # the Detector, and the reader predict uses
        with pytest.raises(ImageError, match=r"is 60000x60000 pixels, larger than OpenCV decodes \(.* pixels at "
                                             r"most\); downscale it, or raise the limit .*OPENCV_IO_MAX_IMAGE_PIXELS"
                           ) as e:
            read(path)
        assert str(path) in str(e.value)


def _photo_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return cv2.imencode(".png", noise)[1].tobytes()


@pytest.mark.parametrize("name,content", [
    ("notes.jpg", b"plain text, renamed\n"), ("empty.jpg", b""), ("half.png", _photo_png()[:2000]),
    ("half.jpg", SHAPES.read_bytes()[:SHAPES.stat().st_size // 2]),
    ("header-only.jpg", SHAPES.read_bytes()[:SHAPES.read_bytes().find(b"\xff\xda")])],
    ids=["text", "empty", "truncated-png", "truncated-jpeg", "jpeg-header-only"])
def test_files_opencv_cannot_read(det, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match="is not an image OpenCV can read") as e:
        det(path)
    assert str(path) in str(e.value)


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("conf", ["0.5", None, True, NAN, -0.1, 1.5, [0.5]])
def test_conf_must_be_a_number_within_0_1(runtime, conf):
    with pytest.raises(ConfigError, match=r"conf must be a number within \[0, 1\] \(the lowest score kept\), got"):
        Detector(runtime, conf=conf)


@pytest.mark.parametrize("conf", [0, 1, 0.5, np.float32(0.25)])
def test_conf_numbers(runtime, conf):
    assert Detector(runtime, conf=conf).conf == float(conf)


@pytest.mark.parametrize("max_det", [2.5, 10.0, "10", -5, 0, True])
def test_max_det_must_be_a_positive_whole_number(runtime, max_det):
    with pytest.raises(ConfigError, match=r"max_det must be a whole number of at least 1 \(the most detections per "
                                          r"image\), got .*; leave it out for the model's own"):
        Detector(runtime, max_det=max_det)


def test_max_det_left_out_is_the_models(runtime):
    assert Detector(runtime, max_det=None).max_det == runtime.metadata.max_det == 300


@pytest.mark.parametrize("max_det", [1, 5, np.int64(7)])
def test_max_det_caps_the_detections(runtime, max_det):
    dets = Detector(runtime, conf=0.0, max_det=max_det)(str(SHAPES))
    assert len(dets) == max_det


@pytest.mark.parametrize("classes,match", [
    ([None], "got None"), ([1.7], "got 1.7"), (1.7, "got 1.7"), ([True], "got True"), (True, "got True"),
    ([b"circle"], "got b'circle'")])
def test_classes_must_be_names_or_whole_numbers(runtime, classes, match):
    with pytest.raises(ConfigError, match=rf"classes takes class names or whole-number ids \(0\.\.3\), {match}"):
        Detector(runtime, classes=classes)


@pytest.mark.parametrize("classes,match", [
    ([-1], r"class id -1 is outside 0\.\.3"), ([4], r"class id 4 is outside 0\.\.3"),
    (["unicorn"], "unknown class 'unicorn'; this model knows: circle, square, triangle, ring"),
    ("circles", "unknown class 'circles'"), ([], "classes is empty, so nothing would be detected; leave it out")])
def test_classes_the_model_does_not_have(runtime, classes, match):
    with pytest.raises(ConfigError, match=match):
        Detector(runtime, classes=classes)


@pytest.mark.parametrize("classes,ids", [
    ("circle", [0]), (3, [3]), (np.int64(2), [2]), (["circle", 2], [0, 2]), (("ring",), [3]),
    (np.array([1, 2]), [1, 2]), ({"square"}, [1])])
def test_classes_one_or_many(runtime, classes, ids):
    np.testing.assert_array_equal(Detector(runtime, classes=classes).classes, ids)


def test_one_class_name_keeps_that_class(runtime):
    everything = Detector(runtime, conf=0.2)(str(SHAPES))
    circles = Detector(runtime, conf=0.2, classes="circle")(str(SHAPES))
    assert len(circles) == (everything.labels == 0).sum() > 0 and (circles.labels == 0).all()


@pytest.mark.parametrize("options,match", [
    ({"mean": "abc", "std": STD}, r"mean takes three finite numbers \(R, G, B\), got 'abc'"),
    ({"mean": [1, 2], "std": STD}, r"mean takes three finite numbers \(R, G, B\), got \[1, 2\]"),
    ({"mean": 5, "std": STD}, "mean takes three finite numbers"),
    ({"mean": [NAN, 0.5, 0.5], "std": STD}, "mean takes three finite numbers"),
    ({"mean": MEAN, "std": [INF, 1, 1]}, "std takes three finite numbers"),
    ({"mean": MEAN, "std": [0, 0, 0]}, "std divides the pixels, so it must be above 0"),
    ({"mean": MEAN, "std": [-0.2, 0.2, 0.2]}, "std divides the pixels, so it must be above 0"),
    ({"mean": (123.675, 116.28, 103.53), "std": (58.395, 57.12, 57.375)},
     r"mean applies to pixels scaled to \[0, 1\].*divide 0-255 values by 255"),
    ({"mean": MEAN}, "give both mean and std, or neither"), ({"std": STD}, "give both mean and std, or neither")],
    ids=["str", "two", "scalar", "NaN", "inf", "zero-std", "negative-std", "0-255", "mean-only", "std-only"])
def test_normalization_that_cannot_work(runtime, options, match):
    with pytest.raises(ConfigError, match=match):
        Detector(runtime, **options)


def test_normalization_as_arrays_or_lists(runtime):
    det = Detector(runtime, mean=np.array(MEAN), std=list(STD))
    assert det.metadata.mean == MEAN and det.metadata.std == STD


@pytest.mark.parametrize("std", [(0, 0, 0), (0.2, 0.2, NAN)])
def test_preprocess_checks_normalization_too(std):
    with pytest.raises(ConfigError, match="std"):
        preprocess([np.zeros((8, 8, 3), np.uint8)], (32, 32), mean=MEAN, std=std)


@pytest.mark.parametrize("resize", ["crop", "", 5])
def test_resize_must_be_a_known_mode(runtime, resize):
    with pytest.raises(ConfigError, match=r"resize must be one of \('stretch', 'letterbox'\), got"):
        Detector(runtime, resize=resize)


@pytest.mark.parametrize("options", [{"conf": "0.5"}, {"max_det": 0}, {"resize": "crop"}])
def test_options_are_checked_before_the_model_loads(tmp_path, options):
    with pytest.raises(ConfigError):
        Detector(tmp_path / "absent.onnx", **options)  # not ModelFileError: nothing was opened


@pytest.mark.parametrize("bad", [[1.7], [None], [True], 2.5])
def test_detections_filter_refuses_classes_that_are_not_labels(bad):
    from deim_edge.results import Detections

    dets = Detections(xyxy=np.zeros((2, 4), np.float32), scores=np.array([0.9, 0.8], np.float32),
                      labels=np.array([1, 2]), names=("a", "b", "c"), image_size=(10, 10))
    with pytest.raises(ConfigError, match="class names or whole-number labels"):
        dets.filter(classes=bad)
    assert len(dets.filter(classes=[1])) == 1
