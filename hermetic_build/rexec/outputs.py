"""Outputs left on the engine's CAS (`--remote-download=minimal`, Bazel's "build without the bytes").

A remotely executed action's outputs stay on the engine until something on this machine reads them:
a local-only action that consumes them, hb-out for a requested target, `hb verify`, an analysis that
needs them. Remote actions that consume them get them from the engine's CAS, never through here.

hb keys blobs by BLAKE3; the engine names them by SHA-256. worker_exec (the Command of every hb
action, on whatever worker runs it) computes both for every output file and returns the pairs as
one more output, CLAIMS_PATH. The client records an output under the claimed BLAKE3 digest without
downloading it, and remembers BLAKE3 -> SHA-256 in a small index in the local cache (one per
endpoint, so a later build knows where the bytes are). When the bytes are finally read they are
checked against both digests (ReapiStore._Verifier) before anything else sees them: a worker that
claims a wrong BLAKE3 makes that download fail, it cannot make hb accept other bytes. What a claim
is trusted for is the same as the outputs themselves: the worker that ran the action."""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path

from blake3 import blake3

from ..digest import Digest
from ..store.base import InvalidEntry, Store, load_json
from ..store.remote import RemoteAuthError, RemoteUnavailable

CLAIMS_PATH = ".hb/outputs.json"
CLAIMS_VERSION = 1
MAX_CLAIMS_BYTES = 64 << 20
DOWNLOAD_MODES = ("minimal", "all")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_LINE = re.compile(rb"([0-9a-f]{64}) ([0-9]{1,19}) ([0-9a-f]{64})\n\Z")


def encode_claims(pairs: dict[str, str]) -> bytes:
    """pairs: SHA-256 hex -> BLAKE3 hex of every output file (of file and directory outputs)."""
    import json

    return json.dumps({"v": CLAIMS_VERSION, "blake3": dict(sorted(pairs.items()))}, sort_keys=True,
                      separators=(",", ":")).encode()


def decode_claims(data: bytes) -> dict[str, str]:
    """The SHA-256 -> BLAKE3 claims of a worker; InvalidEntry if they do not follow the schema."""
    obj = load_json(data, limit=MAX_CLAIMS_BYTES)
    if not isinstance(obj, dict) or obj.keys() != {"v", "blake3"} or obj["v"] != CLAIMS_VERSION \
            or not isinstance(obj["blake3"], dict):
        raise InvalidEntry(f"{CLAIMS_PATH}: not an hb output claim (version {CLAIMS_VERSION})")
    claims = obj["blake3"]
    for sha, b3 in claims.items():
        if not _HEX64.match(sha) or not isinstance(b3, str) or not _HEX64.match(b3):
            raise InvalidEntry(f"{CLAIMS_PATH}: {sha[:70]!r} -> {str(b3)[:70]!r} is not a pair of digests")
    return claims


class RemoteBlobIndex:
    """BLAKE3 digest -> SHA-256 of blobs known to be on one endpoint's CAS (not in the local store):
    an append-only file of `<blake3> <size> <sha256>` lines under the local cache. Lines that do not
    parse are skipped (a torn last line after a crash); a wrong pair only makes a download fail."""

    def __init__(self, cache_dir: Path, endpoint: str):
        name = blake3(endpoint.encode()).hexdigest()[:16]
        self.path = Path(cache_dir) / "remote-outputs" / f"{name}.idx"
        self._map: dict[Digest, str] | None = None
        self._lock = threading.Lock()

    def _load(self) -> dict[Digest, str]:
        if self._map is None:
            found: dict[Digest, str] = {}
            with contextlib.suppress(FileNotFoundError):
                with open(self.path, "rb") as f:
                    for line in f:
                        m = _LINE.match(line)
                        if m:
                            found[Digest(m[1].decode(), int(m[2]))] = m[3].decode()
            self._map = found
        return self._map

    def sha256(self, digest: Digest) -> str | None:
        with self._lock:
            return self._load().get(digest)

    def add(self, pairs: list[tuple[Digest, str]]) -> None:
        with self._lock:
            known = self._load()
            new = [(d, sha) for d, sha in pairs if known.get(d) != sha]
            if not new:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, b"".join(f"{d.hash} {d.size} {sha}\n".encode() for d, sha in new))
            finally:
                os.close(fd)
            known.update(new)


