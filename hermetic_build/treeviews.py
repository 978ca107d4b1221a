"""Read-only views of trees: a tree materialised once under the cache's views/ directory and bound
read-only into the sandbox of every action that reads it as a whole (env_run's environment, an
image's root filesystem), instead of being copied into each action's execution root.

Layout: <cache>/views/<blake3>-<size>/ holds `tree/` (the tree, recreated by materialize_tree: verified
blob by blob, nothing written through a link, permission bits only) and `identity` (a BLAKE3 over the
path, mode, inode, size, mtime and ctime of every entry of `tree/`, taken right after it was made).

A view is made in the cache's tmp/ under a name of this process and renamed into place whole, so a
view that exists is complete. Before every use its identity is taken again and compared: a file
written, replaced, added, removed or re-moded since (by anyone: ctime cannot be set back) makes it a
miss; the view is then moved aside into tmp/ and removed, and a new one is made. Actions see a view
only through bubblewrap's read-only binds, so an action can never change one. gc and `clean
--expunge` remove views (they are re-made from the CAS when needed)."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from pathlib import Path

from blake3 import blake3

from .digest import Digest
from .leftovers import remove_tree, store_temp_prefix
from .tree import materialize_tree

VIEWS = "views"
IDENTITY = "identity"
TREE = "tree"
_VIEW_NAME = re.compile(r"[0-9a-f]{64}-[0-9]{1,20}")


class UnreadableView(Exception):
    """The materialised tree cannot be listed (e.g. a directory whose mode is 0o000): it cannot be
    checked before use, so it is not kept as a view."""


class TreeViews:
    """The views of one cache. `store` reads the blobs (a tiered store fetches remote ones);
    `root` is the cache's directory, `tmp_dir` its tmp/ (same filesystem: views are renamed in)."""

    def __init__(self, store, root: Path, tmp_dir: Path, threads: int = 8):
        self.store = store
        self.dir = Path(root) / VIEWS
        self.tmp_dir = Path(tmp_dir)
        self.threads = threads

    def view(self, digest: Digest) -> Path | None:
        """The directory holding the tree `digest`, read-only for actions (bind it with
        bubblewrap's --ro-bind; never write into it). None when the tree cannot be kept as a view
        (the caller then copies it into the execution root as before)."""
        name = f"{digest.hash}-{digest.size}"
        final = self.dir / name
        try:
            recorded = (final / IDENTITY).read_text()
        except (FileNotFoundError, NotADirectoryError):
            recorded = None
        except OSError:
            recorded = ""
        if recorded is not None:
            try:
                if recorded == identity(final / TREE):
                    return final / TREE
            except (OSError, UnreadableView):
                pass
            self._discard(final)
        return self._make(digest, final)

    def _make(self, digest: Digest, final: Path) -> Path | None:
        self.dir.mkdir(parents=True, exist_ok=True)
        temp = self.tmp_dir / f"{store_temp_prefix()}{secrets.token_hex(8)}"
        os.mkdir(temp, 0o700)
        try:
            materialize_tree(self.store, digest, temp / TREE, threads=self.threads)
            try:
                stamp = identity(temp / TREE)
            except (OSError, UnreadableView):
                return None
            (temp / IDENTITY).write_text(stamp)
            try:
                os.rename(temp, final)
            except OSError:  # another build made it first (a complete view): use theirs
                with contextlib.suppress(OSError, UnreadableView):
                    if (final / IDENTITY).read_text() == identity(final / TREE):
                        return final / TREE
                return None
            temp = None
            return final / TREE
        finally:
            if temp is not None:
                remove_tree(temp)

    def _discard(self, final: Path) -> None:
        """Move a stale or damaged view aside (atomic) and remove it. Only a real directory named
        like a view, inside views/, is ever touched."""
        try:
            if not stat.S_ISDIR(os.lstat(final).st_mode):
                return
        except FileNotFoundError:
            return
        aside = self.tmp_dir / f"{store_temp_prefix()}{secrets.token_hex(8)}"
        try:
            os.rename(final, aside)
        except OSError:
            return
        remove_tree(aside)

    def remove_all(self) -> None:
        """Remove every view (gc; the caller holds the cache exclusively)."""
        try:
            entries = list(os.scandir(self.dir))
        except FileNotFoundError:
            return
        for entry in entries:  # only names of views: anything else in views/ is not hb's
            if _VIEW_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                self._discard(Path(entry.path))


def identity(root: Path) -> str:
    """BLAKE3 over (path, mode, inode, size, mtime, ctime) of every entry under root, links not
    followed, in a fixed order. Any change to the tree since it was taken changes it."""
    h = blake3()
    stack = [(str(root), "")]
    while stack:
        path, rel = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError as exc:
            raise UnreadableView(str(exc)) from exc
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            sub = f"{rel}/{entry.name}"
            h.update(f"{sub}\0{st.st_mode:o} {st.st_ino} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns}\n"
                     .encode(errors="surrogateescape"))
            if stat.S_ISDIR(st.st_mode):
                stack.append((entry.path, sub))
    st = os.lstat(root)
    h.update(f".\0{st.st_mode:o} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}\n".encode())
    return h.hexdigest()
