"""A local store in front of a remote one: reads try local first, remote hits are written to the
local store, writes go to local and (when uploading) to the remote. A decorator, not a peer: the
remote can be any Store (HTTP cache, OCI registry, another directory)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from ..digest import Digest
from .base import ActionResult, Store


class TieredStore(Store):
    def __init__(self, local, remote: Store, *, upload: bool = True):
        self.local = local
        self.remote = remote
        self.upload = upload
        self.remote_hits: set[str] = set()  # action keys whose result came from the remote

    def __getattr__(self, name):  # tmp_dir, lock(), gc(), stats() ... are the local store's
        return getattr(self.local, name)

    # ----- CAS -------------------------------------------------------------------------------------
    def has_blob(self, digest: Digest) -> bool:
        return self.local.has_blob(digest) or self.remote.has_blob(digest)

    def get_blob(self, digest: Digest) -> bytes | None:
        data = self.local.get_blob(digest)
        if data is None:
            data = self.remote.get_blob(digest)  # verified by the remote store
            if data is not None:
                self.local.put_blob(data)
        return data

    def open_blob(self, digest: Digest):
        reader = self.local.open_blob(digest)
        if reader is not None:
            return reader
        return self.local.open_blob(digest) if self._bring_local(digest) else None

    def _bring_local(self, digest: Digest) -> bool:
        """Bring a blob the local store lacks from the remote: streamed to a temp file in the local
        store's tmp/ (verified by the remote store as it arrives), then moved into the CAS."""
        fd, tmp = self.local._temp()
        os.close(fd)
        try:
            if not self.remote.fetch_file(digest, Path(tmp)):
                return False
            self.local.put_file(Path(tmp), move=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return True

    def put_blob(self, data: bytes, *, fsync: bool = True) -> Digest:
        digest = self.local.put_blob(data, fsync=fsync)
        if self.upload:
            self.remote.put_blob(data)
        return digest

    def put_file(self, path: Path, *, move: bool = False, fsync: bool = True) -> Digest:
        digest = self.local.put_file(path, move=move, fsync=fsync)
        if self.upload:
            self.remote.put_file(self.local.blob_path(digest))
        return digest

    def put_at(self, dir_fd: int, name: str, *, move: bool = False, fsync: bool = True,
               known: tuple | None = None) -> Digest:
        digest = self.local.put_at(dir_fd, name, move=move, fsync=fsync, known=known)
        if self.upload:
            self.remote.put_file(self.local.blob_path(digest))
        return digest

    def fetch_file(self, digest: Digest, dest: Path, *, dir_fd: int | None = None, mode: int | None = None) -> bool:
        if self.local.fetch_file(digest, dest, dir_fd=dir_fd, mode=mode):
            return True
        # into the local store first, then dest from there like any local blob
        return self._bring_local(digest) and self.local.fetch_file(digest, dest, dir_fd=dir_fd, mode=mode)

    def fetch_new_file(self, digest: Digest, name: str, dir_fd: int, mode: int) -> bool:
        """LocalStore.fetch_new_file, after bringing the blob from the remote if the local store lacks it."""
        if self.local.fetch_new_file(digest, name, dir_fd, mode):
            return True
        return self._bring_local(digest) and self.local.fetch_new_file(digest, name, dir_fd, mode)

    def prefetch(self, digests) -> None:
        """Bring the blobs of `digests` the local store lacks from the remote in batches, where the
        remote can read many blobs per request (REAPI's BatchReadBlobs); a no-op otherwise. What
        is not fetched here is fetched one by one by fetch_file, as before."""
        prefetch = getattr(self.remote, "prefetch", None)
        if prefetch is None:
            return
        missing = [d for d in set(digests) if not self.local.has_blob(d)]
        if not missing:
            return
        prefetch(missing, lambda _digest, data: self.local.put_blob(data, fsync=False))
        self.local.flush()

    def flush(self) -> None:
        self.local.flush()

    # ----- action cache ----------------------------------------------------------------------------
    def get_action_result(self, key: str) -> ActionResult | None:
        result = self.local.get_action_result(key)
        if result is None:
            result = self.remote.get_action_result(key)
            if result is not None:
                self.remote_hits.add(key)
                self.local.put_action_result(key, result)
        return result

    def put_action_result(self, key: str, result: ActionResult) -> None:
        self.local.put_action_result(key, result)
        if self.upload:
            self.remote.put_action_result(key, result)
