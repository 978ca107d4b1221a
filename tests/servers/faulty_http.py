"""A real HTTP server (its own process) that serves a directory and misbehaves on purpose:

    --corrupt SUBSTRING   serve wrong bytes (same length) for paths containing SUBSTRING
    --drop-once           for each path, the first GET sends the headers and half the body, then
                          drops the connection
Every request is appended to --log as "METHOD PATH STATUS".
"""

from __future__ import annotations

import argparse
import http.server
import os
import threading

from threaded import serve_forever


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--corrupt", default=None)
    parser.add_argument("--drop-once", action="store_true")
    args = parser.parse_args()
    seen: set[str] = set()
    lock = threading.Lock()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=args.root, **kw)

        def log_message(self, *a):
            pass

        def _log(self, status):
            with lock, open(args.log, "a") as f:
                f.write(f"{self.command} {self.path} {status}\n")

        def do_GET(self):
            path = self.translate_path(self.path)
            if not os.path.isfile(path):
                self._log(404)
                self.send_error(404)
                return
            data = open(path, "rb").read()
            with lock:
                first = self.path not in seen
                seen.add(self.path)
            if args.corrupt and args.corrupt in self.path:
                data = bytes(b ^ 0x5A for b in data)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if args.drop_once and first and self.path.endswith((".conda", ".tar.bz2")):
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self._log("200-dropped")
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(data)
            self._log(200)

    serve_forever(args.port, Handler)


if __name__ == "__main__":
    main()
