"""The examples, run as users run them: detect_stream.py on a video (every frame annotated, one JSON line per
frame), its MJPEG stream opened in headless Chromium, a long synthetic stream (flat memory, always the newest
frame), tracking with a line and a zone (ids in the frames and the JSON lines, counts on the page and in
/stats), sources that fail to open or drop mid-stream, bad options, Ctrl-C; and the image, video and benchmark
scripts."""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DATA

from deim_edge import Detector

EXAMPLES = Path(__file__).parents[1] / "examples"
STREAM = EXAMPLES / "jetson" / "detect_stream.py"
PHOTOS = sorted((DATA / "images").glob("*.jpg"))
SIZE = (320, 240)  # test video frames, w x h
HUD_ROWS = 48  # detect_stream's FPS lines at the top of each frame
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
SHAPE_NAMES = ["circle", "square", "triangle", "ring"]  # what the bundled checkpoint learned
SCREENSHOT_COPY = os.environ.get("DEIM_EDGE_SCREENSHOT_COPY")  # also save the tracking page's screenshot here


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """deimv2-atto with random weights at its smallest input (160): the cheapest real artifact."""
    from deim_edge.export import export

    with pytest.warns(Warning, match="RANDOM weights"):
        return export(None, "onnx", variant="deimv2-atto", imgsz=160,
                      out=tmp_path_factory.mktemp("model") / "atto.onnx", verify=False)


@pytest.fixture(scope="module")
def shapes_video(tmp_path_factory) -> Path:
    """10 s of detect_stream's synthetic source (shapes gliding and bouncing; 480x360, 15 fps) as an MJPG .avi."""
    spec = importlib.util.spec_from_file_location("jetson_sources", EXAMPLES / "jetson" / "sources.py")
    sources = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(sources)
    capture = sources.SyntheticCapture(sources.parse_source("synthetic:480x360@15"))
    path = tmp_path_factory.mktemp("shapes") / "shapes.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (480, 360))
    for _ in range(150):
        writer.write(capture.read()[0])
    writer.release()
    return path


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """24 frames of the test photos, each shifted, so every frame differs (MJPG .avi, 10 fps)."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    photos = [cv2.resize(cv2.imread(str(p)), SIZE) for p in PHOTOS]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, SIZE)
    for i in range(24):
        writer.write(np.roll(photos[i % len(photos)], 7 * i, axis=1))
    writer.release()
    return path


def read_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def stream_command(model: Path, *args) -> list[str]:
    return [sys.executable, str(STREAM), str(model), "--threads", "1", "--no-show", "--log-every", "0",
            *map(str, args)]


class App:
    """detect_stream.py in a subprocess, its stderr collected line by line."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=ENV)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := re.search(pattern, line):
                    return match
            if self.proc.poll() is not None:
                self._reader.join(2)
                pytest.fail(f"detect_stream exited ({self.proc.returncode}) before {pattern!r}:\n{self.stderr}")
            time.sleep(0.05)
        pytest.fail(f"no {pattern!r} within {timeout} s:\n{self.stderr}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------- 1. a video

def test_video_gives_every_frame_annotated_and_one_json_line_each(model, video, tmp_path):
    out, lines = tmp_path / "annotated.avi", tmp_path / "detections.jsonl"
    run = subprocess.run(stream_command(model, "--source", video, "--save", out, "--json", lines,
                                        "--conf", "0.05", "--max-det", "8"),
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    inputs, outputs = read_frames(video), read_frames(out)
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(inputs) == len(outputs) == len(records) == 24
    assert [r["frame"] for r in records] == [r["capture"] for r in records] == list(range(24))

    detector = Detector(model, conf=0.05, max_det=8, threads=1)
    for i, (frame, got, record) in enumerate(zip(inputs, outputs, records)):
        # every input frame, in order: output i is closest to input i
        assert int(np.argmin([mean_abs(got, x) for x in inputs])) == i
        # the record holds this frame's detections
        expected = detector(frame)
        assert record["image_size"] == [SIZE[1], SIZE[0]]
        assert len(record["detections"]) == len(expected) == 8
        np.testing.assert_allclose([d["box"] for d in record["detections"]], expected.xyxy, atol=0.05)
        np.testing.assert_allclose([d["score"] for d in record["detections"]], expected.scores, atol=1e-4)
        assert [d["label"] for d in record["detections"]] == expected.labels.tolist()
        # and the frame is annotated with them: where drawing changes pixels, the output has the drawing
        drawn = expected.draw(frame)
        boxes = np.abs(drawn.astype(np.int16) - frame.astype(np.int16)).max(-1) > 80
        boxes[:HUD_ROWS] = False
        assert boxes.sum() > 100
        assert mean_abs(got[boxes], drawn[boxes]) < 0.5 * mean_abs(got[boxes], frame[boxes])
        # with the FPS line on top
        assert mean_abs(got[:HUD_ROWS], frame[:HUD_ROWS]) > 3


# ---------------------------------------------------------------------------------------------- 2. a browser

def chromium(url: str, profile: Path, *options: str, size: tuple[int, int] = (480, 360)
             ) -> subprocess.CompletedProcess:
    """Headless Chromium on `url` with `options` (what to write), the page's window `size` (w, h)."""
    return subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
                           f"--window-size={size[0]},{size[1]}", *options, url],
                          capture_output=True, text=True, timeout=120)


