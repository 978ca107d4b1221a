"""Fetching one conda package (or wheel), keyed by its sha256: http(s) (over kept-alive connections,
see connections.py) or file:// (a regular file only), retried with backoff, verified while streaming.
A package already in the CAS is never downloaded again. Every download ends: it stops past the size
the lock records (pixi locks do) or else past MAX_DOWNLOAD_BYTES, and a transfer slower on average
than MIN_BYTES_PER_SECOND is given up, so a URL that never ends (file:///dev/zero, an endless or
trickling server) fails instead of filling the disk or hanging."""

from __future__ import annotations

import hashlib
import os
import stat
import time
import urllib.parse

from blake3 import blake3

from hermetic_build.api import ActionFailed, Digest, IntegrityError, MissingBlob, lookup_tree, register_action_kind

from .archive import DEFAULT_MAX_UNPACK_RATIO
from .checker import check_archive_sandboxed, start_checkers

CHUNK = 1 << 20
RETRIES = 4
BACKOFF_SECONDS = 0.25
TIMEOUT_SECONDS = 60
# a package or wheel whose lock records no size is cut off past this many bytes (the largest
# conda packages are a few GiB): generous, but a URL that never ends cannot fill the disk
MAX_DOWNLOAD_BYTES = 32 << 30
# after TIMEOUT_SECONDS, a download that averages less than this is given up (and retried): a server
# that trickles a byte now and then would otherwise hold the fetch for ever
MIN_BYTES_PER_SECOND = 16 << 10


class _Mismatch(Exception):
    pass


class _TooLarge(Exception):
    """More bytes came (or were announced) than the package may have."""


