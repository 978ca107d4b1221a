"""A real HTTP server (its own process): Bazel's HTTP cache layout (GET/HEAD/PUT under /cas/ and /ac/)
that stores honestly, and misbehaves on the GETs that a rules file names, re-read on every request:

    {"<substring of the path>": MODE, ...}
    endless      200, a chunked body that never ends
    endless404   404, a chunked body that never ends
    drip         200, Content-Length 10**9, one byte every 0.2 s
    drip-status  the status line itself, one byte every 0.2 s
    long-length  200, a Content-Length 1000 bytes longer than the stored blob, then the blob, then silence
    huge         200, Content-Length 10**10 and a body of that many bytes (sent as fast as it is read)

It also answers the OCI distribution API's manifest GETs (/v2/<repo>/manifests/<ref>) with MODE when
a rule names them (404 otherwise), for oci:// caches. Every request is appended to --log."""

from __future__ import annotations

import argparse
import http.server
import json
import os
import time

from threaded import serve_forever

CHUNK = b"A" * (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rules", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _log(self, note: str) -> None:
            with open(args.log, "a") as f:
                f.write(f"{self.command} {self.path} {note}\n")

        def _mode(self):
            try:
                with open(args.rules) as f:
                    rules = json.load(f)
            except (OSError, ValueError):
                rules = {}
            return next((mode for part, mode in rules.items() if part in self.path), None)

        def _file(self) -> str:
            return os.path.join(args.root, self.path.strip("/"))

        def _empty(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_HEAD(self):  # noqa: N802 - http.server's name
            self._log("")
            path = self._file()
            if os.path.isfile(path):
                self.send_response(200)
                self.send_header("Content-Length", str(os.path.getsize(path)))
                self.end_headers()
            else:
                self._empty(404)

        def do_PUT(self):  # noqa: N802
            data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._log(str(len(data)))
            path = self._file()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            self._empty(201)

        def do_GET(self):  # noqa: N802
            mode = self._mode()
            self._log(mode or "")
            try:
                if mode is None:
                    self._plain()
                else:
                    getattr(self, "_" + mode.replace("-", "_"))()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up: what the tests expect of it

        def _plain(self):
            path = self._file()
            if not os.path.isfile(path):
                return self._empty(404)
            with open(path, "rb") as f:
                data = f.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _chunked_forever(self, status: int):
            self.send_response(status)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))

        def _endless(self):
            self._chunked_forever(200)

        def _endless404(self):
            self._chunked_forever(404)

        def _drip(self):
            self.send_response(200)
            self.send_header("Content-Length", str(10 ** 9))
            self.end_headers()
            while True:
                self.wfile.write(b"A")
                self.wfile.flush()
                time.sleep(0.2)

        def _drip_status(self):
            for byte in b"HTTP/1.1 200 OK\r\n":
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
            self.close_connection = True

        def _long_length(self):
            with open(self._file(), "rb") as f:
                data = f.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data) + 1000))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
            time.sleep(30)

        def _huge(self):
            self.send_response(200)
            self.send_header("Content-Length", str(10 ** 10))
            self.end_headers()
            while True:
                self.wfile.write(CHUNK)

    serve_forever(args.port, Handler)


if __name__ == "__main__":
    main()
