"""Bad input to `predict` and the top-level command line: outputs that cannot be written are refused before any
work, bad options are one line, an unreadable input is skipped and listed, and Ctrl-C keeps what was done."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DATA

from deim_edge import Detector
from deim_edge.__main__ import main
from deim_edge.errors import OutputPathError
from deim_edge.predict import predict
from deim_edge.training.data import layouts, tiles

MODEL = Path(__file__).parents[1] / "deim_edge" / "assets" / "deimv2-atto-synthetic.pth"
PHOTOS = sorted((DATA / "images").glob("*.jpg"))


@pytest.fixture(scope="module")
def detector() -> Detector:
    return Detector(MODEL)


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder with the three test photos."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in PHOTOS:
        shutil.copy(photo, folder)
    return folder


def write_video(path: Path) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 240))
    for photo in PHOTOS:
        writer.write(cv2.resize(cv2.imread(str(photo)), (320, 240)))
    writer.release()
    return path


def write_huge_png(path: Path) -> Path:
    """A small PNG whose header claims 60000 x 60000 pixels."""
    data = bytearray(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", 60000, 60000)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))  # the CRC of the IHDR type and data
    path.write_bytes(data)
    return path


def one_error_line(err: str) -> str:
    """The last stderr line, after checking it is the only error line and there is no traceback."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err and [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


def bad_outputs(tmp_path: Path) -> dict[str, list[str]]:
    file = tmp_path / "file.txt"
    file.write_text("x")
    return {"save is a file": ["--save", str(file)], "save under a file": ["--save", str(file / "out")],
            "save in /proc": ["--save", "/proc/deim-edge-out"], "json is a folder": ["--json", str(tmp_path)],
            "json under a file": ["--json", str(file / "d.json")], "json in /proc": ["--json", "/proc/d.json"]}


def test_outputs_that_cannot_be_written_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Detector, "__init__", no_model)
    for case, option in bad_outputs(tmp_path).items():
        assert main(["predict", str(MODEL), str(PHOTOS[0]), *option]) == 2, case
        assert "output" in one_error_line(capsys.readouterr().err), case


def test_the_predict_function_refuses_them_before_detecting(tmp_path):
    def no_detection(*args, **kwargs):
        raise AssertionError("detection ran")

    for flag, path in bad_outputs(tmp_path).values():
        with pytest.raises(OutputPathError):
            predict(no_detection, [str(PHOTOS[0])], **{"save" if flag == "--save" else "json_path": path})
    assert list(tmp_path.iterdir()) == [tmp_path / "file.txt"]


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_max_det_must_be_positive(value, capsys):
    with pytest.raises(SystemExit) as raised:
        main(["predict", str(MODEL), str(PHOTOS[0]), "--max-det", value])
    err = capsys.readouterr().err
    assert raised.value.code == 2 and "Traceback" not in err
    assert "--max-det: expected a whole number of at least 1" in err


@pytest.mark.parametrize("option", [["--size", "0"], ["--size", "-64"], ["--overlap", "1"], ["--overlap", "-0.1"],
                                    ["--min-visible", "0"], ["--min-visible", "1.5"]])
def test_tile_options_out_of_range_are_one_line(option, tmp_path, capsys):
    assert main(["tile", str(tmp_path), "--out", str(tmp_path / "tiles"), *option]) == 2
    assert option[0] in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "tiles").exists()


def test_tile_out_that_cannot_be_written_is_one_line(tmp_path, capsys):
    (tmp_path / "tiles").write_text("x")
    assert main(["tile", str(tmp_path), "--out", str(tmp_path / "tiles")]) == 2
    assert "is a file" in one_error_line(capsys.readouterr().err)


def test_tile_interrupted_says_what_is_left(tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(layouts, "read_dataset", lambda path: ("yolo", {}))
    monkeypatch.setattr(tiles, "tile_dataset", interrupted)
    assert main(["tile", str(tmp_path), "--out", str(tmp_path / "tiles")]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("interrupted; the tiles cut so far are in ")


def test_unreadable_inputs_are_skipped_and_listed(detector, photos, tmp_path):
    (photos / "broken.jpg").write_text("not an image")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0" * 5000)
    video = write_video(tmp_path / "clip.avi")
    out = tmp_path / "out"
    records, failed = predict(detector, [str(photos), str(junk), str(video)], save=out)
    good = [str(photos / p.name) for p in PHOTOS] + [str(video)]
    assert sorted(records) == sorted(good) and len(records[str(video)]) == len(PHOTOS)
    assert set(failed) == {str(photos / "broken.jpg"), str(junk)}
    assert json.loads((out / "detections.json").read_text()) == records
    assert json.loads((out / "detections.errors.json").read_text()) == {"failed": failed, "unfinished": []}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for p in PHOTOS] + ["clip.mp4", "detections.json", "detections.errors.json"])
    predict(detector, [str(PHOTOS[0])], save=out)  # a complete run: no stale list of failures
    assert not (out / "detections.errors.json").exists()


def test_the_command_exits_2_naming_the_failures(photos, tmp_path, capsys):
    (photos / "broken.jpg").write_text("not an image")
    out = tmp_path / "out"
    assert main(["predict", str(MODEL), str(photos), "--save", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "1 of 4 input(s)" in line and "broken.jpg" in line and str(out / "detections.errors.json") in line
    assert len(json.loads((out / "detections.json").read_text())) == len(PHOTOS)


def test_an_image_too_large_to_decode_is_one_failed_input(detector, photos, tmp_path):
    huge = write_huge_png(photos / "huge.png")
    records, failed = predict(detector, [str(photos)], json_path=tmp_path / "d.json")
    assert len(records) == len(PHOTOS) and list(failed) == [str(huge)]
    assert json.loads((tmp_path / "d.errors.json").read_text())["failed"] == failed


def test_ctrl_c_mid_video_keeps_the_inputs_done(photos, tmp_path, capsys, monkeypatch):
    """Interrupted on the video's second frame: the photos' detections and copies stay, no half video."""
    video = write_video(tmp_path / "clip.avi")
    run, calls = Detector.__call__, []

    def interrupt_on_fifth(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == len(PHOTOS) + 2:
            raise KeyboardInterrupt
        return run(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "__call__", interrupt_on_fifth)
    out = tmp_path / "out"
    assert main(["predict", str(MODEL), str(photos), str(video), str(PHOTOS[0]), "--save", str(out)]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == (
        f"interrupted; the detections of the 3 input(s) done are in {out / 'detections.json'}, the 2 unfinished "
        f"listed in {out / 'detections.errors.json'}")
    assert sorted(json.loads((out / "detections.json").read_text())) == [str(photos / p.name) for p in PHOTOS]
    assert json.loads((out / "detections.errors.json").read_text()) == {"failed": {},
                                                                        "unfinished": [str(video), str(PHOTOS[0])]}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for p in PHOTOS] + ["detections.json", "detections.errors.json"])


def test_ctrl_c_without_outputs_is_one_line(capsys, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Detector, "__call__", interrupted)
    assert main(["predict", str(MODEL), str(PHOTOS[0])]) == 130
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip().splitlines()[-1] == (
        "interrupted; files finished before it are kept, none half-written")
