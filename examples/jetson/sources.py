"""Frame sources for detect_stream.py: cameras (CSI, USB), network streams, video files, image folders and a
synthetic scene of moving shapes, read in a thread of their own that reconnects live sources when they drop.

A source spec is text: `csi`, `csi:1`, `usb`, `usb:1`, `/dev/video0`, `rtsp://...` (or http://, rtmp://, udp://),
`gst:<pipeline ending in appsink>`, a video file, an image folder or file, or `synthetic[:WxH][@FPS]`.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deim_edge.errors import ImageError
from deim_edge.media import Video, image_files, is_image, read_image
from deim_edge import synthetic

log = logging.getLogger("detect_stream")

URL_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
LIVE_KINDS = {"csi", "usb", "network", "gst", "synthetic"}


class SourceError(Exception):
    """A source that cannot be opened or read. fatal: retrying cannot help (a missing file, no GStreamer)."""

    def __init__(self, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True)
class Frame:
    """One captured image (BGR) with its capture number (counted across reconnects) and capture time."""

    seq: int
    image: np.ndarray
    time: float
    name: str = ""  # the file an image came from (image folders)


@dataclass
class SourceSpec:
    kind: str  # csi | usb | network | gst | file | folder | synthetic
    target: str  # sensor id, device, URL, pipeline, path, or WxH@FPS
    width: int | None = None  # requested capture size and rate (cameras, synthetic)
    height: int | None = None
    fps: float | None = None
    flip: int = 0  # CSI: nvvidconv flip-method
    gst_decode: bool = False  # network: decode with GStreamer (Jetson hardware decoder)
    rtsp_transport: str = "tcp"
    timeout_s: float = 5.0  # network: open and read timeout

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS

    def describe(self) -> str:
        """What the source is, for messages and the page title; a URL's password is left out."""
        return {"csi": f"CSI camera {self.target}", "usb": f"USB camera {self.target}",
                "network": re.sub(r"//[^/@]*@", "//***@", self.target),
                "gst": "GStreamer pipeline", "file": f"video {self.target}", "folder": f"images in {self.target}",
                "synthetic": f"synthetic {self.target}"}[self.kind]


def parse_source(text: str, **options) -> SourceSpec:
    """The spec a source argument names; options (width, height, fps, flip, gst_decode, ...) fill the rest."""
    options = {k: v for k, v in options.items() if v is not None}
    low = text.lower()
    if low == "csi" or low.startswith("csi:"):
        return SourceSpec("csi", text[4:] or "0", **options)
    if low == "usb" or low.startswith("usb:") or text.isdigit() or re.fullmatch(r"/dev/video\d+", text):
        device = text[4:] if low.startswith("usb:") else ("0" if low == "usb" else text)
        return SourceSpec("usb", device or "0", **options)
    if low.startswith("gst:"):
        return SourceSpec("gst", text[4:], **options)
    if low.startswith(URL_SCHEMES):
        return SourceSpec("network", text, **options)
    if low == "synthetic" or low.startswith("synthetic:"):
        return SourceSpec("synthetic", text[10:] or "640x480@30", **options)
    path = Path(text)
    if path.is_dir():
        return SourceSpec("folder", text, **options)
    if path.is_file():
        return SourceSpec("folder" if is_image(path) else "file", text, **options)
    raise SourceError(f"source {text!r} not found: give a camera (csi, csi:N, usb:N, /dev/videoN), a stream URL "
                      f"(rtsp://..., http://...), gst:<pipeline>, a video file, an image folder, or synthetic",
                      fatal=True)


# ---------------------------------------------------------------------------------------------- captures

