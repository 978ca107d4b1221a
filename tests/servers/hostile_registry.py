"""A real HTTP server (its own process) that plays an OCI registry from a table of answers, re-read on
every request, so that a test can make it lie in any way:

    {"<path, without the query>": {"status": 200, "headers": {...}, "body": "<file>", "mode": MODE}, ...}

A path the table does not name answers 404; "*" names every other path; "!auth": CHALLENGE answers
401 with that WWW-Authenticate to every request without an Authorization header. `body` is a file whose bytes
are the body (none: empty). MODE (default: send the answer honestly):
    endless        the status and headers, then a chunked body that never ends
    drip-headers   the status line and headers one byte every 0.5 s, for ever
    drip-body      the headers (Content-Length 10**9), then one byte every 0.2 s
Every request is appended to --log as "METHOD PATH AUTHORIZATION" (the header, or "-"). With --tls CERT
KEY it speaks https."""

from __future__ import annotations

import argparse
import http.server
import json
import socketserver
import time

CHUNK = b"A" * (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--routes", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="speak https with this certificate")
    args = parser.parse_args()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _routes(self) -> dict:
            try:
                with open(args.routes) as f:
                    return json.load(f)
            except (OSError, ValueError):
                return {}

        def _route(self) -> dict | None:
            routes = self._routes()
            return routes.get(self.path.split("?", 1)[0], routes.get("*"))

        def _answer(self, with_body: bool) -> None:
            with open(args.log, "a") as f:
                f.write(f"{self.command} {self.path} {self.headers.get('Authorization', '-')}\n")
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            route = self._route()
            challenge = self._routes().get("!auth")
            if challenge and "Authorization" not in self.headers:
                route = {"status": 401, "headers": {"WWW-Authenticate": challenge}}
            if route is None:
                route = {"status": 404}
            body = b""
            if route.get("body"):
                with open(route["body"], "rb") as f:
                    body = f.read()
            mode = route.get("mode")
            try:
                if mode == "drip-headers":
                    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-Pad-%d: %d\r\n" % (i, i) for i in range(10 ** 6))
                    for byte in head:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(0.5)
                    return
                self.send_response(route.get("status", 200))
                headers = dict(route.get("headers") or {})
                if mode == "endless":
                    headers["Transfer-Encoding"] = "chunked"
                elif mode == "drip-body":
                    headers["Content-Length"] = str(10 ** 9)
                else:
                    headers.setdefault("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                if not with_body:
                    return
                if mode == "endless":
                    while True:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                elif mode == "drip-body":
                    while True:
                        self.wfile.write(b"A")
                        self.wfile.flush()
                        time.sleep(0.2)
                else:
                    self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up: what the tests expect of it

        def do_GET(self):  # noqa: N802 - http.server's name
            self._answer(True)

        def do_HEAD(self):  # noqa: N802
            self._answer(False)

        def do_POST(self):  # noqa: N802
            self._answer(True)

        def do_PUT(self):  # noqa: N802
            self._answer(True)

        def do_PATCH(self):  # noqa: N802
            self._answer(True)

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server(("127.0.0.1", args.port), Handler) as server:
        if args.tls:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*args.tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
