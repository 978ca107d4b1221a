"""hb's process ends as the interpreter would end it, less the finalization (process_exit.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""\
    import atexit, concurrent.futures, sys, threading, time
    from hermetic_build.process_exit import exit_process

    class Finalized:
        def __del__(self):
            print("finalized")  # the module teardown of a finalization would print this

    kept = Finalized()
    out = sys.argv[1]

    def slow(name):
        time.sleep(0.3)
        with open(out, "a") as f:
            f.write(name + "\\n")

    threading.Thread(target=slow, args=("thread",)).start()
    pool = concurrent.futures.ThreadPoolExecutor(1)
    pool.submit(slow, "pool")
    pool.shutdown(wait=False)
    atexit.register(lambda: print("atexit"))
    sys.stdout.write("buffered ")
    exit_process(sys.argv[2] if sys.argv[2] != "none" else None)
""")


@pytest.mark.parametrize(("code", "status", "stderr"), [("none", 0, ""), ("3", 1, "3\n")])
def test_exit_waits_for_threads_runs_atexit_and_flushes_but_never_finalizes(tmp_path, code, status, stderr):
    out = tmp_path / "done.txt"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), code], capture_output=True, text=True,
                          timeout=60, cwd=REPO, stdin=subprocess.DEVNULL)
    assert (proc.returncode, proc.stdout, proc.stderr) == (status, "buffered atexit\n", stderr)
    assert sorted(out.read_text().split()) == ["pool", "thread"]


def test_the_hb_command_keeps_its_exit_status(tmp_path):
    """`python -m hermetic_build` and `-m hermetic_build.cli` run `hb` through process_exit: a usage
    error is still 2, --version 0 with its output."""
    for module in ("hermetic_build", "hermetic_build.cli"):
        version = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                                 timeout=60, cwd=tmp_path)
        assert (version.returncode, version.stdout.startswith("hb, version ")) == (0, True), version
        wrong = subprocess.run([sys.executable, "-m", module, "no-such-command"], capture_output=True, text=True,
                               timeout=60, cwd=tmp_path)
        assert wrong.returncode == 2 and "No such command 'no-such-command'" in wrong.stderr, wrong
