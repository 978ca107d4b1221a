"""Run untrusted evaluation (BUILD files) in a forked child under a memory and a time budget.

Starlark offers no memory limit, and an allocation that fails inside the evaluator (Rust) aborts
the whole process. So evaluation runs in child processes: fork one per share of the work (one per
core, run_guarded_all), cap each one's address space with RLIMIT_AS, and stream its results back
over a pipe as length-prefixed pickles. Each child announces each unit of work (`begin(name)`); the
parent kills a child when one unit outlives its time budget, and turns any death of a child (memory
exhausted, stack overflow, a panic) into a `GuardFailure` that names the unit being evaluated. The
children's stdout and stderr are captured, so nothing they print reaches hb's output.
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import pickle
import resource
import select
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

_HEADER = struct.Struct("!Q")
_BEGIN, _MESSAGE, _DONE, _FATAL = range(4)
# The child stops a Starlark loop itself at the budget (with the file and line); the parent's hard
# kill is the backstop for what no loop check reaches (one huge builtin call, a glob of a huge tree).
_KILL_GRACE_S = 2.0


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    timeout_s: float


@dataclass(frozen=True)
class GuardFailure(Exception):
    """The child died or ran out of time while evaluating `unit`."""

    reason: str  # "timeout", "memory", "crash"
    unit: str | None
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason} while evaluating {self.unit}: {self.detail}"


class Channel:
    """The child's end: announce units of work and send results."""

    def __init__(self, fd: int):
        self._fd = fd

    def begin(self, unit: str | None) -> None:
        """Start the clock on `unit` (None: between units, no budget runs)."""
        self._send(_BEGIN, unit)

    def send(self, message) -> None:
        self._send(_MESSAGE, message)

    def _send(self, kind: int, payload) -> None:
        data = pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL)
        _write_all(self._fd, _HEADER.pack(len(data)) + data)


def run_guarded(work: Callable[[Channel], None], limits: Limits, on_message: Callable[[object], None]) -> None:
    """Run `work(channel)` in a forked child; call `on_message` in this process for each message the
    child sends, as it arrives. Raises GuardFailure when the child does not finish cleanly."""
    run_guarded_all([work], limits, on_message)


def run_guarded_all(works: list[Callable[[Channel], None]], limits: Limits,
                    on_message: Callable[[object], None]) -> None:
    """Run each of `works` in its own forked child, all at once (one per core): each child has the
    whole budget (memory, time per unit) to itself. `on_message` sees the messages of every child in
    this process, as they arrive (one child's in its order, interleaved with the others'). The first
    child that does not finish cleanly raises GuardFailure, and the others are stopped."""
    sys.stdout.flush()
    sys.stderr.flush()
    children: list[_Child] = []
    try:
        for work in works:
            read_fd, write_fd = os.pipe()
            captured = tempfile.TemporaryFile()  # noqa: SIM115 - closed below, after the child is gone
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                for other in children:  # the other children's ends are not this child's business
                    os.close(other.read_fd)
                _child(work, limits, read_fd, write_fd, captured)
            os.close(write_fd)
            children.append(_Child(pid, read_fd, captured))
        _parent(children, limits, on_message)
    finally:
        for child in children:
            if child.status is None:  # hb or another child failed (or was interrupted): stop it
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
            os.close(child.read_fd)
            child.captured.close()


# ----- child ------------------------------------------------------------------------------------
def _child(work, limits: Limits, read_fd: int, write_fd: int, captured) -> None:  # pragma: no cover
    code = 0
    try:
        os.close(read_fd)
        _die_with_parent()
        os.dup2(captured.fileno(), 1)
        os.dup2(captured.fileno(), 2)
        sys.stdout = sys.stderr = open(captured.fileno(), "w", closefd=False)  # noqa: SIM115
        faulthandler.disable()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        # A Rust panic that prints a backtrace allocates; out of memory, that deadlocks instead of
        # raising PanicException (measured: a hang until the kill, instead of an error in 0.4 s).
        os.environ["RUST_BACKTRACE"] = os.environ["RUST_LIB_BACKTRACE"] = "0"
        _limit_memory(limits.memory_mb)
        channel = Channel(write_fd)
        try:
            work(channel)
        except MemoryError:
            channel._send(_FATAL, ("memory", "out of memory"))
        except BaseException as exc:  # noqa: BLE001 - a panic or a bug: report it, never hang the parent
            import traceback

            text = f"{type(exc).__name__}: {exc}"
            if "out of memory" in text or "memory allocation" in text:  # a Rust allocation panic
                channel._send(_FATAL, ("memory", text))
            else:
                channel._send(_FATAL, ("crash", f"{text}\n{traceback.format_exc()}"))
        else:
            channel._send(_DONE, None)
    except BaseException:  # noqa: BLE001 - the parent sees the missing DONE and reports a crash
        code = 70
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
        os._exit(code)