class Capture:
    """One open source. read() -> a BGR image, or None at the end of the stream or when it dropped."""

    fps: float | None = None

    def read(self) -> tuple[np.ndarray, str] | None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class CvCapture(Capture):
    """deim_edge.media.Video (OpenCV) over a camera, a stream URL, a GStreamer pipeline or a video file."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.video = _open_video(spec)
        self.fps = self.video.fps

    def read(self) -> tuple[np.ndarray, str] | None:
        image = self.video.read()
        return None if image is None else (image, "")

    def close(self) -> None:
        self.video.close()


def _open_video(spec: SourceSpec) -> Video:
    try:
        if spec.kind in ("csi", "gst") or (spec.kind == "network" and spec.gst_decode):
            _require_gstreamer(spec)
            pipeline = {"csi": csi_pipeline, "gst": lambda s: s.target, "network": decode_pipeline}[spec.kind](spec)
            log.debug("GStreamer pipeline: %s", pipeline)
            return Video(pipeline, cv2.CAP_GSTREAMER)
        if spec.kind == "usb":
            video = Video(int(spec.target) if spec.target.isdigit() else spec.target, cv2.CAP_V4L2)
            cap = video.capture
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))  # full frame rate at HD on most webcams
            for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, spec.width), (cv2.CAP_PROP_FRAME_HEIGHT, spec.height),
                                (cv2.CAP_PROP_FPS, spec.fps)):
                if value:
                    cap.set(prop, value)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the driver keeps one frame, not a backlog
            return video
        if spec.kind == "network":
            if spec.target.lower().startswith(("rtsp://", "rtsps://")):
                os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = f"rtsp_transport;{spec.rtsp_transport}"
            ms = int(spec.timeout_s * 1000)
            return Video(spec.target, cv2.CAP_FFMPEG,
                         [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        return Video(spec.target)  # a video file
    except ImageError:  # its message would show a stream's password; describe() leaves it out
        raise SourceError(f"cannot open {spec.describe()}" + _open_hint(spec), fatal=spec.kind == "file") from None


def _open_hint(spec: SourceSpec) -> str:
    return {"csi": " (is nvargus-daemon running and the ribbon cable seated? try: gst-launch-1.0 nvarguscamerasrc "
                   "num-buffers=30 ! fakesink)",
            "usb": " (is it plugged in, and is the user in the 'video' group? list devices: v4l2-ctl --list-devices)",
            "network": " (is the address right and the camera reachable?)",
            "file": " (not a video OpenCV can decode)"}.get(spec.kind, "")


def _require_gstreamer(spec: SourceSpec) -> None:
    if "GStreamer:                   YES" not in cv2.getBuildInformation():
        raise SourceError(f"{spec.describe()} needs OpenCV built with GStreamer, and this one ({cv2.__file__}) is "
                          f"not; on JetPack use the system OpenCV (apt install python3-opencv) in a venv made with "
                          f"--system-site-packages, and pip uninstall opencv-python-headless", fatal=True)


def csi_pipeline(spec: SourceSpec) -> str:
    """nvarguscamerasrc -> NVMM NV12 at the sensor mode -> nvvidconv (scale, flip) -> BGR appsink that keeps only
    the newest buffer."""
    width, height, fps = spec.width or 1280, spec.height or 720, int(spec.fps or 30)
    return (f"nvarguscamerasrc sensor-id={spec.target} ! "
            f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1,format=NV12 ! "
            f"nvvidconv flip-method={spec.flip} ! video/x-raw,width={width},height={height},format=BGRx ! "
            f"videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


def decode_pipeline(spec: SourceSpec) -> str:
    """A stream URL decoded by GStreamer (on Jetson uridecodebin picks the nvv4l2decoder hardware decoder)."""
    return (f"uridecodebin uri={spec.target} ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! "
            f"video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false")


class FolderCapture(Capture):
    """The images of a folder (or one image file), in name order."""

    def __init__(self, spec: SourceSpec) -> None:
        try:
            self.files = image_files([spec.target])
        except ImageError as e:
            raise SourceError(str(e), fatal=True) from None
        self.next = 0

    def read(self) -> tuple[np.ndarray, str] | None:
        while self.next < len(self.files):
            path = self.files[self.next]
            self.next += 1
            image = read_image(path)
            if image is not None:
                return image, path.name
            log.warning("skipping %s: not an image OpenCV can read", path)
        return None


class SyntheticCapture(Capture):
    """Shapes of the synthetic training set (deim_edge.synthetic: circle, square, triangle, ring) gliding over a
    gradient and bouncing off the edges, `WxH@FPS` (FPS 0: as fast as it is read): checks a board without a camera,
    and gives the bundled synthetic checkpoint objects to detect and track. Frame n is the same on every run."""

    def __init__(self, spec: SourceSpec) -> None:
        match = re.fullmatch(r"(?:(\d+)x(\d+))?(?:@(\d+(?:\.\d+)?))?", spec.target)
        if match is None:
            raise SourceError(f"synthetic source {spec.target!r}: write it as WxH@FPS, e.g. synthetic:640x480@30",
                              fatal=True)
        w, h, fps = match.groups()
        self.width, self.height = int(w or 640), int(h or 480)
        side = min(self.width, self.height)
        if side < 32:
            raise SourceError(f"synthetic source {spec.target!r}: make the frames at least 32x32", fatal=True)
        self.fps = float(fps) if fps is not None else 30.0
        y, x = np.mgrid[0:self.height, 0:self.width]
        base = np.stack([x * 255 // max(1, self.width - 1), y * 255 // max(1, self.height - 1),
                         np.full_like(x, 96)], axis=-1)
        self.background = base.astype(np.uint8)
        rng = np.random.default_rng(0)
        backdrop = self.background.reshape(-1, 3).mean(0)
        self.sprites = [_sprite(rng, label, side, backdrop) for label in range(len(SPRITE_CLASSES))]
        angles = rng.uniform(0, 2 * np.pi, len(self.sprites))  # speeds: 0.2 to 0.4 of the shorter side per second
        self.velocity = np.stack([np.cos(angles), np.sin(angles)], 1) * rng.uniform(0.2, 0.4, (len(angles), 1)) * side
        self.start = rng.uniform(0, 1, (len(self.sprites), 2))  # where each starts, a fraction of its free range
        self.count = 0

    def read(self) -> tuple[np.ndarray, str] | None:
        image = self.background.copy()
        seconds = self.count / (self.fps or 30.0)
        for (pixels, mask), start, velocity in zip(self.sprites, self.start, self.velocity):
            h, w = mask.shape
            free = (self.width - w, self.height - h)
            x, y = (_bounce(s * f + v * seconds, f) for s, v, f in zip(start, velocity, free))
            cv2.copyTo(pixels, mask, image[y:y + h, x:x + w])  # in place, and far cheaper than numpy's mask indexing
        self.count += 1
        return image, ""


SPRITE_CLASSES = synthetic.SHAPES[:4]  # the shapes the bundled checkpoint knows


def _sprite(rng: np.random.Generator, label: int, side: int, backdrop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One shape of class `label` as deim_edge.synthetic draws it, a fifth to two fifths of `side` across, in a
    flat colour far from the `backdrop` colour: its pixels (BGR) and mask (uint8, 1 on the shape), cropped."""
    radius = rng.uniform(0.1, 0.2) * side
    canvas = int(2 * radius) + 5
    mask = synthetic.shape_mask(SPRITE_CLASSES[label], canvas, canvas, (canvas / 2, canvas / 2), radius,
                                rng.uniform(-0.35, 0.35))
    ys, xs = np.nonzero(mask)
    mask = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8)
    pixels = np.empty((*mask.shape, 3), np.uint8)
    colour = rng.integers(0, 256, 3)
    while np.abs(colour - backdrop).sum() < 150:  # as synthetic scenes pick a colour that stands out
        colour = rng.integers(0, 256, 3)
    pixels[:] = colour
    return pixels, mask


