"""Live detection on a Jetson (or any machine): a camera, stream, video or image folder in; boxes, labels and FPS
drawn; a window, a video file, an MJPEG stream for browsers and JSON lines out.

    python detect_stream.py deimv2-pico.engine --source csi --serve 8080
    python detect_stream.py deimv2-pico.engine --source usb:0 --show
    python detect_stream.py deimv2-pico.onnx --source rtsp://user:pass@10.0.0.7/stream1 --serve 8080 --json -
    python detect_stream.py deimv2-pico.onnx --source clip.mp4 --save annotated.mp4 --json clip.jsonl
    python detect_stream.py deimv2-pico.engine --source csi --serve 8080 --track --line door=640,0,640,720 \
        --zone 100,400,500,400,500,700,100,700

Cameras and streams are read in a thread of their own and inference always takes the newest frame (no lag
builds up; frames that arrive during inference are dropped); files and folders give every frame in order
(--frames latest|all overrides). Live sources reconnect when they drop. Ctrl-C or SIGTERM stop it cleanly.
--track gives objects ids that follow them from frame to frame (ByteTrack; the analytics extra); --line and
--zone count the tracked objects crossing a line and inside a polygon.
See README.md beside this file.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np

from deim_edge import DeimEdgeError, Detections, Detector
from deim_edge.counting import LineCounter, ZoneCounter
from deim_edge.tracking import Tracker
from mjpeg import MjpegServer
from sources import FrameReader, SourceError, parse_source

log = logging.getLogger("detect_stream")

VIDEO_CODECS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG"}


def is_jetson() -> bool:
    """True on an NVIDIA Jetson (L4T)."""
    if Path("/etc/nv_tegra_release").exists():
        return True
    try:
        return "jetson" in Path("/proc/device-tree/model").read_text(errors="ignore").lower()
    except OSError:
        return False


def default_backend(model: str) -> str | None:
    """On a Jetson with TensorRT, ONNX files and <name>.trt bundles run as TensorRT engines (built once and
    cached); elsewhere, and for every other artifact, the runtime follows the file suffix."""
    path = Path(model)
    if path.suffix.lower() == ".trt" and path.is_dir():
        return "tensorrt"
    if path.suffix.lower() == ".onnx" and is_jetson() and importlib.util.find_spec("tensorrt") is not None:
        return "tensorrt"
    return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detect_stream.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="an artifact: .engine (TensorRT, the fast choice on a Jetson), .onnx, .xml, "
                                 ".tflite, a <name>.trt bundle, ...")
    p.add_argument("--source", default="csi" if is_jetson() else "usb:0",
                   help="csi[:N] | usb[:N] | /dev/videoN | rtsp://... | http://... | gst:<pipeline> | VIDEO | FOLDER "
                        "| synthetic[:WxH@FPS] (default: csi on a Jetson, else usb:0)")
    m = p.add_argument_group("model")
    m.add_argument("--backend", help="runtime (default: TensorRT for .onnx/.trt on a Jetson, else by file suffix)")
    m.add_argument("--conf", type=float, default=0.35, help="minimum score drawn and logged (default 0.35)")
    m.add_argument("--max-det", type=int, help="most detections per frame (default: the artifact's)")
    m.add_argument("--classes", nargs="+", help="keep only these classes (names or ids)")
    m.add_argument("--threads", type=int, help="inference threads (ONNX Runtime, OpenVINO, LiteRT)")
    s = p.add_argument_group("source")
    s.add_argument("--frames", choices=("latest", "all"),
                   help="latest: always the newest frame, dropping the rest (default for cameras and streams); "
                        "all: every frame in order (default for files and folders)")
    s.add_argument("--width", type=int, help="camera capture width (CSI default 1280)")
    s.add_argument("--height", type=int, help="camera capture height (CSI default 720)")
    s.add_argument("--fps", type=float, help="camera frame rate (CSI default 30)")
    s.add_argument("--flip", type=int, default=0, help="CSI: nvvidconv flip-method 0-7 (2: rotate 180)")
    s.add_argument("--gst-decode", action="store_true",
                   help="decode stream URLs with GStreamer (Jetson hardware decoder) instead of FFmpeg")
    s.add_argument("--rtsp-transport", choices=("tcp", "udp"), default="tcp", help="RTSP transport (default tcp)")
    s.add_argument("--timeout", type=float, default=5.0, help="stream open/read timeout in seconds (default 5)")
    s.add_argument("--retries", type=int, default=-1,
                   help="reconnection attempts in a row before giving up on a camera or stream (default -1: forever)")
    s.add_argument("--retry-delay", type=float, default=1.0,
                   help="seconds before the first reconnection, doubling up to 30 (default 1)")
    s.add_argument("--loop", action="store_true", help="replay a video file or folder from the start when it ends")
    a = p.add_argument_group("analytics (the analytics extra: pip install 'deim-edge[analytics]')")
    a.add_argument("--track", action="store_true",
                   help="follow objects from frame to frame: each gets an id, drawn as #id and logged as 'track'")
    a.add_argument("--line", action="append", default=[], type=region_argument("line"), metavar="[NAME=]X1,Y1,X2,Y2",
                   help="count tracked objects crossing this line (pixels; in: from its right to its left, looking "
                        "from the first point to the second); repeatable; needs --track")
    a.add_argument("--zone", action="append", default=[], type=region_argument("zone"),
                   metavar="[NAME=]X1,Y1,X2,Y2,X3,Y3,...",
                   help="count tracked objects inside this polygon (pixels), now and all visits; repeatable; "
                        "needs --track")
    o = p.add_argument_group("outputs")
    show = o.add_mutually_exclusive_group()
    show.add_argument("--show", dest="show", action="store_true", default=None, help="open a window")
    show.add_argument("--no-show", dest="show", action="store_false",
                      help="no window (default: a window when there is a display)")
    o.add_argument("--save", metavar="VIDEO", help=f"write the annotated video ({', '.join(VIDEO_CODECS)})")
    o.add_argument("--save-fps", type=float,
                   help="frame rate of --save (default: the source's, else 30; in newest-frame mode give the app's "
                        "own rate for real-time playback)")
    o.add_argument("--serve", type=int, metavar="PORT",
                   help="serve an MJPEG stream at http://<board>:PORT/ for browsers (0: any free port)")
    o.add_argument("--host", default="0.0.0.0", help="address to serve on (default 0.0.0.0: every network)")
    o.add_argument("--jpeg-quality", type=int, default=80, help="MJPEG quality 1-100 (default 80)")
    o.add_argument("--json", metavar="PATH", help="JSON lines of detections, one per frame ('-': stdout)")
    o.add_argument("--max-frames", type=int, help="stop after this many frames")
    o.add_argument("--log-every", type=float, default=10.0, help="seconds between status lines (0: none)")
    o.add_argument("-v", "--verbose", action="store_true", help="debug messages (pipelines, HTTP requests)")
    return p


REGION_FORMS = {"line": ("X1,Y1,X2,Y2: two points", 2, 2, "door=320,0,320,480"),
               "zone": ("X1,Y1,X2,Y2,X3,Y3,...: three points or more", 3, None, "dock=0,240,320,240,320,480,0,480")}


def region_argument(kind: str):  # noqa: ANN201 (an argparse type)
    """The argparse type of --line or --zone: '[NAME=]x1,y1,x2,y2,...' -> (name or None, [(x, y), ...])."""
    form, least, most, example = REGION_FORMS[kind]

    def parse(text: str) -> tuple[str | None, list[tuple[float, float]]]:
        name, _, numbers = text.rpartition("=")
        try:
            values = [float(v) for v in numbers.split(",")]
        except ValueError:
            values = []
        points = len(values) // 2
        if (not values or len(values) % 2 or points < least or (most and points > most)
                or not np.isfinite(values).all()):
            raise argparse.ArgumentTypeError(f"{text!r}: write a {kind} as [NAME=]{form}, in pixels of the "
                                             f"source's frames, e.g. {example}")
        return name.strip() or None, list(zip(values[0::2], values[1::2]))

    return parse


def check_analytics(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error (status 2) when --line or --zone come without --track, or two share a name."""
    if (args.line or args.zone) and not args.track:
        parser.error("--line and --zone count tracked objects: add --track")
    for kind, shapes in (("line", args.line), ("zone", args.zone)):
        names = [name or f"{kind}{i}" for i, (name, _) in enumerate(shapes, 1)]
        if len(set(names)) < len(names):
            parser.error(f"two --{kind} options have the same name ({', '.join(names)}): name each one differently")


