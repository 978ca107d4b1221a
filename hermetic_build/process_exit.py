"""How hb's process ends: as the interpreter would (threads joined, atexit handlers run, output
flushed), but without finalizing the interpreter. Native runtimes that hb's rules load can still
have a thread waiting for the interpreter lock after the call that used them returned (py-rattler's
tokio threads: a script that exits right after a failed solve crashed the finalization in 8 of 200
runs, SIGSEGV or an abort in PyGILState_Release; `hb lock` on an unsolvable environment did not in
300, its error report gives the thread the time, but nothing guarantees that on a loaded machine).
Nothing of hb relies on finalization: files are closed where they are written."""

from __future__ import annotations

import atexit
import os
import sys


def exit_code_of(code) -> int:
    """The status `sys.exit(code)` would give (None: 0; a message: printed, 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def exit_process(code) -> None:
    """End the process with `sys.exit(code)`'s status after everything finalization would have
    waited for: non-daemon threads (and thread pools' workers), atexit handlers, buffered output."""
    status = exit_code_of(code)
    threading = sys.modules.get("threading")
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None:  # an interpreter without it: the ordinary way
        sys.exit(status)
    shutdown()  # what Py_FinalizeEx does first: join non-daemon threads, stop pools' workers
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe (hb query | head): as Python, status 120
            status = status or 120
    os._exit(status)
