"""Staging: install the fetched packages into the final prefix path, inside the sandbox.

The archives are untrusted (a lock can name any package, a remote cache can hand back any bytes
for a fetch), so the install does not run in hb's process: stage_worker.py runs in bubblewrap with
the sandbox directory (execroot with the output prefix, tmp/ with the package cache) as the only
writable place (the archives are read-only links to their CAS blobs, see ActionKind.read_only_files), no network, and nothing of the host visible but the Python
installation that runs it. The fetch's archive check (archive.py) is the first line; this is the
second, which holds even if that check, or rattler, has a flaw."""

from __future__ import annotations

import json
import os
import site
import sys
from pathlib import Path

from hermetic_build.api import ActionFailed, MissingBlob, register_action_kind

WORKER = Path(__file__).resolve().with_name("stage_worker.py")
WORKER_EXIT = WORKER.with_name("worker_exit.py")  # how the workers end, bound next to them
PARAMS_FILE = "../tmp/hb-stage-params.json"  # relative to the execution root, inside or outside bwrap


def worker_python() -> str:
    """The interpreter that runs a sandboxed worker, as an absolute path that exists inside the
    sandbox: `hb` started as `../.venv/bin/hb` has sys.executable `/w/examples/../.venv/bin/python`,
    whose `..` goes through a directory the sandbox does not have. The directory is resolved; the
    file name is kept, so that a virtual environment's `bin/python` link still finds its pyvenv.cfg."""
    return os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(sys.executable))),
                        os.path.basename(sys.executable))


def python_paths(extra: tuple[str, ...] = (str(WORKER), str(WORKER_EXIT))) -> tuple[list[str], tuple[str, ...]]:
    """(the directories a worker needs on sys.path to import rattler and rattler_build, the host paths
    to expose read-only: the interpreter's installation, those directories and the `extra` files,
    by default the stage worker itself and worker_exit.py)."""
    import importlib.util

    package_dirs = []
    for module in ("rattler", "rattler_build", "installer"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            package_dirs.append(str(Path(spec.origin).resolve().parent.parent))
    sites = [*site.getsitepackages(), site.getusersitepackages(), *package_dirs]
    sys_path = [p for p in dict.fromkeys(sites) if os.path.isdir(p)]
    roots = {sys.base_prefix, sys.prefix, sys.base_exec_prefix, sys.exec_prefix,
             os.path.realpath(sys.executable), os.path.dirname(worker_python()), *sys_path, *extra}
    exposed = []
    for path in sorted(os.path.realpath(p) for p in roots if os.path.exists(p)):
        if not any(path == e or path.startswith(e.rstrip("/") + "/") for e in exposed):
            exposed.append(path)
    return sys_path, tuple(exposed)


MEMORY_CACHE_MAX = 4 << 30  # the sandbox's /tmp, where the worker extracts packages, at most this
EXPANSION_GUESS = 4  # installed bytes per archive byte assumed when choosing where packages go


def memory_cache_limit() -> int:
    """How much of the memory a stage may use for its package cache: a quarter of what is available
    now, at most MEMORY_CACHE_MAX (the tmpfs takes memory only as files are written into it)."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0
    return min(MEMORY_CACHE_MAX, available // 4)


def _stage(execution) -> None:
    params = execution.params
    sys_path, read_only = python_paths()
    # packages are extracted into the sandbox's private /tmp (memory) where they fit, else on disk
    archive_bytes = sum(os.path.getsize(execution.input_path(f)) for f in execution.action.inputs)
    limit = memory_cache_limit() if execution.isolated else 0
    in_memory = 0 < archive_bytes * EXPANSION_GUESS <= limit
    worker_params = {
        "sys_path": sys_path,
        # bound read-only from the CAS where bubblewrap runs (read_only_files): the worker checks each
        # against the lock's sha256 before anything reads it
        "archives": {f.basename: execution.sandbox_path(f) for f in execution.action.inputs},
        "out": execution.action.outputs[0].path,
        "cache": "/tmp/hb-pkgs" if in_memory else "../tmp/pkgs",
        "cache_in_memory": in_memory,
        "fallback_cache": "../tmp/pkgs" if in_memory else "",
        "prefix": params["prefix"],
        "platform": params["platform"],
        "packages": params["packages"],
        "wheels": params.get("wheels", []),
        "python": params.get("python", ""),
        "max_unpack_ratio": params.get("max_unpack_ratio", 0),
    }
    (execution.execroot / PARAMS_FILE).write_text(json.dumps(worker_params))
    # -I: no PYTHON* variables, no user site, no working directory on sys.path (it holds the
    # untrusted archives); the worker adds the directories that hold rattler itself
    code = execution.run_command([worker_python(), "-I", str(WORKER), PARAMS_FILE], read_only=read_only,
                                 tmp_size=limit if in_memory else None)
    if code != 0:
        _heal_corrupt_inputs(execution)
        _raise_worker_failure(execution, code)


def _heal_corrupt_inputs(execution) -> None:
    """After a failed stage: an archive bound from the CAS that is no longer the blob it was stored as
    (a disk error, someone writing into the cache) is removed from the store and reported as missing
    (MissingBlob), so the executor fetches it again and re-runs the stage, as it does for a corrupt
    input it copies."""
    store = getattr(execution.store, "local", execution.store)
    for f in execution.action.inputs:
        if f.path in execution.file_views:
            digest = execution.input_entries[f.path].digest
            if store.open_verified(digest) is None:  # gone, or changed (then removed as corrupt)
                raise MissingBlob(digest)


def _raise_worker_failure(execution, code: int):
    """The worker's one-line message, or how it died (its stderr tail is in the action's report)."""
    params = execution.params
    lines = bytes(execution.stderr).decode(errors="replace").strip().splitlines()
    last = next((line for line in reversed(lines) if line.startswith("stage: ")), None)
    if last is not None:
        raise ActionFailed(last[len("stage: "):])
    signal_number = -code if code < 0 else code - 128 if code > 128 else 0  # bwrap reports 128+N
    how = (f"was killed by signal {signal_number} ({_signal_name(signal_number)})" if signal_number
           else f"exited with status {code}")
    raise ActionFailed(f"the stage into {params['prefix']} {how}" + (f": {lines[-1]}" if lines else ""))


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


register_action_kind("conda.stage", "3", _stage, read_only_files=True)