# ---------------------------------------------------------------------------------------------- analytics

class Analytics:
    """--track, --line and --zone: ids from a Tracker for each frame's detections, and the counters that follow
    the tracked objects."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.conf = args.conf
        self.tracker = Tracker()  # here, before any frame, a missing analytics extra is an error
        self.frame_rate: float | None = None
        self.lines = [LineCounter(*points, name=name or f"line{i}") for i, (name, points) in enumerate(args.line, 1)]
        self.zones = [ZoneCounter(points, name=name or f"zone{i}") for i, (name, points) in enumerate(args.zone, 1)]

    def update(self, found: Detections, fps: float | None) -> Detections:
        """The tracked detections of the next frame (those in a track, or scoring at least --conf), counted."""
        if self.frame_rate is None:  # the source's rate is known once it is open: the first frame
            self.frame_rate = fps or 30.0
            self.tracker = Tracker(frame_rate=self.frame_rate)
            self._check_inside(found.image_size)
        tracked = self.tracker.update(found, self.conf)
        for counter in (*self.lines, *self.zones):
            counter.update(tracked)
        return tracked

    def draw(self, image: np.ndarray) -> None:
        """The lines and zones with their counts, in place."""
        for line in self.lines:
            line.draw(image, color=(0, 255, 255))
        for zone in self.zones:
            zone.draw(image, color=(255, 255, 0))

    @property
    def counts(self) -> dict | None:
        """{"lines": {name: in, out per class}, "zones": {name: now, visits per class}}, or None without any."""
        if not self.lines and not self.zones:
            return None
        return {"lines": {c.name: c.counts for c in self.lines}, "zones": {c.name: c.counts for c in self.zones}}

    def _check_inside(self, size: tuple[int, int] | None) -> None:
        if size is None:
            return
        h, w = size
        shapes = [(c.name, [c.start, c.end]) for c in self.lines] + [(c.name, c.polygon.tolist()) for c in self.zones]
        for name, points in shapes:
            if any(not (0 <= x <= w and 0 <= y <= h) for x, y in points):
                log.warning("%s reaches outside the %dx%d frames: its coordinates are in pixels of the source",
                            name, w, h)


# ---------------------------------------------------------------------------------------------- drawing

class Meter:
    """Frames per second over the last `window` frames."""

    def __init__(self, window: int = 30) -> None:
        self.times: collections.deque[float] = collections.deque(maxlen=window)

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    @property
    def fps(self) -> float:
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / max(1e-9, self.times[-1] - self.times[0])


def draw_hud(image: np.ndarray, lines: list[str]) -> None:
    """White lines of text on a darkened band, top left, drawn in place."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.45, image.shape[0] / 900)
    thick = max(1, round(scale * 2))
    sizes = [cv2.getTextSize(text, font, scale, thick) for text in lines]
    width = min(image.shape[1], 16 + max(w for (w, _), _ in sizes))
    height = min(image.shape[0], 8 + sum(h + base + 4 for (_, h), base in sizes))
    band = image[:height, :width]
    band[:] = band // 3
    y = 0
    for text, ((_, h), base) in zip(lines, sizes):
        y += h + base + 4
        cv2.putText(image, text, (8, y), font, scale, (255, 255, 255), thick, cv2.LINE_AA)


