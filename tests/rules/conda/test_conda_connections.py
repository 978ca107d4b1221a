"""GETs over kept-alive connections (rules/conda/connections.py), against a small HTTP/1.1 server
that counts the connections it accepts."""

import hashlib
import http.client
import http.server
import os
import threading
import time
import urllib.error

import pytest

from hermetic_build.api import ActionFailed
from rules.conda import connections, fetch
from rules.conda.fetch import _download, _Mismatch, _TooLarge


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless the handler says otherwise

    def setup(self):
        super().setup()
        self.server.connections += 1

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.paths.append(self.path)
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/pkg.conda")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/pkg.conda":
            self._body(b"package bytes")
        elif self.path == "/hang-up":  # a keep-alive response, then the server drops the connection
            self._body(b"once")
            self.close_connection = True
        elif self.path == "/endless":  # no Content-Length, a body that never ends
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"A" * 65536
            try:
                while True:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass
        elif self.path == "/announces-too-much":  # a Content-Length over the limit, then silence
            self.send_response(200)
            self.send_header("Content-Length", str(10 ** 12))
            self.end_headers()
            self.wfile.flush()
            time.sleep(5)
        elif self.path == "/drip":  # a byte every 0.1 s
            self.send_response(200)
            self.send_header("Content-Length", str(10 ** 6))
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"A")
                    self.wfile.flush()
                    time.sleep(0.1)
            except OSError:
                pass
        elif self.path == "/short":  # promises more than it sends
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"only ten b")
            self.close_connection = True
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def _body(self, data: bytes):
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.connections, srv.paths = 0, []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()
    connections._local.__dict__.clear()  # this thread's pool points at the stopped server


def _get(url: str) -> bytes:
    with connections.get(url, 10) as response:
        return response.read(1 << 20) + response.read(1 << 20)


def test_one_connection_serves_many_gets(server):
    srv, url = server
    assert [_get(f"{url}/pkg.conda") for _ in range(5)] == [b"package bytes"] * 5
    assert srv.connections == 1


def test_redirects_are_followed_on_the_same_connection(server):
    srv, url = server
    assert _get(f"{url}/moved") == b"package bytes"
    assert srv.paths == ["/moved", "/pkg.conda"] and srv.connections == 1


def test_an_error_status_is_an_http_error(server):
    _, url = server
    with pytest.raises(urllib.error.HTTPError) as raised:
        connections.get(f"{url}/missing", 10)
    assert raised.value.code == 404


def test_a_connection_the_server_closed_is_replaced(server):
    srv, url = server
    assert _get(f"{url}/hang-up") == b"once"
    assert _get(f"{url}/pkg.conda") == b"package bytes"
    assert srv.connections == 2


def test_a_short_body_is_an_error_and_its_connection_is_not_reused(server, tmp_path):
    srv, url = server
    with pytest.raises(http.client.IncompleteRead):
        _download(f"{url}/short", str(tmp_path / "out"), "0" * 64)
    assert _get(f"{url}/pkg.conda") == b"package bytes"
    assert srv.connections == 2


def test_a_wrong_hash_is_a_mismatch_after_a_whole_read(server, tmp_path):
    srv, url = server
    with pytest.raises(_Mismatch):
        _download(f"{url}/pkg.conda", str(tmp_path / "out"), "0" * 64)
    assert _get(f"{url}/pkg.conda") == b"package bytes"
    assert srv.connections == 1  # the body was read whole: the connection stays usable


def test_only_http_and_https_are_followed(server):
    with pytest.raises(urllib.error.URLError):
        connections.get("ftp://127.0.0.1/pkg.conda", 10)


def test_an_endless_body_stops_past_the_limit(server, tmp_path):
    _, url = server
    started = time.monotonic()
    with pytest.raises(_TooLarge, match="more than 1000000 bytes came"):
        _download(f"{url}/endless", str(tmp_path / "out"), "0" * 64, limit=1_000_000)
    assert (tmp_path / "out").stat().st_size <= 1_000_000 and time.monotonic() - started < 5


def test_a_content_length_over_the_limit_is_refused_unread(server, tmp_path):
    _, url = server
    started = time.monotonic()
    with pytest.raises(_TooLarge, match=f"announces {10 ** 12} bytes"):
        _download(f"{url}/announces-too-much", str(tmp_path / "out"), "0" * 64)  # over MAX_DOWNLOAD_BYTES
    assert not (tmp_path / "out").exists() and time.monotonic() - started < 2


def test_a_trickle_is_given_up(server, tmp_path, monkeypatch):
    _, url = server
    monkeypatch.setattr(fetch, "TIMEOUT_SECONDS", 1)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="slower than 16 KiB/s on average after the first 1 s"):
        _download(f"{url}/drip", str(tmp_path / "out"), "0" * 64)
    assert time.monotonic() - started < 4


def test_file_urls_must_name_regular_files(tmp_path):
    package = tmp_path / "pkg.conda"
    package.write_bytes(b"package bytes")
    link = tmp_path / "link.conda"
    link.symlink_to(package)  # local channels link packages: fine
    sha = hashlib.sha256(b"package bytes").hexdigest()
    assert _download(link.as_uri(), str(tmp_path / "out"), sha)[0].size == 13
    os.mkfifo(tmp_path / "fifo")  # nobody writes it: a blocking open would hang
    for url, kind in (("file:///dev/zero", "a device, FIFO or socket"), ((tmp_path / "fifo").as_uri(),
                      "a device, FIFO or socket"), (tmp_path.as_uri(), "a directory")):
        with pytest.raises(ActionFailed, match=f"is {kind}, not a package file"):
            _download(url, str(tmp_path / "never"), sha)
    assert not (tmp_path / "never").exists()
    with pytest.raises(_TooLarge):
        _download(package.as_uri(), str(tmp_path / "out"), sha, limit=12)  # the lock says 12 bytes
