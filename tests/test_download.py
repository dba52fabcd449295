"""Weights download, tested against an HTTP server on loopback."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from deim_edge.download import download
from deim_edge.errors import DownloadError

PAYLOAD = bytes(range(256)) * 1000


@pytest.fixture()
def server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/weights.pth":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_download_checks_the_hash_and_shows_progress(server, tmp_path: Path, capsys):
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    path = download(f"{server}/weights.pth", tmp_path / "w" / "weights.pth", sha256=sha)
    assert path.read_bytes() == PAYLOAD
    assert "100%" in capsys.readouterr().err
    assert download("http://127.0.0.1:9/unreachable", path, sha256=sha) == path  # kept, no request


def test_wrong_hash_leaves_no_file(server, tmp_path: Path):
    dest = tmp_path / "weights.pth"
    with pytest.raises(DownloadError, match="expected 00"):
        download(f"{server}/weights.pth", dest, sha256="00" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_is_a_download_error(server, tmp_path: Path):
    with pytest.raises(DownloadError, match="404"):
        download(f"{server}/absent.pth", tmp_path / "absent.pth", progress=False)
    assert list(tmp_path.iterdir()) == []
