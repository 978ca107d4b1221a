"""The no-op shortcut: a build whose inputs did not change is answered from a record of the last
successful build, before analysis and before any per-action work.

After a build succeeds, `save()` writes what that build depended on and what it left behind:
the stat of every file analysis read (hermetic.toml, BUILD and .bzl files, sources rules read,
hb's and the rules' own code), the package scans of recursive patterns and the results of every
glob(), the stat of every source file an action of the build reads, the values of the environment
variables the actions' keys include, the stat of every output it published under hb-out/, and
the stat of what changes when the cache loses entries (LocalStore.eviction_signals: hb replaces a
file whenever it deletes a blob or an action-cache entry, and the cas/ and ac/ directories
themselves). `why_not()` compares all of that with the world as it is now; any difference means
"not a no-op", and the build runs the ordinary way, which then writes a new record.
A file that did not exist is recorded as absent, and its appearing is a change too.

A stamp is (size, mtime_ns, ctime_ns, inode, device). A file changed within RACY_SECONDS of the
record being written could change again without its stamp changing (timestamp granularity), so a
record whose workspace files are that fresh is not written ("racily clean", as git calls it):
the next build runs the ordinary way and records then.

Only one record is kept per workspace and cache, and every build that does not take the
shortcut deletes it before doing anything else, so a build that fails or is killed half-way
leaves no record behind. Builds with a remote cache never take the shortcut (their results may
need uploading or their entries may live remotely).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .filecache import RACY_SECONDS

RECORD_NAME = "noop.pickle"
FORMAT = 1


def stamp(path: str, follow: bool = True):
    """(size, mtime_ns, ctime_ns, inode, device) of `path`, or None if it cannot be stat'ed."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)


@dataclass(frozen=True)
class Request:
    """What identifies a build for the shortcut: the same patterns, from the same package (hb's
    version and the code of hb and the rules are checked beside it)."""

    patterns: tuple[str, ...]
    current_package: str


@dataclass(frozen=True)
class NoopRecord:
    version: tuple
    request: Request
    code: tuple  # ((path, stamp), ...) of hb's and the rules' .py files, as Session.code_stamp lists them
    env: tuple  # ((name, value or None), ...): the allow-listed variables the actions' keys include
    scans: tuple  # ((package, (packages found, ...)), ...) of recursive patterns
    globs: tuple  # GlobCall, ...: every glob() analysis ran, with its result
    followed: tuple  # (path, ...) workspace files and sources, stat'ed through links
    followed_stamps: tuple
    published: tuple  # (path, ...) outputs published under hb-out/, lstat'ed
    published_stamps: tuple
    cache: tuple  # (path, ...) what changes when cache entries are deleted (LocalStore.eviction_signals)
    cache_stamps: tuple
    summary: dict  # {"targets": ..., "recorded": ..., "cached": n}: what the build reported


def record_path(state_dir: Path) -> Path:
    return state_dir / RECORD_NAME


def forget(state_dir: Path) -> None:
    """Delete the record: called before any build that does not take the shortcut."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(record_path(state_dir))


def load(state_dir: Path) -> NoopRecord | None:
    from .statefile import open_own_file

    f = open_own_file(record_path(state_dir))  # a pickle: only one this user wrote (statefile.py)
    if f is None:
        return None
    try:
        with f:
            record = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError, TypeError,
            IndexError):
        return None
    if not isinstance(record, NoopRecord) or record.version != (FORMAT, __version__):
        return None
    return record


def why_not(record: NoopRecord, request: Request, code: list, environ, scan, glob_ok) -> str | None:
    """None when nothing the record depends on changed; otherwise what changed first.
    `scan(package)` lists the packages under `package` now; `glob_ok(globs)` re-runs the globs."""
    if record.request != request:
        return "another request"
    for name, value in record.env:
        if environ.get(name) != value:
            return f"environment variable {name} changed"
    if tuple(code) != record.code:
        return "hb's or the rules' code changed"
    for path, want in zip(record.followed, record.followed_stamps):
        if stamp(path) != want:
            return f"{path} changed"
    for package, found in record.scans:
        if tuple(scan(package)) != found:
            return f"packages under //{package} changed"
    if not glob_ok(record.globs):
        return "a glob() result changed"
    for path, want in zip(record.published, record.published_stamps):
        if stamp(path, follow=False) != want:
            return f"{path} changed"
    for path, want in zip(record.cache, record.cache_stamps):
        if stamp(path, follow=False) != want:
            return f"cache entries were deleted ({path} changed)"
    return None


def save(state_dir: Path, *, request: Request, code: list, env: dict, scans: dict, globs, followed, published,
         cache, summary: dict) -> bool:
    """Write the record of a build that just succeeded. Returns False (and writes nothing) when a
    workspace file is too fresh to be trusted by its stamp, or a published output is missing."""
    followed, published, cache = sorted(set(followed)), sorted(set(published)), sorted(set(cache))
    followed_stamps = [stamp(p) for p in followed]
    published_stamps = [stamp(p, follow=False) for p in published]
    cache_stamps = [stamp(p, follow=False) for p in cache]
    if None in published_stamps:
        return False
    # Workspace files (and outputs under hb-out/, which a user may edit too) changed within
    # RACY_SECONDS are not trusted. Cache entries change only by replacement (a new inode).
    racy_after = time.time_ns() - int(RACY_SECONDS * 1e9)
    workspace_stamps = (*followed_stamps, *published_stamps, *(s for _p, s in code))
    if any(s is not None and max(s[1], s[2]) > racy_after for s in workspace_stamps):
        return False
    record = NoopRecord((FORMAT, __version__), request, tuple(code), tuple(sorted(env.items())),
                        tuple(sorted((p, tuple(found)) for p, found in scans.items())), tuple(globs),
                        tuple(followed), tuple(followed_stamps), tuple(published), tuple(published_stamps),
                        tuple(cache), tuple(cache_stamps), summary)
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=f".{RECORD_NAME}.hb-tmp-{os.getpid()}-")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(record, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, record_path(state_dir))
    return True
