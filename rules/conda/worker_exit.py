"""How the sandboxed workers that run py-rattler end (stage_worker.py, channel_worker.py): standalone,
the standard library only, bound into their sandboxes next to them. hb's own process ends the same
way through hermetic_build/process_exit.py, which the workers cannot import (hb is not on their path)
and which also joins threads and runs atexit handlers (a worker registers none)."""

from __future__ import annotations

import os
import sys


def exit_without_finalizing(code: int):
    """End the process once everything is written, without finalizing the interpreter. py-rattler's
    runtime (tokio threads through pyo3-async-runtimes) hands an awaited result back from a thread that
    may still be waiting for the interpreter lock when the main thread returns; a finalization then
    makes that thread exit inside Rust code, which crashed the stage worker in 7 and 11 of two sets of
    200 runs (SIGSEGV, or an abort in PyGILState_Release; py-rattler 0.28, Python 3.11). Every file a
    worker writes is closed by then; only the standard streams may still hold buffered output."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe: the exit status still says what happened
            code = code or 1
    os._exit(code)


def run_and_exit(main) -> None:
    """`main(sys.argv[1:])` as a script's entry: an unexpected error prints its traceback, as the
    interpreter would, and exits 1; then exit_without_finalizing."""
    try:
        code = main(sys.argv[1:])
    except BaseException:  # noqa: BLE001 - Ctrl-C included: the process still must not finalize
        import traceback

        traceback.print_exc()
        code = 1
    exit_without_finalizing(code)