def _open_regular(path: str, url: str):
    """A file:// package, opened without blocking (a FIFO would wait for a writer) and accepted only
    when it is a regular file (through a symbolic link is fine: local channels use them): a lock
    names packages, never a device, a FIFO or a directory, whose reads may never end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a device, FIFO or socket"
            raise ActionFailed(f"{url} is {kind}, not a package file: a lock's file:// URL must name a regular file",
                               hint="fix the URL in the lock (or re-lock the environment)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open(url: str, limit: int):
    from urllib.request import url2pathname  # here, not at import: a build that fetches nothing

    from . import connections  # never loads the HTTP stack
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return _open_regular(url2pathname(parsed.path), url)
    if parsed.scheme not in ("http", "https"):
        raise ActionFailed(f"unsupported URL scheme in {url} (use http, https or file)")
    source = connections.get(url, TIMEOUT_SECONDS)  # a kept-alive connection of this thread
    length = getattr(source, "length", None)
    if length is not None and length > limit:
        source.close()  # not read: the connection is closed
        raise _TooLarge(f"the server announces {length} bytes")
    return source


def _check_rate(size: int, started: float) -> None:
    elapsed = time.monotonic() - started
    if elapsed > TIMEOUT_SECONDS + size / MIN_BYTES_PER_SECOND:
        raise TimeoutError(f"{size} bytes in {elapsed:.0f} s, slower than {MIN_BYTES_PER_SECOND >> 10} KiB/s "
                           f"on average after the first {TIMEOUT_SECONDS} s")


def _download(url: str, dest: str, expected: str, algorithm: str = "sha256",
              limit: int = MAX_DOWNLOAD_BYTES) -> tuple[Digest, str]:
    """Stream url to dest, hashing as it goes; raise _Mismatch if the bytes are not the package,
    _TooLarge past `limit` bytes (at most `limit` are written). Returns (BLAKE3 digest, sha256 hex):
    an md5-pinned package learns its sha256 here."""
    from http.client import IncompleteRead  # here, not at import: a build that fetches nothing

    sha, b3, size = hashlib.sha256(), blake3(), 0
    md5 = hashlib.md5(usedforsecurity=False) if algorithm == "md5" else None
    source = _open(url, limit)
    read = getattr(source, "read1", source.read)  # one socket read at a time: the rate check sees a trickle
    started = time.monotonic()
    with source, open(dest, "wb") as out:
        expected_length = getattr(source, "length", None)
        while chunk := read(CHUNK):
            size += len(chunk)
            if size > limit:
                raise _TooLarge(f"more than {limit} bytes came")
            sha.update(chunk)
            b3.update(chunk)
            if md5 is not None:
                md5.update(chunk)
            out.write(chunk)
            _check_rate(size, started)
        if expected_length not in (None, 0) and size < expected_length:
            raise IncompleteRead(b"", expected_length - size)
    actual = (md5 or sha).hexdigest()
    if actual != expected:
        raise _Mismatch(actual)
    return Digest(b3.hexdigest(), size), sha.hexdigest()


def _fetch(execution) -> None:
    ratio = execution.params.get("max_unpack_ratio", DEFAULT_MAX_UNPACK_RATIO)
    start_checkers(execution)  # the check's helpers start while the archive downloads
    # the archive is parsed in a sandboxed helper shared by the build's fetches (checker.py)
    fetch_pinned(execution, check=lambda path, filename: check_archive_sandboxed(execution, path, filename, ratio))


def fetch_pinned(execution, check) -> None:
    """Fetch the one output of an action pinned by params sha256 (or, for a lock that records only
    that, md5) and filename from hints' urls; check(path, filename) raises ActionFailed when the
    verified bytes are not what they claim."""
    from http.client import HTTPException
    from urllib.error import HTTPError, URLError

    params, urls = execution.params, execution.hints.get("urls", [])
    recorded_size = execution.hints.get("size")
    if not isinstance(recorded_size, int) or isinstance(recorded_size, bool) or recorded_size <= 0:
        recorded_size = None
    algorithm = "md5" if "md5" in params else "sha256"
    pin, filename = params[algorithm], params["filename"]
    sha256 = params.get("sha256", "")
    out = execution.execroot / execution.action.outputs[0].path
    if execution.recall_alias(f"{algorithm}:{pin}", out):
        # checked again: the bytes were stored by another action, perhaps under other limits
        check(out, filename)
        if algorithm == "md5":
            execution.recorded["sha256"] = sha256_of_file(out)
        execution.stdout += f"{filename}: already in the cache\n".encode()
        return
    errors = []
    for url in urls:
        for attempt in range(RETRIES):
            try:
                digest, sha256 = _download(url, str(out), pin, algorithm, recorded_size or MAX_DOWNLOAD_BYTES)
            except _TooLarge as exc:
                if os.path.exists(out):
                    os.unlink(out)
                raise _too_large(execution, filename, url, recorded_size, exc) from None
            except _Mismatch as mismatch:
                os.unlink(out)
                # a download that does not match its pin: an integrity error (exit 6, README)
                raise IntegrityError(
                    f"{execution.action.owner}: {filename} from {url} has the wrong content: expected {algorithm} "
                    f"{pin}, got {mismatch.args[0]}; nothing was stored") from None
            except FileNotFoundError:
                errors.append(f"{url}: no such file")
                break
            except HTTPError as exc:
                errors.append(f"{url}: HTTP {exc.code} {exc.reason}")
                if exc.code < 500 and exc.code != 429:
                    break
            except (URLError, HTTPException, ConnectionError, TimeoutError, OSError) as exc:
                errors.append(f"{url}: {type(exc).__name__}: {getattr(exc, 'reason', exc)}")
            else:
                # Checked once per package, here: the stage only ever sees archives that passed.
                check(out, filename)
                execution.remember_alias(f"sha256:{sha256}", digest)
                if algorithm == "md5":
                    execution.remember_alias(f"md5:{pin}", digest)
                    execution.recorded["sha256"] = sha256
                    # the lock pinned md5 only: the sha256 of the verified bytes goes into the build record
                    execution.stdout += f"{filename}: md5 {pin} verified; sha256 {sha256}\n".encode()
                execution.stdout += f"{filename}: {digest.size} bytes from {url} (attempt {attempt + 1})\n".encode()
                return
            if os.path.exists(out):
                os.unlink(out)
            time.sleep(BACKOFF_SECONDS * (2 ** attempt))
    denied = any(": HTTP 401 " in e or ": HTTP 403 " in e for e in errors)
    raise ActionFailed(f"could not fetch {filename} ({algorithm} {pin}):\n  " + "\n  ".join(errors[-6:]),
                       hint="hb sends a private channel's or index's credentials from the file RATTLER_AUTH_FILE names "
                            "or your netrc (`machine HOST login USER password SECRET`), over https, never from a "
                            "URL (README, \"Private channels\")" if denied else None)


def _too_large(execution, filename: str, url: str, recorded_size: int | None, exc: _TooLarge) -> Exception:
    """A download cut off: more than the lock's size is the wrong content (an integrity error, as a
    hash mismatch is); without a recorded size, the fixed cap was reached."""
    where = f"{execution.action.owner}: {filename} from {url}"
    if recorded_size is not None:
        return IntegrityError(f"{where} is larger than the {recorded_size} bytes the lock records ({exc}); "
                              "nothing was stored")
    return ActionFailed(f"{where} is larger than {MAX_DOWNLOAD_BYTES >> 30} GiB ({exc}), the most hb downloads for "
                        "a package whose lock records no size; nothing was stored",
                        hint="check the URL in the lock: it should name one package archive")


def sha256_of_file(path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _from_channel(execution) -> None:
    """A package that a conda_channel target builds, taken from that channel's tree by
    <subdir>/<filename> and accepted only when its sha256 is the one the lock pins. The URL the lock
    records (a file:// path into the hb-out/ of the machine that locked) plays no part, so a committed
    lock works in any checkout on any machine."""
    params, hints = execution.params, execution.hints
    sha256, filename, subdir = params["sha256"], params["filename"], params["subdir"]
    channel = next(f for f in execution.action.inputs if f.path == params["channel"])
    out = execution.execroot / execution.action.outputs[0].path
    where = hints.get("channel_label", channel.path)
    relock = f"run `hb lock {hints['lock_label']}` and commit the lock files" if hints.get("lock_label") else \
        "re-lock the environment"
    try:
        entry = lookup_tree(execution.store, execution.input_tree(channel), f"{subdir}/{filename}")
    except MissingBlob as exc:
        raise ActionFailed(f"{where}: the channel's tree is incomplete in the cache ({exc})") from None
    if entry is None or entry.kind != "file":
        raise ActionFailed(f"{where} builds no {subdir}/{filename}, which the lock pins (sha256 {sha256}): the lock "
                           f"is stale (a recipe changed); {relock}")
    if not execution.store.fetch_file(entry.digest, out):
        raise ActionFailed(f"{where}: {subdir}/{filename} is missing from the cache")
    actual = sha256_of_file(out)
    if actual != sha256:
        os.unlink(out)
        raise ActionFailed(f"{where} builds {subdir}/{filename} with sha256 {actual}, but the lock pins {sha256}: "
                           f"the lock is stale (a recipe or its sources changed); {relock}")
    check_archive_sandboxed(execution, out, filename, params.get("max_unpack_ratio", DEFAULT_MAX_UNPACK_RATIO))
    execution.remember_alias(f"sha256:{sha256}", entry.digest)
    execution.stdout += f"{filename}: from {hints.get('channel_label', channel.path)}\n".encode()


# network; io_bound: on the executor's download threads; 3: paths.json, links and unpack limits checked
register_action_kind("conda.fetch", "3", _fetch, local_only=True, io_bound=True)
register_action_kind("conda.from_channel", "1", _from_channel, stage_inputs=False, local_only=True)  # aliases