def screenshot(url: str, path: Path, profile: Path) -> np.ndarray:
    """A headless Chromium screenshot of `url` (480x360) as a BGR array."""
    run = chromium(url, profile, "--timeout=5000", f"--screenshot={path}")
    image = cv2.imread(str(path))
    assert image is not None, f"chromium wrote no screenshot ({run.returncode}):\n{run.stderr[-2000:]}"
    return image


@pytest.mark.skipif(CHROMIUM is None, reason="the browser test needs Chromium, which is not installed "
                                              "(Debian/Ubuntu: apt-get install -y chromium)")
def test_mjpeg_stream_plays_in_headless_chromium_and_stops_cleanly(model, video, tmp_path):
    app = App(stream_command(model, "--source", video, "--loop", "--serve", 0, "--host", "127.0.0.1",
                             "--conf", "0.05", "--max-det", "8"))
    stream = None
    try:
        url = app.wait_for(r"MJPEG stream: (http://\S+)").group(1)
        app.wait_for(r"opened")
        crops = []
        for i in range(2):
            for _ in range(3):  # a frame may not have arrived yet on a busy machine, or not a new one
                shot = screenshot(url, tmp_path / f"shot{i}.png", tmp_path / "profile")
                crop = shot[20:220, 100:380]  # inside the 320x240 frame, centred at the top of the page
                if crop.std() > 20 and (not crops or mean_abs(crops[0], crop) > 2):
                    break
                time.sleep(1.0)
            crops.append(crop)
            # a photo with boxes, not the page's plain background
            assert crop.std() > 20, f"screenshot {i} shows no frame (std {crop.std():.1f})"
            time.sleep(0.5)
        assert mean_abs(crops[0], crops[1]) > 2, "three screenshots show the same frame: the stream does not move"
        # a viewer still watching when the app is stopped
        stream = urllib.request.urlopen(url + "stream.mjpg", timeout=10)
        assert stream.read(64).startswith(b"--frame")
        rc = app.stop(signal.SIGTERM)
    finally:
        app.kill()
    assert rc == 0, app.stderr
    assert "SIGTERM: stopping" in app.stderr and "Traceback" not in app.stderr
    stream.read()  # the open stream ends (returns at EOF instead of hanging)
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)  # the port is closed


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def wait_for_counts(url: str, app: App, timeout: float = 90.0) -> dict:
    """/stats's counts once the line has counted a crossing and the zone a visit."""
    deadline, counts = time.monotonic() + timeout, None
    while time.monotonic() < deadline and app.proc.poll() is None:
        counts = get_json(url + "stats").get("counts")
        if counts and sum(counts["lines"]["door"][k] for k in ("in", "out")) and counts["zones"]["dock"]["visits"]:
            return counts
        time.sleep(0.5)
    pytest.fail(f"no crossing or no visit counted within {timeout} s (last counts: {counts}):\n{app.stderr}")


