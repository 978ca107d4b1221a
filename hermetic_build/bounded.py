"""Reads from a remote that end: a total deadline per HTTP request and a cap on the bytes read.

http.client's timeout bounds each socket read only, so a server that sends one byte a second
holds a request forever, and `response.read()` reads an endless body until memory runs out. A
remote (a cache, a registry) is written by others, so every answer hb reads from one goes through
here: each socket read of a response (status line, headers and body) first checks the request's
deadline, and bodies are read in bounded pieces up to a limit the caller knows (a blob's size from
its digest, a fixed cap for entries, manifests and error answers)."""

from __future__ import annotations

import functools
import io
import time

CHUNK = 1 << 20
# a request may take its timeout plus 1 s per 8 MiB it is expected to carry (what store/reapi.py
# grants its ByteStream reads): a remote slower than 8 MiB/s on a large blob is treated as failing
BYTES_PER_SECOND = 8 << 20
ERROR_BODY_BYTES = 4096  # of an error answer (or a PUT's answer), only this much is read: never kept


class Deadline:
    """The moment by which a whole answer must have been read. It starts with the first read of the
    answer, not with the request: an upload's body is sent at the speed of the uplink, under the
    plain per-operation timeout."""

    def __init__(self, timeout: float, size: int = 0):
        self.timeout = timeout
        self.seconds = timeout + size / BYTES_PER_SECOND
        self._end: float | None = None

    def left(self) -> float:
        """Seconds the next socket operation may wait (at most the timeout); TimeoutError once
        the deadline has passed."""
        if self._end is None:
            self._end = time.monotonic() + self.seconds
        left = self._end - time.monotonic()
        if left <= 0:
            raise self.expired()
        return min(left, self.timeout)

    def expired(self) -> TimeoutError:
        """What a socket timeout means: the deadline passed, or the server sent nothing for a timeout."""
        if self._end is not None and time.monotonic() >= self._end - 0.05:
            return TimeoutError(f"the answer did not complete within {self.seconds:.1f} s (the timeout of "
                                f"{self.timeout:g} s plus 1 s per 8 MiB expected); the server is too slow or "
                                "sends without end")
        return TimeoutError(f"nothing came for {self.timeout:g} s")


class _DeadlineIO(io.RawIOBase):
    """A response's socket reader whose every read waits at most until the deadline."""

    def __init__(self, raw, sock, deadline: Deadline):
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self._sock.settimeout(self._deadline.left())
        try:
            return self._raw.readinto(buffer)
        except TimeoutError:
            raise self._deadline.expired() from None

    def close(self) -> None:
        if not self.closed:
            self._raw.close()  # releases the socket's reference, as http.client's own reader does
        super().close()


@functools.cache
def _deadline_response():
    """HTTPResponse read through _DeadlineIO (status line and headers included). Made on first use:
    importing this module does not load http.client (most builds never talk to a remote)."""
    import http.client

    class DeadlineResponse(http.client.HTTPResponse):
        def __init__(self, sock, *args, deadline: Deadline, **kwargs):
            super().__init__(sock, *args, **kwargs)
            raw = self.fp.detach()  # the socket reader http.client made, without closing it
            self.fp = io.BufferedReader(_DeadlineIO(raw, sock, deadline))

    return DeadlineResponse


def with_deadline(conn, timeout: float, size: int = 0) -> None:
    """Make conn's next response end within timeout (plus 1 s per 8 MiB of `size`). The request is
    sent with the plain timeout (a kept-alive socket may still carry the last deadline's rest)."""
    if conn.sock is not None:
        conn.sock.settimeout(timeout)
    conn.response_class = functools.partial(_deadline_response(), deadline=Deadline(timeout, size))


def copy_at_most(response, write, limit: int) -> int:
    """Pass the body to write(chunk) until it ends or more than `limit` bytes came (then it stops,
    after at most limit + 1 bytes, leaving the rest unread). Returns the bytes passed. A body read
    to its end leaves the response closed, so its connection may be reused; one cut short does
    not (the caller drops the connection: response.isclosed() is False)."""
    total = 0
    while total <= limit:
        chunk = response.read1(min(CHUNK, limit + 1 - total))
        if not chunk:
            if not response.length:  # to its end (not cut short by the server)
                response.close()
            return total
        write(chunk)
        total += len(chunk)
    return total


def read_at_most(response, limit: int) -> bytes:
    """The body, or its first limit + 1 bytes when it is longer than limit (see copy_at_most)."""
    parts: list[bytes] = []
    copy_at_most(response, parts.append, limit)
    return b"".join(parts)


def finished(response) -> bool:
    """Whether the body was read to its end, so that its keep-alive connection may carry the next
    request (else the caller closes the connection: the rest of the body is never read)."""
    return response.isclosed() and not response.length


def length_fits(response, size: int) -> bool:
    """False when the answer announces a Content-Length other than `size` (a blob's size from its
    digest): then it is refused before a byte of it is read, as wrong content is."""
    return response.length is None or response.length == size


def read_blob(response, size: int) -> bytes | None:
    """A blob's body: None when its Content-Length is not `size`, else at most size + 1 bytes (a
    longer body then fails the digest check without being read whole)."""
    if not length_fits(response, size):
        return None
    return read_at_most(response, size)
