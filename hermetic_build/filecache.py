"""Digests of workspace source files, cached by stat so a no-op build hashes nothing."""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import time
from pathlib import Path

from .digest import Digest, digest_file

# A file modified within this many seconds of being hashed might change again within the
# timestamp granularity without its stat changing ("racily clean"); such entries are not kept.
RACY_SECONDS = 2.0


class FileDigestCache:
    def __init__(self, path: Path):
        self.path = path
        self._entries: dict[str, tuple] = {}
        self._dirty = False
        from .statefile import open_own_file

        with contextlib.suppress(FileNotFoundError, EOFError, pickle.UnpicklingError, ValueError, TypeError):
            f = open_own_file(path)  # a pickle: only one this user wrote (statefile.py)
            if f is not None:
                with f:
                    self._entries = pickle.load(f)

    def digest(self, path: Path) -> Digest:
        key = str(path)
        st = os.stat(path)
        stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        cached = self._entries.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        digest = digest_file(path)
        if time.time() - st.st_mtime > RACY_SECONDS:
            self._entries[key] = (stamp, digest)
            self._dirty = True
        return digest

    def save(self) -> None:
        if not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # a name of this process (leftovers.py): what a build killed mid-save leaves, the next one sweeps
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.hb-tmp-{os.getpid()}-")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(self._entries, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self.path)
        self._dirty = False
