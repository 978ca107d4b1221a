"""The archive checks of a build's fetches, in sandboxed helper processes (check_worker.py) that
live as long as hb and serve many fetches each: the untrusted bytes are decompressed and parsed
outside hb's process, in bubblewrap, as the stage does, without paying for a sandbox per package.
A helper sees the cache's tmp/ directory (where the actions' sandboxes are) read-only, serves one
request at a time, and is never reused after it failed to answer. At most one helper per core."""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import threading
from pathlib import Path

import hermetic_build
from hermetic_build.api import ActionFailed

from .stage import python_paths, worker_python

WORKER = Path(__file__).resolve().with_name("check_worker.py")
ARCHIVE = Path(__file__).resolve().with_name("archive.py")
ZIPDIR = Path(__file__).resolve().with_name("zipdir.py")  # archive.py imports it
MAX_HELPERS = max(1, os.cpu_count() or 1)
MAX_ANSWER = 1 << 20  # bytes of one answer line (a refusal's message names one archive entry)
# how long a helper may take to start, and to check one archive: generous (this machine checked 300
# small packages at 1.5 ms each, and decompresses tens of MiB a second), so only a helper that hangs
# (subverted, or a reader that loops) is ended, and the fetch fails instead of waiting for ever
START_SECONDS = 120
CHECK_SECONDS = 120
CHECK_BYTES_PER_SECOND = 4 << 20


class _NoAnswer(Exception):
    pass