def _limit_memory(memory_mb: int) -> None:
    """Cap the address space at what the process maps now plus the budget."""
    if memory_mb <= 0:
        return
    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * resource.getpagesize()
    except OSError:  # not Linux: no /proc; RLIMIT_AS is not enforced there anyway
        return
    limit = mapped + (memory_mb << 20)
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL if hb dies, so a runaway evaluation never outlives it."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ----- parent -----------------------------------------------------------------------------------
class _Child:
    """One guarded child as the parent sees it: its pipe, what it printed, what it is doing."""

    def __init__(self, pid: int, read_fd: int, captured):
        self.pid = pid
        self.read_fd = read_fd
        self.captured = captured
        self.status: int | None = None  # as subprocess reports it: negative = killed by that signal
        self.buffer = bytearray()
        self.unit: str | None = None  # the unit it is evaluating (None: between units)
        self.started = time.monotonic()
        self.fatal = None
        self.done = False
        self.closed = False  # its end of the pipe is closed: everything it sent has been read

    def wait(self) -> int:
        if self.status is None:
            _, raw = os.waitpid(self.pid, 0)
            self.status = -os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else os.WEXITSTATUS(raw)
        return self.status

    def deadline(self, limits: Limits) -> float | None:
        return self.started + limits.timeout_s + _KILL_GRACE_S if self.unit is not None else None

    def receive(self, chunk: bytes, on_message) -> None:
        """Hand every complete message in what has arrived to `on_message`; keep the rest."""
        buffer = self.buffer
        buffer += chunk
        offset = 0
        while len(buffer) - offset >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, offset)
            if len(buffer) - offset - _HEADER.size < size:
                break
            start = offset + _HEADER.size
            kind, payload = _loads(bytes(buffer[start:start + size]))
            offset = start + size
            if kind == _BEGIN:
                self.unit, self.started = payload, time.monotonic()
            elif kind == _MESSAGE:
                on_message(payload)
            elif kind == _DONE:
                self.done = True
            else:
                self.fatal = payload
        del buffer[:offset]

    def finish(self) -> None:
        """After its pipe closed: return if it finished cleanly, raise GuardFailure otherwise."""
        status = self.wait()
        if self.done and status == 0:
            return
        unit = self.unit
        if self.fatal is not None:
            raise GuardFailure(self.fatal[0], unit, self.fatal[1])
        output = _read_captured(self.captured)
        if "memory allocation of" in output or "MemoryError" in output or "out of memory" in output.lower():
            raise GuardFailure("memory", unit, _last_line(output))
        if "overflowed its stack" in output or status == -signal.SIGSEGV:
            raise GuardFailure("crash", unit, "the evaluator overflowed its stack (an expression nested too deeply?)")
        cause = f"killed by signal {signal.Signals(-status).name}" if status < 0 else f"exited with status {status}"
        raise GuardFailure("crash", unit, f"{cause}" + (f": {_last_line(output)}" if output.strip() else ""))


def _parent(children: list[_Child], limits: Limits, on_message) -> None:
    running = {child.read_fd: child for child in children}
    while running:
        now = time.monotonic()
        deadlines = {c: d for c in running.values() if (d := c.deadline(limits)) is not None}
        late = next((c for c, d in deadlines.items() if d <= now), None)
        if late is not None:  # checked on every wake-up: the other children may keep sending
            os.kill(late.pid, signal.SIGKILL)
            late.wait()
            raise GuardFailure("timeout", late.unit, f"still running after {limits.timeout_s:g} s")
        wait = min(deadlines.values()) - now if deadlines else None
        ready, _, _ = select.select(list(running), [], [], wait)
        for fd in ready:
            child = running[fd]
            chunk = os.read(fd, 1 << 20)
            if chunk:
                child.receive(chunk, on_message)
                continue
            del running[fd]
            child.finish()
    for child in children:
        _replay(child.captured)


def _loads(data: bytes):
    gc_was_enabled = gc.isenabled()
    gc.disable()  # unpickling many small objects triggers collections that find nothing (2.5x slower)
    try:
        return pickle.loads(data)
    finally:
        if gc_was_enabled:
            gc.enable()



def _read_captured(captured) -> str:
    captured.seek(0)
    return captured.read(1 << 20).decode(errors="replace")


def _replay(captured) -> None:
    text = _read_captured(captured)
    if text:
        from .redact import for_terminal

        sys.stderr.write(for_terminal(text))  # a BUILD file's print(): as everything hb prints


def _last_line(output: str) -> str:
    """The line that says what happened, without a Rust backtrace."""
    for line in output.splitlines():
        line = line.strip()
        if line.startswith(("memory allocation of", "thread '")) or "overflowed its stack" in line:
            return line
    lines = [ln for ln in output.splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""