# ---------------------------------------------------------------------------------------------- outputs

class Outputs:
    """Window, video file, MJPEG server and JSON lines; each optional."""

    def __init__(self, args: argparse.Namespace, title: str) -> None:
        self.args, self.title = args, title
        self.show = _want_window(args.show)
        self.writer: cv2.VideoWriter | None = None
        self.server: MjpegServer | None = None
        self.json = None
        if args.json:
            self.json = sys.stdout if args.json == "-" else open(args.json, "w", buffering=1)  # noqa: SIM115
        if args.serve is not None:
            self.server = MjpegServer(args.host, args.serve, args.jpeg_quality, title).start()
            for url in self.server.urls():
                log.info("MJPEG stream: %s (open it in a browser)", url)

    def write(self, annotated: np.ndarray, record: dict | None, source_fps: float | None) -> bool:
        """Send one annotated frame everywhere; False when the window asked to quit."""
        if self.args.save:
            self._save(annotated, source_fps)
        if self.server is not None:
            self.server.publish(annotated)
        if self.json is not None and record is not None:
            self.json.write(json.dumps(record) + "\n")
        if self.show:
            try:
                cv2.imshow(self.title, annotated)
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    return False
            except cv2.error as e:
                log.warning("no window: %s", str(e).strip().splitlines()[-1])
                self.show = False
        return True

    def _save(self, image: np.ndarray, source_fps: float | None) -> None:
        if self.writer is None:
            fps = self.args.save_fps or source_fps or 30.0
            self.size = (image.shape[1], image.shape[0])
            codec = VIDEO_CODECS[Path(self.args.save).suffix.lower()]
            self.writer = cv2.VideoWriter(self.args.save, cv2.VideoWriter_fourcc(*codec), fps, self.size)
            if not self.writer.isOpened():
                raise OSError(f"cannot write the video {self.args.save} ({codec} at {fps:g} fps)")
            log.info("saving to %s (%dx%d, %g fps)", self.args.save, *self.size, fps)
        if (image.shape[1], image.shape[0]) != self.size:  # image folders: frames of other sizes are resized
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
        if self.server is not None:
            self.server.close()
        if self.json is not None and self.json is not sys.stdout:
            self.json.close()
        if self.show:
            cv2.destroyAllWindows()