class _Helper:
    def __init__(self, command):
        from hermetic_build.api import start_helper

        self.proc = start_helper(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._pending = b""
        if self._read(START_SECONDS) != {"ready": True}:
            self.close()
            raise _NoAnswer("it did not start")

    def ask(self, request: dict, seconds: float) -> dict:
        """Its answer to `request`, within `seconds` (then it is ended)."""
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except (OSError, ValueError) as exc:  # ValueError: its pipe was closed
            raise _NoAnswer(str(exc) or type(exc).__name__) from None
        return self._read(seconds)

    def _line(self, seconds: float) -> bytes:
        """The next line it writes, read from its pipe within `seconds` and MAX_ANSWER bytes: a helper is
        hb's code, but it parses hostile archives, and one made to write without end must not fill hb's
        memory (an answer is some hundred bytes), nor one that never answers hold the build."""
        import select
        import time

        deadline = time.monotonic() + seconds
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._pending:
            if len(self._pending) > MAX_ANSWER:
                self.proc.kill()
                raise _NoAnswer(f"it wrote an answer of more than {MAX_ANSWER:,} bytes: {self._pending[:200]!r}")
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                raise _NoAnswer(f"it did not answer within {seconds:.0f} s")
            if not select.select([fd], [], [], left)[0]:
                continue
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError as exc:
                raise _NoAnswer(str(exc)) from None
            if not chunk:
                raise _NoAnswer(self.ended())
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        if len(line) > MAX_ANSWER:
            self.proc.kill()
            raise _NoAnswer(f"it wrote an answer of more than {MAX_ANSWER:,} bytes: {line[:200]!r}")
        return line

    def _read(self, seconds: float) -> dict:
        if self.proc.stdout.closed:
            raise _NoAnswer("its pipe was closed")
        line = self._line(seconds)
        try:
            reply = json.loads(line)
        except ValueError:
            raise _NoAnswer(f"it wrote {line[:200]!r}") from None
        if not isinstance(reply, dict):
            raise _NoAnswer(f"it wrote {line[:200]!r}")
        return reply

    def end_input(self) -> None:
        """Close its stdin: it exits once it has answered what it was asked."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def ended(self) -> str:
        """Why the helper stopped answering: its exit status and the end of what it wrote to stderr."""
        self.close()
        err = self.proc.stderr.read(1 << 16)[-2000:].decode(errors="replace").strip() if self.proc.stderr else ""
        return f"exit status {self.proc.returncode}" + (f": {err}" if err else "")

    def close(self) -> None:
        self.end_input()
        try:
            self.proc.stdout.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class _Pool:
    """The idle helpers for one cache tmp/ directory (the one they can read)."""

    def __init__(self, visible: str):
        self.visible = visible
        self.idle: list[_Helper] = []
        self.count = 0
        self.ready = threading.Condition()
        self.broken = ""  # why a helper could not start: the next fetches fail at once, for the same reason
        self.started_early = False

    def take(self, helper_command) -> _Helper:
        with self.ready:
            while not self.idle and self.count >= MAX_HELPERS and not self.broken:
                self.ready.wait()
            if self.broken:
                raise _NoAnswer(self.broken)
            while self.idle:
                helper = self.idle.pop()
                if helper.proc.poll() is None:
                    return helper
                helper.close()  # ended while idle (killed): its pipes closed, replaced below
                self.count -= 1
            self.count += 1
        try:
            return _Helper(helper_command(self._argv(), self._read_only()))
        except (_NoAnswer, OSError) as exc:
            with self.ready:
                self.broken = str(exc)
            self._forget()
            raise
        except BaseException:
            self._forget()
            raise

    def start_early(self, helper_command) -> None:
        """Start every helper the pool may have, each on a thread of its own, without waiting: the
        first fetch of a build calls this before its download, so the helpers (a sandbox and an
        interpreter each, ~0.1 s) are ready when the first archives arrive. Once per pool; a helper
        that does not start marks the pool broken, as in take()."""
        with self.ready:
            if self.started_early:
                return
            self.started_early = True
            wanted, self.count = MAX_HELPERS - self.count, MAX_HELPERS

        def start() -> None:
            try:
                helper = _Helper(helper_command(self._argv(), self._read_only()))
            except (_NoAnswer, OSError) as exc:
                with self.ready:
                    self.broken = str(exc)
                self._forget()
            except BaseException:
                self._forget()
                raise
            else:
                self.give_back(helper)

        for _ in range(max(0, wanted)):
            threading.Thread(target=start, name="hb-archive-check-start", daemon=True).start()

    def give_back(self, helper: _Helper) -> None:
        with self.ready:
            self.idle.append(helper)
            self.ready.notify()

    def discard(self, helper: _Helper) -> None:
        helper.close()
        self._forget()

    def _forget(self) -> None:
        with self.ready:
            self.count -= 1
            self.ready.notify()

    def _argv(self) -> list[str]:
        sys_path, _ = python_paths((str(WORKER),))
        code_root = str(Path(hermetic_build.__file__).resolve().parent.parent)
        setup = {"sys_path": [code_root, *sys_path], "archive": str(ARCHIVE)}
        # -I: no PYTHON* variables, no user site, no working directory on sys.path
        return [worker_python(), "-I", str(WORKER), json.dumps(setup)]

    def _read_only(self) -> tuple[str, ...]:
        _, exposed = python_paths((str(WORKER), str(ARCHIVE), str(ZIPDIR),
                                   str(Path(hermetic_build.__file__).resolve().parent)))
        return (*exposed, self.visible)

    def close(self) -> None:
        with self.ready:
            helpers, self.idle = self.idle, []
        for helper in helpers:  # every helper told first, then each waited for: they end at once
            helper.end_input()
        for helper in helpers:
            helper.close()


_pools: dict[str, _Pool] = {}
_pools_lock = threading.Lock()


def _pool_of(execution) -> _Pool:
    local = getattr(execution.store, "local", execution.store)
    visible = os.path.realpath(local.tmp_dir)
    with _pools_lock:
        pool = _pools.get(visible)
        if pool is None:
            pool = _pools[visible] = _Pool(visible)
    return pool


def start_checkers(execution) -> None:
    """Have the helpers that check_archive_sandboxed uses start now, in the background (a fetch calls
    this before it downloads)."""
    _pool_of(execution).start_early(execution.helper_command)


def check_archive_sandboxed(execution, path: Path, filename: str, max_ratio: int, kind: str = "conda") -> None:
    """archive.check_archive (kind "conda") or archive.check_wheel (kind "wheel") of `path` (a file in
    this action's sandbox) in a sandboxed helper; raises ActionFailed with the check's message (and
    hint) when the archive is refused."""
    pool = _pool_of(execution)
    try:
        helper = pool.take(execution.helper_command)
    except (_NoAnswer, OSError) as exc:
        raise ActionFailed(f"{filename}: the sandboxed archive check could not start ({exc})") from None
    try:
        seconds = CHECK_SECONDS + os.path.getsize(path) / CHECK_BYTES_PER_SECOND
        reply = helper.ask({"path": os.path.realpath(path), "filename": filename, "max_ratio": max_ratio,
                            "kind": kind}, seconds)
    except _NoAnswer as exc:
        pool.discard(helper)
        raise ActionFailed(f"{filename}: the sandboxed archive check ended without an answer ({exc})") from None
    pool.give_back(helper)
    if reply.get("ok") is not True:
        hint = reply.get("hint")
        raise ActionFailed(str(reply.get("message") or f"{filename}: refused by the archive check"),
                           hint=hint if isinstance(hint, str) else None)


@atexit.register
def _close_all() -> None:
    for pool in list(_pools.values()):
        pool.close()
