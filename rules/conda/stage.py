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

from hermetic_build.api import (ActionFailed, Location, MissingBlob, TooManyJsonValues, loads_bounded,
                                register_action_kind)

WORKER = Path(__file__).resolve().with_name("stage_worker.py")
WORKER_EXIT = WORKER.with_name("worker_exit.py")  # how the workers end, bound next to them
ZIPDIR = WORKER.with_name("zipdir.py")  # the stage worker measures each wheel's zip directory with it
PARAMS_FILE = "../tmp/hb-stage-params.json"  # relative to the execution root, inside or outside bwrap


def worker_python() -> str:
    """The interpreter that runs a sandboxed worker, as an absolute path that exists inside the
    sandbox: `hb` started as `../.venv/bin/hb` has sys.executable `/w/examples/../.venv/bin/python`,
    whose `..` goes through a directory the sandbox does not have. The directory is resolved; the
    file name is kept, so that a virtual environment's `bin/python` link still finds its pyvenv.cfg."""
    return os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(sys.executable))),
                        os.path.basename(sys.executable))


def python_paths(extra: tuple[str, ...] = (str(WORKER), str(WORKER_EXIT), str(ZIPDIR))) -> tuple[list[str], tuple[str, ...]]:
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
    check_installed_records(execution.path(execution.action.outputs[0]) / "conda-meta", params["packages"],
                            execution.hints.get("lock") or "", execution.hints.get("lock_lines") or {})


MAX_RECORD_BYTES = 256 << 20  # a conda-meta record lists the package's files: large, never this large


def check_installed_records(meta: Path, packages: list[dict], lock: str = "", lock_lines: dict | None = None) -> None:
    """Each archive installed must be the package its lock entry names. rattler writes one conda-meta
    record per archive, with name, version, build and `fn` (name-version-build.conda) taken from the
    archive's info/index.json, not from the file name the lock gave it; the lock reader has checked
    that each entry's name, version and build are its file name's. So each locked file must have
    exactly one record, of that name, and there must be no other record: else an archive (pinned by
    the lock's sha256) is another package, and the SBOM and the layers would name the wrong one.
    The error names the lock file (`lock`) and the entry's line (`lock_lines`: file name -> line),
    hints of the action that are not part of its key."""
    if not meta.is_dir() or meta.is_symlink():
        raise ActionFailed("the staged prefix has no conda-meta directory (rattler writes one)")
    records: dict[str, list[dict]] = {}
    for entry in sorted(os.scandir(meta), key=lambda e: e.name):
        if entry.name.endswith(".json") and entry.is_file(follow_symlinks=False):
            record = _read_record(entry)
            records.setdefault(str(record.get("fn")), []).append(record)
    locked_files = {p["filename"] for p in packages}
    strangers = [_identity(r) for fn, found in records.items() if fn not in locked_files for r in found]
    for package in packages:
        filename, locked = package["filename"], package.get("name", "")
        line = (lock_lines or {}).get(filename)
        where = Location(lock, line if isinstance(line, int) else 0) if lock else None
        found = records.get(filename, [])
        if len(found) > 1:
            raise ActionFailed(f"{locked} ({filename}): {len(found)} conda-meta records name this file, expected one "
                               "(did its archive bring records of its own?)", location=where)
        if not found or found[0].get("name") != (locked or found[0].get("name")):
            actual = _identity(found[0]) if found else " or ".join(strangers[:3]) or "another package"
            raise ActionFailed(f"{locked} ({filename}): the archive the lock pins by sha256 is {actual} (its "
                               "info/index.json), not the package the lock entry names", location=where,
                               hint="re-lock the environment: the entry's sha256 belongs to another package")
    if strangers:
        raise ActionFailed(f"the staged prefix records {strangers[0]} (conda-meta), a package the lock does not name",
                           location=Location(lock) if lock else None,
                           hint="re-lock the environment: an archive it pins is another package")


def _identity(record: dict) -> str:
    return " ".join(str(record.get(key)) for key in ("name", "version", "build"))


def _read_record(entry: os.DirEntry) -> dict:
    """The fields of a conda-meta record this check uses (not the record: one is parsed at a time, its
    files lists are not kept), read within bounds on its size and on the values parsing it makes."""
    path = f"conda-meta/{entry.name}"
    if entry.stat(follow_symlinks=False).st_size > MAX_RECORD_BYTES:
        raise ActionFailed(f"{path} in the staged prefix is larger than {MAX_RECORD_BYTES >> 20} MiB")
    try:
        with open(entry.path, "rb") as f:
            record = loads_bounded(f.read(), f"{path} in the staged prefix")
    except TooManyJsonValues:
        raise
    except (OSError, ValueError) as exc:
        raise ActionFailed(f"{path} in the staged prefix cannot be read as JSON: {exc}") from None
    return {key: record.get(key) for key in ("fn", "name", "version", "build")} if isinstance(record, dict) else {}


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


# 4: the installed records are checked against the lock (check_installed_records); a result staged
# before that check is not reused. 5: the wheels' checks of the fourteenth session's red team (bounded
# .dist-info reads, paths and directories, no metadata of another project, `<data>/<scheme>/` only,
# names without line separators): a tree staged without them is not reused
register_action_kind("conda.stage", "5", _stage, read_only_files=True)