class LazyOutputs(Store):
    """The build's store (local, or local + remote cache) in front of the engine's CAS: a blob the
    build's store lacks but the index places on the engine is fetched from there on first read
    (verified against its SHA-256 and its BLAKE3, then kept in the local store)."""

    def __init__(self, inner, local, cas, index: RemoteBlobIndex, *, uploads_results: bool = False,
                 shared_cache=None):
        self.inner = inner  # LocalStore or TieredStore: writes and the action cache go there
        self.local = local
        self.cas = cas  # the executor's ReapiStore
        self.index = index
        # results are also written to a remote cache: one on the engine's own CAS (shared_cache, a
        # ReapiStore) is told where the blobs are; any other gets them from this machine, so they
        # are downloaded first
        self.uploads_results = uploads_results
        self.shared_cache = shared_cache

    def __getattr__(self, name):  # tmp_dir, lock(), gc(), remote_hits ... are the inner store's
        return getattr(self.inner, name)

    def remote_sha256(self, digest: Digest) -> str | None:
        """The SHA-256 of a blob left on the engine, if this machine does not hold it."""
        if self.local.has_blob(digest):
            return None
        return self.index.sha256(digest)

    def _learn(self, digest: Digest) -> bool:
        sha = self.index.sha256(digest)
        if sha is None:
            return False
        self.cas.learn_sha256(digest, sha)
        return True

    # ----- CAS -------------------------------------------------------------------------------------
    def has_blob(self, digest: Digest) -> bool:
        return self.local.has_blob(digest) or self.index.sha256(digest) is not None or self.inner.has_blob(digest)

    def _remote(self, default, fn, *args):
        """A read from the engine's CAS; an engine that cannot be reached is a missing blob (the
        producing action then runs again, remotely or, once the executor is given up, locally)."""
        try:
            return fn(*args)
        except (RemoteUnavailable, RemoteAuthError):
            return default

    def get_blob(self, digest: Digest) -> bytes | None:
        data = self.inner.get_blob(digest)
        if data is None and self._learn(digest):
            data = self._remote(None, self.cas.get_blob, digest)  # verified against both digests
            if data is not None:
                self.local.put_blob(data)
        return data

    def open_blob(self, digest: Digest):
        reader = self.inner.open_blob(digest)
        if reader is None and self._download(digest):
            reader = self.local.open_blob(digest)
        return reader

    def fetch_file(self, digest: Digest, dest: Path, *, dir_fd: int | None = None, mode: int | None = None) -> bool:
        if self.inner.fetch_file(digest, dest, dir_fd=dir_fd, mode=mode):
            return True
        return self._download(digest) and self.local.fetch_file(digest, dest, dir_fd=dir_fd, mode=mode)

    def fetch_new_file(self, digest: Digest, name: str, dir_fd: int, mode: int) -> bool:
        """The inner store's fetch_new_file (a new file in a directory being filled), after bringing
        the blob from the engine if it was left there."""
        new_file = getattr(self.inner, "fetch_new_file", None)
        if new_file is None:
            return self.fetch_file(digest, name, dir_fd=dir_fd, mode=mode)
        if new_file(digest, name, dir_fd, mode):
            return True
        return self._download(digest) and self.local.fetch_new_file(digest, name, dir_fd, mode)

    def _download(self, digest: Digest) -> bool:
        """Bring a blob left on the engine into the local store (a temp file, verified, moved in)."""
        if not self._learn(digest):
            return False
        fd, tmp = self.local._temp()
        os.close(fd)
        try:
            if not self._remote(False, self.cas.fetch_file, digest, Path(tmp)):
                return False
            self.inner.put_file(Path(tmp), move=True)  # and to a remote cache, when it is written to
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def prefetch(self, digests) -> None:
        digests = list(digests)
        inner = getattr(self.inner, "prefetch", None)
        if inner is not None:
            inner(digests)
        remote = [d for d in set(digests) if not self.local.has_blob(d) and self._learn(d)]
        if remote:
            self._remote(None, self.cas.prefetch, remote, lambda _digest, data: self.local.put_blob(data, fsync=False))
            self.local.flush()

    def put_blob(self, data: bytes, *, fsync: bool = True) -> Digest:
        return self.inner.put_blob(data, fsync=fsync)

    def put_file(self, path: Path, *, move: bool = False, fsync: bool = True) -> Digest:
        return self.inner.put_file(path, move=move, fsync=fsync)

    def put_at(self, dir_fd: int, name: str, *, move: bool = False, fsync: bool = True,
               known: tuple | None = None) -> Digest:
        return self.inner.put_at(dir_fd, name, move=move, fsync=fsync, known=known)

    def flush(self) -> None:
        self.inner.flush()

    # ----- action cache ----------------------------------------------------------------------------
    def get_action_result(self, key: str):
        return self.inner.get_action_result(key)

    def put_action_result(self, key: str, result) -> None:
        if self.uploads_results and "remote.worker" in result.metadata:  # executed remotely in this build
            for digest, sha in self._left_remote(result):
                if self.shared_cache is not None:
                    self.shared_cache.learn_sha256(digest, sha, present=True)
                else:
                    self._download(digest)
        self.inner.put_action_result(key, result)

    def _left_remote(self, result) -> list[tuple[Digest, str]]:
        """(digest, SHA-256) of the blobs of `result` left on the engine (a tree's directory blobs
        are always local: the client builds them)."""
        from ..tree import walk_tree

        digests = []
        for out in result.outputs:
            if out.kind == "dir":
                digests.extend(e.digest for _path, e in walk_tree(self, out.digest) if e.kind == "file")
            else:
                digests.append(out.digest)
        found = []
        for d in digests:
            sha = self.remote_sha256(d)
            if sha is not None:
                found.append((d, sha))
        return found