def _bounce(position: float, span: int) -> int:
    """`position` folded into 0..span, as an object bouncing between two walls travels."""
    if span <= 0:
        return 0
    folded = position % (2 * span)
    return int(folded if folded <= span else 2 * span - folded)


def open_capture(spec: SourceSpec) -> Capture:
    if spec.kind == "folder":
        return FolderCapture(spec)
    if spec.kind == "synthetic":
        return SyntheticCapture(spec)
    return CvCapture(spec)


# ---------------------------------------------------------------------------------------------- reader thread

class FrameReader:
    """Reads a source in its own thread.

    latest=True: only the newest frame is kept; get() returns it and older ones are dropped, so inference never
    works through a backlog (cameras, streams). latest=False: every frame, in order, through a small bounded
    queue (files, folders). Files are paced at their frame rate in latest mode, like a camera.
    Live sources that fail to open or drop are reopened after retry_delay_s (doubling up to 30 s), at most
    `retries` times in a row (None: forever); `loop` replays files and folders from the start.
    """

    def __init__(self, spec: SourceSpec, latest: bool, retries: int | None = None, retry_delay_s: float = 1.0,
                 loop: bool = False, opener: Callable[[SourceSpec], Capture] = open_capture) -> None:
        self.spec, self.latest, self.retries, self.retry_delay_s, self.loop = spec, latest, retries, retry_delay_s, loop
        self.opener = opener
        self.captured = 0  # frames read so far, across reconnects
        self.fps: float | None = None
        self.error: str | None = None  # why the reader gave up
        self.finished = threading.Event()  # the source ended, or the reader gave up
        self.opened = threading.Event()
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._newest: Frame | None = None
        self._queue: queue.Queue[Frame] = queue.Queue(maxsize=4)
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)

    def start(self) -> FrameReader:
        self._thread.start()
        return self

    @property
    def newest_seq(self) -> int:
        """The number of the newest frame captured (-1 before the first)."""
        return self.captured - 1

    def get(self, timeout: float = 0.5) -> Frame | None:
        """The next frame to process (the newest, in latest mode), or None when none came within `timeout`."""
        if not self.latest:
            try:
                return self._queue.get(timeout=timeout)
            except queue.Empty:
                return None
        with self._cond:
            if self._newest is None:
                self._cond.wait(timeout)
            frame, self._newest = self._newest, None
            return frame

    @property
    def done(self) -> bool:
        """Nothing more will come: the source ended (or failed) and every frame was handed out."""
        return self.finished.is_set() and self._newest is None and self._queue.empty()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the thread

    def _run(self) -> None:
        try:
            empty_sessions = 0  # reconnections in a row that gave no frame
            while not self._stop.is_set():
                capture = self._open()
                if capture is None:
                    return
                before = self.captured
                try:
                    self._read_all(capture)
                finally:
                    capture.close()
                if self._stop.is_set():
                    return
                if not self.spec.live:
                    if self.loop and self.captured > before:
                        continue
                    return  # the end of the file or folder
                empty_sessions = 0 if self.captured > before else empty_sessions + 1
                if self.retries is not None and empty_sessions > self.retries:
                    self.error = f"{self.spec.describe()}: no frames after {empty_sessions} reconnections; giving up"
                    log.error("%s", self.error)
                    return
                delay = self._delay(empty_sessions + 1)
                log.warning("%s: stream dropped after %d frames; reconnecting in %.1f s", self.spec.describe(),
                            self.captured - before, delay)
                self._stop.wait(delay)
        except Exception as e:  # an unexpected OpenCV error: end with the reason, not a traceback
            self.error = f"{self.spec.describe()}: capture failed: {type(e).__name__}: {e}"
            log.error("%s", self.error)
            log.debug("capture thread", exc_info=True)
        finally:
            self.finished.set()
            with self._cond:
                self._cond.notify_all()

    def _open(self) -> Capture | None:
        """The opened source, retrying live ones; None when stopped or out of retries."""
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            try:
                capture = self.opener(self.spec)
            except SourceError as e:
                if e.fatal or not self.spec.live:
                    self.error = str(e)
                elif self.retries is not None and attempt > self.retries:
                    self.error = f"{e}; giving up after {attempt} attempts"
                if self.error:
                    log.error("%s", self.error)
                    return None
                delay = self._delay(attempt)
                total = f" of {self.retries + 1}" if self.retries is not None else ""
                log.warning("%s; retrying in %.1f s (attempt %d%s)", e, delay, attempt + 1, total)
                self._stop.wait(delay)
                continue
            self.fps = capture.fps or self.fps
            if self.opened.is_set():
                if self.spec.live:
                    log.info("%s: reconnected", self.spec.describe())
                else:
                    log.debug("%s: from the start again", self.spec.describe())
            else:
                log.info("%s: opened%s", self.spec.describe(), f" ({capture.fps:g} fps)" if capture.fps else "")
            self.opened.set()
            return capture
        return None

    def _delay(self, failures: int) -> float:
        return min(30.0, self.retry_delay_s * 2 ** max(0, failures - 1))

    def _read_all(self, capture: Capture) -> None:
        """Read until the source ends or drops, or stop()."""
        pace = self.latest and not self.spec.live or self.spec.kind == "synthetic"
        period = 1.0 / capture.fps if pace and capture.fps else 0.0
        next_time = time.monotonic()
        while not self._stop.is_set():
            if period:
                next_time += period
                delay = next_time - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_time = time.monotonic()  # behind: do not burst to catch up
            got = capture.read()
            if got is None:
                return
            image, name = got
            frame = Frame(self.captured, image, time.time(), name)
            self.captured += 1
            if self.latest:
                with self._cond:
                    self._newest = frame
                    self._cond.notify()
            else:
                while not self._stop.is_set():
                    try:
                        self._queue.put(frame, timeout=0.2)
                        break
                    except queue.Full:
                        continue