def _want_window(show: bool | None) -> bool:
    has_gui = "GUI:                           NONE" not in cv2.getBuildInformation()
    if show is None:
        return has_gui and bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if show and not has_gui:
        log.warning("--show: this OpenCV (%s) has no GUI support; no window", cv2.__file__)
        return False
    return show


# ---------------------------------------------------------------------------------------------- main loop

def run(args: argparse.Namespace, stop: threading.Event) -> int:
    """The app; the exit status (0: done or stopped, 1: the source failed, 2: bad arguments or model)."""
    try:
        spec = parse_source(args.source, width=args.width, height=args.height, fps=args.fps, flip=args.flip,
                            gst_decode=args.gst_decode, rtsp_transport=args.rtsp_transport, timeout_s=args.timeout)
    except SourceError as e:
        log.error("%s", e)
        return 2
    if args.save and Path(args.save).suffix.lower() not in VIDEO_CODECS:
        log.error("--save %s: the video must end with one of %s", args.save, ", ".join(VIDEO_CODECS))
        return 2
    backend = args.backend or default_backend(args.model)
    options = {"threads": args.threads} if args.threads else {}
    classes = [int(c) if c.isdigit() else c for c in args.classes] if args.classes else None
    try:
        analytics = Analytics(args) if args.track else None
    except DeimEdgeError as e:
        log.error("%s", e)
        return 2
    # the tracker's second stage matches uncertain detections to its tracks: detect down to its low_conf
    conf = min(args.conf, analytics.tracker.low_conf) if analytics else args.conf
    try:
        detector = Detector(args.model, backend=backend, conf=conf, max_det=args.max_det, classes=classes,
                            **options)
    except DeimEdgeError as e:
        log.error("cannot load the model: %s", e)
        return 2
    log.info("model: %r", detector)
    latest = args.frames == "latest" if args.frames else spec.live
    try:
        outputs = Outputs(args, title=f"deim-edge: {Path(args.model).name} on {spec.describe()}")
    except OSError as e:
        log.error("cannot start the outputs: %s", e)
        return 2
    reader = FrameReader(spec, latest=latest, retries=None if args.retries < 0 else args.retries,
                         retry_delay_s=args.retry_delay, loop=args.loop).start()
    log.info("reading %s: %s", spec.describe(),
             "newest frame only" if latest else "every frame in order")
    meter, processed, max_lag, infer_ms = Meter(), 0, 0, 0.0
    started = last_log = time.perf_counter()
    try:
        while not stop.is_set():
            frame = reader.get(timeout=0.5)
            if frame is None:
                if reader.done:
                    break
                continue
            lag = max(0, reader.newest_seq - frame.seq)  # frames captured since this one (latest mode: 0 or 1)
            max_lag = max(max_lag, lag)
            t0 = time.perf_counter()
            dets: Detections = detector(frame.image, color="BGR")
            infer_ms = 1000 * (time.perf_counter() - t0)
            if analytics is not None:
                dets = analytics.update(dets, reader.fps)
            counts = analytics.counts if analytics is not None else None
            meter.tick()
            annotated = dets.draw(frame.image)
            if analytics is not None:
                analytics.draw(annotated)
            draw_hud(annotated, [f"{meter.fps:5.1f} FPS  {infer_ms:5.1f} ms  {len(dets)} objects",
                                 f"frame {frame.seq}" + (f"  {frame.name}" if frame.name else "")])
            record = None
            if outputs.json is not None:
                record = {"frame": processed, "capture": frame.seq, "time": round(frame.time, 3), "lag": lag,
                          "ms": round(infer_ms, 2), **({"file": frame.name} if frame.name else {}),
                          **dets.to_dict(), **({"counts": counts} if counts else {})}
            if outputs.server is not None:
                outputs.server.stats = {"fps": meter.fps, "ms": infer_ms, "processed": processed + 1,
                                        **({"counts": counts} if counts else {})}
            if not outputs.write(annotated, record, reader.fps):
                log.info("window closed: stopping")
                break
            processed += 1
            if args.max_frames and processed >= args.max_frames:
                break
            now = time.perf_counter()
            if args.log_every and now - last_log >= args.log_every:
                last_log = now
                log.info("%d frames, %.1f fps, %.1f ms inference%s%s", processed, meter.fps, infer_ms,
                         f", {reader.captured - processed} dropped, lag <= {max_lag}" if latest else "",
                         f", {outputs.server.clients} viewer(s)" if outputs.server is not None else "")
    except (DeimEdgeError, OSError) as e:
        log.error("%s", e)
        return 1
    finally:
        reader.stop()
        outputs.close()
        elapsed = time.perf_counter() - started
        log.info("stopped: %d frames in %.1f s (%.1f fps)%s", processed, elapsed, processed / max(elapsed, 1e-9),
                 f"; {reader.captured} captured, {max(0, reader.captured - processed)} dropped, "
                 f"lag <= {max_lag} frame(s)" if latest else "")
    if reader.error and not stop.is_set():
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_analytics(parser, args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s detect_stream: %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:  # OpenCV's own warnings repeat what the messages here say
        try:
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except AttributeError:
            pass
    stop = threading.Event()

    def on_signal(signum: int, _frame) -> None:  # noqa: ANN001
        if stop.is_set():  # a second Ctrl-C: do not wait for anything
            log.warning("forced exit")
            os._exit(130)
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return run(args, stop)


if __name__ == "__main__":
    sys.exit(main())
