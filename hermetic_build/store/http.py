"""Bazel's HTTP cache layout: GET/HEAD/PUT {base}/cas/{digest} and {base}/ac/{key}.

Works against nginx with WebDAV, bazel-remote, or an object store behind a gateway. Neither kind of
server checks that content matches its name, so every blob read is verified here, and action-cache
entries are signed (see remote.Signer)."""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import threading
import time
import urllib.parse
from pathlib import Path

from blake3 import blake3

from ..bounded import (
    ERROR_BODY_BYTES,
    copy_at_most,
    finished,
    length_fits,
    read_at_most,
    read_blob,
    with_deadline,
)
from ..digest import Digest, digest_bytes
from ..redact import redact_url
from .base import MAX_ENTRY_BYTES, ActionResult, NewFile, Store
from .remote import RemoteAuthError, RemoteStats, RemoteUnavailable, Signer

RETRIES = 3
BACKOFF_SECONDS = 0.2


class HttpStore(Store):
    def __init__(self, base_url: str, *, signer: Signer, timeout: float = 10.0, cafile: str | None = None,
                 user: str | None = None, password: str | None = None):
        parsed = urllib.parse.urlparse(base_url.rstrip("/"))
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {base_url}")
        self.url = redact_url(base_url.rstrip("/"))  # for messages: the password is in _auth only
        self._scheme, self._host, self._port = parsed.scheme, parsed.hostname, parsed.port
        self._path = parsed.path.rstrip("/")
        self._timeout = timeout
        self._ssl = ssl.create_default_context(cafile=cafile) if parsed.scheme == "https" else None
        user = user if user is not None else (parsed.username or os.environ.get("HB_REMOTE_USER"))
        password = password if password is not None else (parsed.password or os.environ.get("HB_REMOTE_PASSWORD"))
        self._auth = ("Basic " + base64.b64encode(f"{user}:{password or ''}".encode()).decode()) if user else None
        self.signer = signer
        self.stats = RemoteStats()
        self._local = threading.local()

    # ----- transport: one keep-alive connection per thread ----------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._scheme == "https":
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _drop(self, conn) -> None:
        conn.close()
        self._local.conn = None

    def _request(self, method: str, path: str, body=None, headers=None, read=None, size: int = 0):
        """(status, what read(response) returned for a 200 answer, else None). Every answer is bounded
        (bounded.py): it must be complete within the timeout plus 1 s per 8 MiB of `size`, a 200's body
        is read by read(response) (by default: at most ERROR_BODY_BYTES, as a PUT's answer), any other
        answer's body to at most ERROR_BODY_BYTES and dropped. A body not read to its end closes the
        connection. Retries dropped connections and 5xx with backoff; a timeout or a refused connection
        is not retried (the remote is then disabled for the build)."""
        headers = dict(headers or {})
        if self._auth:
            headers["Authorization"] = self._auth
        last = None
        for attempt in range(RETRIES):
            conn = self._conn()
            try:
                if hasattr(body, "seek"):
                    body.seek(0)
                with_deadline(conn, self._timeout, size)
                conn.request(method, self._path + path, body=body, headers=headers)
                response = conn.getresponse()
                status = response.status
                if status == 200:
                    data = (read or _read_small)(response)
                else:
                    data = None
                    _read_small(response)  # a short error answer leaves the connection reusable
                if not finished(response):
                    self._drop(conn)
                if status in (401, 403):
                    raise RemoteAuthError(f"HTTP {status} for {method} {path}")
                if status >= 500:
                    last = f"HTTP {status} for {method} {path}"
                else:
                    return status, data
            except (ConnectionError, TimeoutError, http.client.HTTPException, OSError) as exc:
                if isinstance(exc, RemoteAuthError):
                    raise
                last = f"{type(exc).__name__}: {exc}"
                self._drop(conn)
                if isinstance(exc, (TimeoutError, ConnectionRefusedError)):
                    # an unresponsive or absent server: retrying would only multiply the wait
                    break
            time.sleep(BACKOFF_SECONDS * (2 ** attempt))
        raise RemoteUnavailable(last or "no answer")

    # ----- CAS -------------------------------------------------------------------------------------
    def has_blob(self, digest: Digest) -> bool:
        status, _ = self._request("HEAD", f"/cas/{digest.hash}")
        return status == 200

    def get_blob(self, digest: Digest) -> bytes | None:
        status, data = self._request("GET", f"/cas/{digest.hash}", read=lambda r: read_blob(r, digest.size),
                                     size=digest.size)
        if status != 200:
            return None
        if data is None or digest_bytes(data) != digest:
            self.stats.add(rejected_blobs=1)
            return None
        self.stats.add(blobs_down=1, bytes_down=len(data))
        return data

    def fetch_file(self, digest: Digest, dest: Path, *, dir_fd: int | None = None, mode: int | None = None) -> bool:
        holder = []

        def stream(response) -> Digest | None:
            if not length_fits(response, digest.size):
                return None
            out = NewFile(dest, dir_fd=dir_fd, mode=mode)
            holder.append(out)
            hasher = blake3()

            def write(chunk: bytes) -> None:
                hasher.update(chunk)
                out.write(chunk)

            # at most digest.size + 1 bytes reach the disk: one more than the blob has is a mismatch
            size = copy_at_most(response, write, digest.size)
            return Digest(hasher.hexdigest(), size)

        try:
            status, got = self._request("GET", f"/cas/{digest.hash}", read=stream, size=digest.size)
            if status != 200 or got != digest:
                for out in holder:
                    out.discard()
                if status == 200:
                    self.stats.add(rejected_blobs=1)
                return False
            for out in holder[:-1]:  # attempts cut short and retried
                out.discard()
            holder[-1].commit()
        except BaseException:
            for out in holder:
                out.discard()
            raise
        self.stats.add(blobs_down=1, bytes_down=digest.size)
        return True

    def put_blob(self, data: bytes, *, fsync: bool = True) -> Digest:
        digest = digest_bytes(data)
        self._put(f"/cas/{digest.hash}", data, len(data))
        return digest

    def put_file(self, path: Path, *, move: bool = False, fsync: bool = True) -> Digest:
        from ..digest import digest_file

        digest = digest_file(path)
        if not self.has_blob(digest):
            with open(path, "rb") as f:
                self._put(f"/cas/{digest.hash}", f, digest.size)
        return digest

    def _put(self, path: str, body, size: int) -> None:
        status, _ = self._request("PUT", path, body=body, headers={"Content-Length": str(size)})
        if status not in (200, 201, 204):
            raise RemoteUnavailable(f"HTTP {status} for PUT {path}")
        self.stats.add(blobs_up=1, bytes_up=size)

    # ----- action cache ----------------------------------------------------------------------------
    def get_action_result(self, key: str) -> ActionResult | None:
        # an entry's body: at most MAX_ENTRY_BYTES + 1 bytes (the rest is not read, the connection is
        # dropped), so a huge entry costs no memory before the signer refuses it as too large
        status, data = self._request("GET", f"/ac/{key}", read=lambda r: read_at_most(r, MAX_ENTRY_BYTES),
                                     size=MAX_ENTRY_BYTES)
        if status != 200:
            self.stats.add(ac_misses=1)
            return None
        result, why = self.signer.open(key, data)
        if result is None:
            self.stats.reject_entry(key, why)
            return None
        self.stats.add(ac_hits=1)
        return result

    def put_action_result(self, key: str, result: ActionResult) -> None:
        data = self.signer.seal(key, result)
        self._put(f"/ac/{key}", data, len(data))


def _read_small(response) -> bytes:
    """A body hb does not need (an error answer, a PUT's answer): at most ERROR_BODY_BYTES + 1 read."""
    return read_at_most(response, ERROR_BODY_BYTES)