@pytest.mark.skipif(CHROMIUM is None, reason="the browser test needs Chromium, which is not installed "
                                              "(Debian/Ubuntu: apt-get install -y chromium)")
def test_page_shows_track_ids_and_counts_while_tracking(trained_onnx, shapes_video, tmp_path):
    lines = tmp_path / "tracked.jsonl"
    app = App(stream_command(trained_onnx, "--source", shapes_video, "--loop", "--serve", 0, "--host", "127.0.0.1",
                             "--json", lines, "--track", "--line", "door=240,350,240,40",
                             "--zone", "dock=300,200,470,200,470,350,300,350"))
    try:
        url = app.wait_for(r"MJPEG stream: (http://\S+)").group(1)
        counts = wait_for_counts(url, app)
        # virtual time: the page's scripts run (the stats fetched, the stream's first frames drawn) before the
        # page's DOM and a screenshot are taken
        page = chromium(url, tmp_path / "profile", "--virtual-time-budget=3000", "--timeout=10000", "--dump-dom",
                        f"--screenshot={tmp_path / 'tracking.png'}", size=(760, 400))
        rc = app.stop(signal.SIGTERM)
    finally:
        app.kill()
    assert rc == 0 and "Traceback" not in app.stderr, app.stderr
    shot, dom = cv2.imread(str(tmp_path / "tracking.png")), page.stdout
    assert shot is not None, f"chromium wrote no screenshot ({page.returncode}):\n{page.stderr[-2000:]}"
    if SCREENSHOT_COPY:
        Path(SCREENSHOT_COPY).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp_path / "tracking.png", SCREENSHOT_COPY)
    # /stats: per line in/out and per zone now/visits, each per class
    assert set(counts["lines"]["door"]) == {"in", "out", "in_per_class", "out_per_class"}
    assert set(counts["zones"]["dock"]) == {"now", "now_per_class", "visits", "visits_per_class"}
    # the page: a panel with a table per line and zone, filled in by its script
    panel = re.search(r'<aside id="counts">(.*?)</aside>', dom, re.DOTALL)
    assert panel, f"no counts panel shown in the page:\n{dom[-3000:]}"
    cells = re.findall(r"<t[hd]>([^<]*)</t[hd]>", panel.group(1))
    assert cells[:3] == ["door", "in", "out"] and "dock" in cells and "visits" in cells, cells
    assert any(name in cells for name in SHAPE_NAMES), cells
    # the screenshot: the frame (not the page's background) with the panel's text beside it
    background = np.all(np.abs(shot.astype(np.int16) - 17) <= 2, axis=-1)  # the page's #111
    columns = np.flatnonzero(~background[:360].all(0))
    assert columns.size, "the screenshot shows only the page's background"
    left = int(columns[0])
    frame, beside = shot[10:350, left + 10:left + 470], shot[:360, left + 490:]
    assert frame.std() > 20, f"no frame in the screenshot (std {frame.std():.1f})"
    assert (beside.max(-1) > 150).sum() > 200, "no counts beside the frame in the screenshot"
    # and the frames show ids (#id drawn on each tracked box): the JSON lines of the same frames carry them
    records = [json.loads(line) for line in lines.read_text().splitlines()]
    tracked = sum(any(d["track"] >= 0 for d in r["detections"]) for r in records)
    assert tracked > 0.5 * len(records), f"{tracked} of {len(records)} frames with a tracked object"
    assert records[-1]["counts"]["lines"]["door"]["in"] + records[-1]["counts"]["lines"]["door"]["out"] > 0


