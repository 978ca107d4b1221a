"""The stage worker ends without finalizing the interpreter: py-rattler's runtime threads could crash
the finalization (SIGSEGV, or an abort in PyGILState_Release) in about one run of 60, which failed a
whole build (rules/conda/worker_exit.py)."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
from pathlib import Path

import pytest

from rules.conda.stage import WORKER, python_paths

RUNS = 200  # the old ending crashed 7 and 11 times in two sets of 200 runs


def _worker_params(tmp_path: Path, channel_dir: Path) -> Path:
    """The stage of the CI run that crashed: two packages of the test channel built by rattler-build."""
    packages, archives = [], {}
    for subdir, prefix in (("linux-64", "hb-accel-1.0.0-cpu_"), ("noarch", "hb-vocab-2.0.0-")):
        records = json.loads((channel_dir / subdir / "repodata.json").read_text())["packages.conda"]
        filename = next(name for name in sorted(records) if name.startswith(prefix))
        archives[filename] = str(channel_dir / subdir / filename)
        packages.append({"filename": filename, "url": f"file:///nowhere/{subdir}/{filename}",
                         "name": records[filename]["name"], "sha256": records[filename]["sha256"]})
    # the cache "in memory" (as in a sandbox's tmpfs): no clean-up of it between the install and the exit
    params = {"sys_path": python_paths()[0], "archives": archives, "out": "out", "cache": "cache",
              "cache_in_memory": True, "prefix": "/opt/env", "platform": "linux-64", "packages": packages}
    (tmp_path / "params.json").write_text(json.dumps(params))
    return tmp_path / "params.json"


@pytest.mark.slow
def test_the_stage_worker_exits_cleanly_every_time(tmp_path, channel_dir):
    params = _worker_params(tmp_path, channel_dir)

    def stage(run: int) -> tuple[int, str]:
        cwd = tmp_path / f"run{run}"
        cwd.mkdir()
        proc = subprocess.run([sys.executable, "-X", "faulthandler", "-I", str(WORKER), str(params)], cwd=cwd,
                              capture_output=True, text=True, timeout=120)
        assert proc.stdout.startswith("rattler.install: 2 packages in"), (proc.stdout, proc.stderr)
        return proc.returncode, proc.stderr

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(stage, range(RUNS)))
    failed = [(code, err) for code, err in results if code != 0]
    assert not failed, f"{len(failed)} of {RUNS} stage workers failed after their work; the first: {failed[0]}"


def test_exit_without_finalizing_flushes_keeps_the_status_and_skips_finalization(tmp_path):
    """Buffered output reaches the pipe, the status is the one given, and nothing of the interpreter's
    finalization runs (an atexit handler stands for it)."""
    code = ("import atexit, sys; from rules.conda.worker_exit import exit_without_finalizing; "
            "atexit.register(lambda: print('finalized')); "
            "sys.stdout.write('buffered'); sys.stderr.write('err'); exit_without_finalizing(3)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[3])
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "buffered", "err")


def test_an_unexpected_error_prints_its_traceback_and_exits_1(tmp_path):
    code = ("import sys; from rules.conda.worker_exit import run_and_exit\n"
            "def main(argv):\n    raise RuntimeError('boom ' + argv[0])\n"
            "run_and_exit(main)")
    proc = subprocess.run([sys.executable, "-c", code, "now"], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "RuntimeError: boom now" in proc.stderr, proc
