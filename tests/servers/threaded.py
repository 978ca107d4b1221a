"""The one server loop of the test servers in this directory (each run as a script, so this module is
found next to it): a threaded HTTP server on 127.0.0.1 whose port can be taken again at once."""

from __future__ import annotations

import http.server
import socketserver


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve_forever(port: int, handler) -> None:
    with Server(("127.0.0.1", port), handler) as server:
        server.serve_forever()