# ---------------------------------------------------------------------------------------------- 3. a long stream

def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def long_stream(model: Path, jsonl: Path, *options, frames: int = 2000, warmup: int = 300,
                source_fps: int = 300) -> list[dict]:
    """Run detect_stream.py for `frames` frames of a fast synthetic source with a viewer on the MJPEG stream all
    along; check it always took the newest frame and its resident memory stayed flat; its JSON records."""
    start = time.monotonic()
    app = App(stream_command(model, "--source", f"synthetic:320x240@{source_fps}", "--max-frames", frames,
                             "--json", jsonl, "--serve", 0, "--host", "127.0.0.1", "--max-det", "10", *options))
    received = []

    def watch(url: str) -> None:  # a browser-like viewer for the whole run
        with urllib.request.urlopen(url + "stream.mjpg", timeout=30) as stream:
            while chunk := stream.read(65536):
                received.append(len(chunk))

    try:
        url = app.wait_for(r"MJPEG stream: (http://\S+)").group(1)
        threading.Thread(target=watch, args=(url,), daemon=True).start()
        samples = []  # (frames written so far, RSS in MB)
        while app.proc.poll() is None:
            rss = rss_mb(app.proc.pid)
            done = jsonl.read_bytes().count(b"\n") if jsonl.exists() else 0
            if rss is not None:
                samples.append((done, rss))
            time.sleep(0.25)
        rc = app.stop()
    finally:
        app.kill()
    assert rc == 0, app.stderr
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == frames
    captures = [r["capture"] for r in records]
    lags = [r["lag"] for r in records]
    assert all(b > a for a, b in zip(captures, captures[1:]))
    assert max(lags) <= 1, f"lagged {max(lags)} frames behind the newest capture"
    rate = (len(records) - 1) / (records[-1]["time"] - records[0]["time"])  # frames processed per second
    if rate < 0.8 * source_fps:  # the source outpaced inference: the frames in between were dropped, not queued
        assert captures[-1] > 1.1 * frames, f"{captures[-1] + 1} captured at {source_fps} fps, {rate:.0f} processed"

    after = [rss for done, rss in samples if done >= warmup]
    assert len(after) >= 10, f"too few memory samples after warm-up: {samples}"
    growth = max(after) - after[0]
    print(f"\n{frames} frames ({captures[-1] + 1} captured) in {time.monotonic() - start:.1f} s; RSS "
          f"{after[0]:.1f} MB after {warmup} frames, max {max(after):.1f} MB (+{growth:.1f}); lag <= {max(lags)}; "
          f"{rate:.0f} fps processed; viewer got {sum(received) / 1e6:.1f} MB of MJPEG")
    assert growth < 20, f"resident memory grew {growth:.1f} MB after warm-up"
    assert sum(received) > 1e6, "the viewer received no stream"
    return records


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads resident memory from /proc")
def test_long_tracked_stream_counts_with_flat_memory(trained_onnx, tmp_path):
    """2,000 frames tracked and counted: flat memory and always the newest frame (long_stream), and the ids
    and counts make sense (the untracked stream runs the same loop less the analytics)."""
    records = long_stream(trained_onnx, tmp_path / "tracked.jsonl", "--track", "--line", "160,230,160,40",
                          "--zone", "dock=170,120,310,120,310,230,170,230")
    tracks = [[d["track"] for d in r["detections"]] for r in records]
    ids = {t for frame in tracks for t in frame if t >= 0}
    followed = sum(any(t >= 0 for t in frame) for frame in tracks)
    print(f"{len(ids)} track ids; {followed} of {len(records)} frames with a tracked object; "
          f"final counts {records[-1]['counts']}")
    assert followed > 0.8 * len(records), "the moving shapes were not tracked"
    assert len(ids) < 0.1 * len(records), f"{len(ids)} ids in {len(records)} frames: tracks do not hold"
    line, zone = records[-1]["counts"]["lines"]["line1"], records[-1]["counts"]["zones"]["dock"]
    assert line["in"] + line["out"] > 0 and zone["visits"] > 0, records[-1]["counts"]
    assert sum(line["in_per_class"].values()) == line["in"] and set(zone["visits_per_class"]) <= set(SHAPE_NAMES)


