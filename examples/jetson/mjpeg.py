"""A live MJPEG stream over HTTP: what a browser on the same network opens to watch a headless board.

GET /            a page showing the stream, and the counts of lines and zones beside it when there are any
GET /stream.mjpg multipart/x-mixed-replace JPEGs, one per published frame
GET /frame.jpg   the newest frame
GET /stats       JSON: frames published, clients connected, and what the app adds (fps, counts, ...)
"""

from __future__ import annotations

import html
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

log = logging.getLogger("detect_stream")

BOUNDARY = "frame"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>%TITLE%</title>
<style>
  html, body { margin: 0; background: #111; color: #ccc; font: 14px sans-serif; }
  main { display: flex; flex-wrap: wrap; justify-content: center; align-items: flex-start; gap: 0.5em; }
  img { display: block; max-width: 100%; max-height: calc(100vh - 2em); }
  p { margin: 0.3em; text-align: center; }
  #counts { font-size: 13px; }
  #counts table { border-collapse: collapse; margin: 0 0 0.6em; }
  #counts th, #counts td { padding: 0.1em 0.5em; text-align: right; }
  #counts th:first-child, #counts td:first-child { text-align: left; }
  #counts th { color: #fff; border-bottom: 1px solid #555; }
  #counts tr.total td { color: #fff; font-weight: bold; }
</style></head>
<body>
<main><img id="stream" alt="waiting for frames"><aside id="counts" hidden></aside></main>
<p>%TITLE% &middot; <a href="stream.mjpg" style="color:#8cf">stream.mjpg</a> &middot; <span id="stats"></span></p>
<script>
  // one table per line (in, out) or zone (now, visits): a total row, then a row per class
  function table(name, columns) {
    const t = document.createElement("table");
    const row = (cells, cls) => {
      const tr = t.insertRow();
      if (cls) tr.className = cls;
      cells.forEach((text, i) => {
        const cell = document.createElement(cls === "head" ? "th" : "td");
        cell.textContent = text;
        tr.appendChild(cell);
      });
    };
    row([name, ...columns.map(c => c[0])], "head");
    row(["all", ...columns.map(c => c[1])], "total");
    const classes = [...new Set(columns.flatMap(c => Object.keys(c[2])))].sort();
    classes.forEach(k => row([k, ...columns.map(c => c[2][k] || 0)]));
    return t;
  }
  function showCounts(counts) {
    const panel = document.getElementById("counts");
    panel.hidden = !counts;
    if (!counts) return;
    const lines = Object.entries(counts.lines).map(([name, c]) =>
      table(name, [["in", c.in, c.in_per_class], ["out", c.out, c.out_per_class]]));
    const zones = Object.entries(counts.zones).map(([name, c]) =>
      table(name, [["now", c.now, c.now_per_class], ["visits", c.visits, c.visits_per_class]]));
    panel.replaceChildren(...lines, ...zones);
  }
  function poll() {
    fetch("stats").then(r => r.json()).then(s => {
      document.getElementById("stats").textContent = `${s.fps.toFixed(1)} fps, ${s.frames} frames`;
      showCounts(s.counts);
    }).catch(() => {});
  }
  // start the stream after the page has loaded, so the page's load event does not wait on an endless image
  window.addEventListener("load", () => { document.getElementById("stream").src = "stream.mjpg"; poll(); });
  setInterval(poll, 1000);
</script>
</body></html>
"""


class MjpegServer:
    """Serves the newest published frame to any number of browsers; JPEG-encodes each frame at most once, and
    only while someone watches."""

    def __init__(self, host: str = "0.0.0.0", port: int = 8080, quality: int = 80, title: str = "deim-edge") -> None:
        self.quality, self.title = quality, title
        self.stats: dict = {"fps": 0.0}
        self._cond = threading.Condition()
        self._image: np.ndarray | None = None
        self._seq = 0
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._encode_lock = threading.Lock()
        self._closed = False
        self.clients = 0
        self.httpd = ThreadingHTTPServer((host, port), _handler(self))
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="mjpeg", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def urls(self) -> list[str]:
        """Where a browser finds the page: this machine's network address(es), else localhost."""
        host = self.httpd.server_address[0]
        hosts = [host] if host not in ("0.0.0.0", "") else (_lan_addresses() or ["127.0.0.1"])
        return [f"http://{h}:{self.port}/" for h in hosts]

    def start(self) -> MjpegServer:
        self._thread.start()
        return self

    def publish(self, image: np.ndarray) -> None:
        """The frame browsers get next (BGR uint8); kept by reference, so do not draw on it afterwards."""
        with self._cond:
            self._image = image
            self._seq += 1
            self._cond.notify_all()

    def next_jpeg(self, after: int, timeout: float = 1.0) -> tuple[int, bytes] | None:
        """The newest frame newer than `after` as (its number, JPEG bytes); None on timeout or when closed."""
        with self._cond:
            if self._seq <= after and not self._closed:
                self._cond.wait(timeout)
            if self._closed or self._seq <= after:
                return None
            seq, image = self._seq, self._image
        with self._encode_lock:
            if self._jpeg[0] != seq:
                ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                if not ok:
                    return None
                self._jpeg = (seq, data.tobytes())
            return self._jpeg

    @property
    def frames(self) -> int:
        """Frames published so far."""
        return self._seq

    @property
    def closed(self) -> bool:
        return self._closed

    def _count_client(self, change: int) -> None:
        with self._cond:
            self.clients += change

    def close(self) -> None:
        """Stop serving: open streams end, the port is released."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(2.0)


def _handler(server: MjpegServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: nothing to keep alive at shutdown

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            try:
                if path in ("/", "/index.html"):
                    self._send(HTTPStatus.OK, "text/html; charset=utf-8",
                               PAGE.replace("%TITLE%", html.escape(server.title)).encode())
                elif path == "/stream.mjpg":
                    self._stream()
                elif path == "/frame.jpg":
                    got = server.next_jpeg(-1, timeout=5.0)
                    if got is None:
                        self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
                    else:
                        self._send(HTTPStatus.OK, "image/jpeg", got[1])
                elif path == "/stats":
                    stats = {**server.stats, "frames": server.frames, "clients": server.clients}
                    self._send(HTTPStatus.OK, "application/json", json.dumps(stats).encode())
                else:
                    self._send(HTTPStatus.NOT_FOUND, "text/plain", b"not found; the stream is at /\n")
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the browser went away

        def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _stream(self) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Pragma", "no-cache")
            self.end_headers()
            self.connection.settimeout(10.0)  # a client that stops reading is dropped, not waited on forever
            server._count_client(+1)
            try:
                last = 0
                while not server.closed:
                    got = server.next_jpeg(last, timeout=1.0)
                    if got is None:
                        continue
                    last, jpeg = got
                    self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                     f"\r\n\r\n".encode() + jpeg + b"\r\n")
                    self.wfile.flush()
            finally:
                server._count_client(-1)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
            log.debug("http %s: " + format, self.client_address[0], *args)

    return Handler


def _lan_addresses() -> list[str]:
    """This machine's address on the network it routes through (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            address = s.getsockname()[0]
    except OSError:
        return []
    return [] if address.startswith("127.") else [address]
