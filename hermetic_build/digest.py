"""BLAKE3 digests of blobs, files and canonical encodings; sha256 alongside for OCI."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

from blake3 import blake3

CHUNK = 1 << 20
_DIGEST_RE = re.compile(r"[0-9a-f]{64}/[0-9]+\Z")
EMPTY_HASH = blake3(b"").hexdigest()


@dataclass(frozen=True, order=True)
class Digest:
    """BLAKE3-256 hash (hex) and size in bytes of one blob, as in REAPI's Digest."""

    hash: str
    size: int

    def __str__(self) -> str:
        return f"{self.hash}/{self.size}"

    @staticmethod
    def parse(text: str) -> "Digest":
        if not _DIGEST_RE.match(text):
            raise ValueError(f"not a digest: {text!r} (expected <64 hex>/<size>)")
        hash_, _, size = text.partition("/")
        return Digest(hash_, int(size))

    @property
    def short(self) -> str:
        return self.hash[:12]


def digest_bytes(data: bytes) -> Digest:
    return Digest(blake3(data).hexdigest(), len(data))


def digest_file(path: str | os.PathLike) -> Digest:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return digest_fd(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def sha256_if_blob(path: str | os.PathLike, digest: Digest) -> str | None:
    """The SHA-256 of the file at `path` if its bytes are the blob `digest` (BLAKE3 and size, taken in
    the same pass), else None (missing or changed): what an upload names a blob by must be read from
    the bytes it sends."""
    b3, sha, size = blake3(), hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                b3.update(chunk)
                sha.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return None
    return sha.hexdigest() if Digest(b3.hexdigest(), size) == digest else None


def digest_fd(fd: int, size: int) -> Digest:
    """BLAKE3 digest of what fd holds from its offset to its end. `size` (its fstat size) picks how: a
    file under CHUNK bytes (most sources, most files of an environment) is read with one call, sized by
    size (read(CHUNK) allocated 1 MiB per call); a larger one in chunks into one buffer, hashed on
    several threads beyond 16 chunks. Whatever is there is hashed, if the file is not the size it had."""
    total = 0
    if size < CHUNK:
        data = os.read(fd, size + 1)
        if len(data) == size:
            return Digest(blake3(data).hexdigest(), size)
        hasher, total = blake3(data), len(data)
    else:
        hasher = blake3(max_threads=blake3.AUTO) if size > 16 * CHUNK else blake3()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    while n := os.readv(fd, [buffer]):
        hasher.update(view[:n])
        total += n
    return Digest(hasher.hexdigest(), total)


class DualHasher:
    """BLAKE3 and sha256 of the same bytes in one pass (OCI needs sha256, the CAS BLAKE3)."""

    def __init__(self) -> None:
        self._blake3 = blake3()
        self._sha256 = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes) -> None:
        self._blake3.update(data)
        self._sha256.update(data)
        self.size += len(data)

    @property
    def digest(self) -> Digest:
        return Digest(self._blake3.hexdigest(), self.size)

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value) -> bytes:
    """The one byte encoding hashed into keys: sorted keys, no whitespace, UTF-8, no floats."""
    _reject_floats(value)
    return _CANONICAL.encode(value).encode()  # json.dumps with these options, without a new encoder per call


def _reject_floats(value) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if type(item) is str:  # most values: nothing to look into
            continue
        if isinstance(item, float):
            raise TypeError("floats are not allowed in canonical encodings (write them as strings)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
