"""A conda channel server (its own process) that never ends one file: serves --root, except that a
GET of a path ending in --endless sends a 200 without a length and then bytes until the client goes
away, as fast as it can, or one byte every --drip seconds."""

from __future__ import annotations

import argparse
import http.server
import time

from threaded import serve_forever


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--endless", required=True)
    parser.add_argument("--drip", type=float, default=0.0)
    args = parser.parse_args()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=args.root, **kw)

        def log_message(self, *a):
            pass

        def do_GET(self):
            if not self.path.split("?")[0].endswith(args.endless):
                return super().do_GET()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            try:
                self.wfile.write(b'{"packages": {"a": ')
                while True:
                    if args.drip:
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(args.drip)
                    else:
                        self.wfile.write(b" " * 65536)
            except OSError:
                return

    serve_forever(args.port, Handler)


if __name__ == "__main__":
    main()
