"""Write the pickle of a big object from a forked child while this process goes on.

Pickling the analysis of 50,000 targets takes most of a second of CPU, all of it holding the GIL,
so a thread cannot overlap it. A forked child sees the same objects (copy-on-write, nothing is
copied up front) and pickles them on another core while hb goes on with the command. hb waits for
its writers before it exits (atexit) and before it reads a file one of them writes, so the file is
there exactly when it would have been had hb written it itself. Where fork is missing, or other
threads run (the child would inherit the locks they hold, held forever), it writes in place.
"""

from __future__ import annotations

import atexit
import gc
import os
import pickle
import signal
import threading
from collections.abc import Callable
from pathlib import Path

_writers: dict[str, int] = {}  # path -> pid of the child writing it


def write_pickle(path: Path, value, write: Callable[[Path, bytes], None]) -> None:
    """`write(path, pickle of value)`, in a forked child when that is safe (see the module)."""
    wait_for(path)  # two writes of one file: the later one wins, as if written in place
    if not hasattr(os, "fork") or threading.active_count() > 1:
        write(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        return
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, which never returns
        code = 1
        try:
            gc.disable()  # a collection would touch (and so copy) every page of the parent's heap
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops hb; hb waits for this write
            write(path, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
            code = 0
        finally:
            os._exit(code)  # never hb's atexit handlers or buffered output twice
    if not _writers:
        atexit.register(wait_for_all)
    _writers[str(path)] = pid


def wait_for(path: Path) -> None:
    """Return once no child of this process is writing `path` any more."""
    pid = _writers.pop(str(path), None)
    if pid is not None:
        _reap(pid)


def wait_for_all() -> None:
    for path in list(_writers):
        wait_for(Path(path))


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # already reaped
        pass