# ---------------------------------------------------------------------------------------------- 4. failures

def test_source_that_cannot_be_opened_is_retried_then_given_up(model):
    port = free_port()  # nothing listens there
    run = subprocess.run(stream_command(model, "--source", f"rtsp://admin:secret@127.0.0.1:{port}/live", "--retries", 2,
                                        "--retry-delay", 0.1, "--timeout", 2),
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert run.returncode == 1, run.stderr
    assert f"cannot open rtsp://***@127.0.0.1:{port}/live" in run.stderr and "secret" not in run.stderr
    assert "retrying in 0.1 s (attempt 2 of 3)" in run.stderr and "retrying in 0.2 s (attempt 3 of 3)" in run.stderr
    assert "giving up after 3 attempts" in run.stderr
    assert "Traceback" not in run.stderr


def test_missing_file_is_a_clear_error(model, tmp_path):
    run = subprocess.run(stream_command(model, "--source", tmp_path / "nothing.mp4"), capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert run.returncode == 2
    assert "nothing.mp4' not found" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("options, message", [
    (["--line", "0,0,10,10"], "--line and --zone count tracked objects: add --track"),
    (["--track", "--zone", "0,0,10,x,5,5"], "argument --zone: '0,0,10,x,5,5': write a zone as [NAME=]X1,Y1,X2,Y2,X3"),
    (["--track", "--zone", "dock=0,0,10,10"], "argument --zone: 'dock=0,0,10,10': write a zone as"),
    (["--track", "--line", "0,0,10"], "argument --line: '0,0,10': write a line as [NAME=]X1,Y1,X2,Y2"),
    (["--track", "--line", "5,5,5,5"], "a line needs two different points"),
])
def test_bad_line_or_zone_is_a_usage_error(model, options, message):
    run = subprocess.run(stream_command(model, "--source", "synthetic", *options), capture_output=True, text=True,
                         timeout=120, env=ENV)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr


class DroppingCamera:
    """An MJPEG camera over HTTP: its first connection drops after `first` frames, the second is refused (503),
    later ones stream until the client leaves."""

    def __init__(self, first: int = 20) -> None:
        self.connections = 0
        jpegs = []
        for i in range(8):
            image = np.full((120, 160, 3), 40 * i % 256, np.uint8)
            cv2.circle(image, (20 + 15 * i, 60), 15, (255, 255, 255), -1)
            jpegs.append(cv2.imencode(".jpg", image)[1].tobytes())
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                camera.connections += 1
                if camera.connections == 2:
                    self.send_error(503, "camera rebooting")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                count = first if camera.connections == 1 else 10**9
                try:
                    for i in range(count):
                        jpeg = jpegs[i % len(jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                         % (len(jpeg), jpeg))
                        time.sleep(0.02)
                except OSError:
                    pass  # the client left

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cam.mjpg"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_stream_that_drops_reconnects_and_goes_on(model, tmp_path):
    camera = DroppingCamera(first=20)
    lines = tmp_path / "frames.jsonl"
    try:
        run = subprocess.run(stream_command(model, "--source", camera.url, "--frames", "all", "--max-frames", 40,
                                            "--retry-delay", 0.1, "--timeout", 5, "--json", lines),
                             capture_output=True, text=True, timeout=180, env=ENV)
    finally:
        camera.close()
    assert run.returncode == 0, run.stderr
    log = run.stderr
    assert re.search(r"stream dropped after (19|20) frames; reconnecting in 0\.1 s", log), log
    assert f"cannot open {camera.url}" in log and "retrying in" in log
    assert "reconnected" in log and "Traceback" not in log
    assert camera.connections >= 3
    captures = [json.loads(line)["capture"] for line in lines.read_text().splitlines()]
    assert captures == list(range(40))  # every frame, numbered on across the reconnection


def test_ctrl_c_stops_cleanly(model):
    app = App(stream_command(model, "--source", "synthetic:160x120@30"))
    try:
        app.wait_for(r"synthetic .*: opened")
        time.sleep(1.0)
        rc = app.stop(signal.SIGINT)
    finally:
        app.kill()
    assert rc == 0, app.stderr
    assert "SIGINT: stopping" in app.stderr and re.search(r"stopped: \d+ frames", app.stderr)
    assert "Traceback" not in app.stderr


# ---------------------------------------------------------------------------------------------- small examples

def test_detect_image_prints_detections_and_saves_a_drawing(model, tmp_path):
    out = tmp_path / "drawn.jpg"
    run = subprocess.run([sys.executable, str(EXAMPLES / "detect_image.py"), str(model), str(PHOTOS[0]), "--json",
                          "--conf", "0.05", "--threads", "1", "--out", str(out)],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert run.returncode == 0, run.stderr
    detections = json.loads(run.stdout)
    expected = Detector(model, conf=0.05, threads=1)(str(PHOTOS[0]))
    assert len(detections) == len(expected) > 0
    assert cv2.imread(str(out)).shape == cv2.imread(str(PHOTOS[0])).shape


def test_detect_video_writes_every_frame(model, video, tmp_path):
    out, lines = tmp_path / "drawn.mp4", tmp_path / "frames.jsonl"
    run = subprocess.run([sys.executable, str(EXAMPLES / "detect_video.py"), str(model), str(video), "--out", str(out),
                          "--json", str(lines), "--threads", "1"], capture_output=True, text=True, timeout=120, env=ENV)
    assert run.returncode == 0, run.stderr
    assert len(read_frames(out)) == len(lines.read_text().splitlines()) == 24


def test_benchmark_reports_percentiles(model):
    run = subprocess.run([sys.executable, str(EXAMPLES / "benchmark.py"), str(model), "--runs", "10", "--warmup",
                          "2", "--threads", "1", "--image", str(PHOTOS[0])],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert run.returncode == 0, run.stderr
    for stage in ("preprocess", "inference", "postprocess", "total"):
        assert re.search(rf"^{stage}\s+[\d.]+\s+[\d.]+\s+[\d.]+$", run.stdout, re.MULTILINE), run.stdout


def test_systemd_unit_starts_a_valid_command(tmp_path):
    """The shipped unit's ExecStart, with its default environment, is a command line detect_stream.py accepts."""
    unit = (EXAMPLES / "jetson" / "deim-edge-stream.service").read_text()
    keys = dict(re.findall(r"^(\w+)=(.*)$", unit, re.MULTILINE))
    assert keys["KillSignal"] == "SIGTERM" and keys["Restart"] == "on-failure"
    assert keys["WantedBy"] == "multi-user.target"
    env = dict(re.findall(r'^Environment="?(\w+)=(.*?)"?$', unit, re.MULTILINE))
    command = re.sub(r"\$\{?(\w+)\}?", lambda m: env[m.group(1)], keys["ExecStart"]).split()
    assert command[1].endswith("examples/jetson/detect_stream.py")
    check = ("import sys; sys.path.insert(0, sys.argv[1]); import detect_stream; "
             "a = detect_stream.build_parser().parse_args(sys.argv[2:]); print(a.source, a.serve, a.show)")
    run = subprocess.run([sys.executable, "-c", check, str(EXAMPLES / "jetson"), *command[2:]],
                         capture_output=True, text=True, timeout=120, env=ENV)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["csi", "8080", "False"]
