"""A private conda channel: serves --root only to basic auth user alice / password s3cretPW, or under
/t/tk-SECRET-123/ (an anaconda.org-style token). Logs each request's path to --log."""

import argparse
import base64
import http.server

TOKEN = "tk-SECRET-123"
BASIC = "Basic " + base64.b64encode(b"alice:s3cretPW").decode()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=args.root, **k)

        def log_message(self, *a):
            pass

        def do_GET(self):
            with open(args.log, "a") as log:
                log.write(self.path + "\n")
            if self.path.startswith(f"/t/{TOKEN}/"):
                self.path = self.path[len(f"/t/{TOKEN}"):]
            elif self.headers.get("Authorization") != BASIC:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="private"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

    http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
