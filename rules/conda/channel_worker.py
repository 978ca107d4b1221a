"""The channel build, inside the sandbox: run py-rattler-build on each recipe into the output channel
and index it with py-rattler.

    python3 -I channel_worker.py PARAMS.json

Run by the conda.channel action in bubblewrap: recipe build scripts are arbitrary shell from the
workspace (BUILD files and what they name are untrusted), so they run where only the sandbox
directory is writable, nothing of the host is visible but /usr, a synthetic /etc and the Python
installation, and there is no network (the builds are offline: the channel being built is the only
channel). Standalone on purpose (the standard library, rattler and rattler_build only).

PARAMS.json: {"sys_path": [...], "out": path, "builds": [{"recipe": path, "platform": "linux-64"}]};
relative paths are relative to the working directory (the execution root). On failure it prints the
tail of the build's output and then one line, `channel: <what went wrong>`, on stderr and exits 1.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import sys

NOARCH = "noarch"
LOG_TAIL_LINES = 40


class ChannelError(Exception):
    pass


def reindex_channel(directory: str) -> None:
    """Index from scratch: rattler-build indexes the channel itself after a build, before hb normalises
    the new archives, and an incremental index keeps entries of files it has already seen."""
    for subdir in os.listdir(directory):
        path = os.path.join(directory, subdir)
        if not os.path.isdir(path) or subdir in ("bld", "src_cache"):
            continue
        for name in os.listdir(path):
            if name.startswith("repodata") or name == "shards":
                target = os.path.join(path, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target)
                else:
                    os.unlink(target)
    index_channel(directory, reproducible=True)


def _scrub_index_times(directory: str) -> None:
    """rattler's index stamps each record with the moment it indexed it (`indexed_timestamp`); the
    packages carry their own fixed `timestamp`, so the stamp is dropped to keep repodata.json stable."""
    for subdir in sorted(os.listdir(directory)):
        path = os.path.join(directory, subdir, "repodata.json")
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        with open(path) as f:
            repodata = json.load(f)
        for key in ("packages", "packages.conda"):
            for record in (repodata.get(key) or {}).values():
                record.pop("indexed_timestamp", None)
        with open(path, "w") as f:
            json.dump(repodata, f, indent=2, sort_keys=True)
            f.write("\n")


def index_channel(directory: str, reproducible: bool = False) -> None:
    """Index the channel; reproducible: repodata.json only (no .zst or shards, which carry index
    times), with the index's own time stamps removed."""
    from rattler.index import index_fs

    os.makedirs(os.path.join(directory, NOARCH), exist_ok=True)
    options = {"write_zst": False, "write_shards": False, "force": True} if reproducible else {}
    result = index_fs(directory, **options)
    if inspect.iscoroutine(result):
        asyncio.run(result)
    if reproducible:
        _scrub_index_times(directory)


def _log_tail(out: str) -> str:
    """The end of the newest build log rattler-build left in the output's bld/ directory, if any."""
    logs = []
    for dirpath, _dirs, files in os.walk(os.path.join(out, "bld")):
        logs += [os.path.join(dirpath, f) for f in files if f == "conda_build.log" or f.endswith(".log")]
    if not logs:
        return ""
    newest = max(logs, key=os.path.getmtime)
    with open(newest, errors="replace") as f:
        return "".join(f.readlines()[-LOG_TAIL_LINES:])


def _archives(out: str) -> dict[str, tuple[int, int]]:
    """Every package archive in the channel, with (size, mtime_ns): what a build added or rewrote."""
    found = {}
    for subdir in sorted(os.listdir(out)):
        directory = os.path.join(out, subdir)
        if not os.path.isdir(directory) or subdir in ("bld", "src_cache"):
            continue
        for name in sorted(os.listdir(directory)):
            if name.endswith(".conda") or name.endswith(".tar.bz2"):
                st = os.stat(os.path.join(directory, name))
                found[os.path.join(directory, name)] = (st.st_size, st.st_mtime_ns)
    return found


def build(params: dict) -> list[str]:
    from rattler_build import PlatformConfig, RenderConfig, Stage0Recipe

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I left this file's directory out
    from package_normalise import normalise_package

    out = os.path.abspath(params["out"])
    os.makedirs(out, exist_ok=True)
    index_channel(out, reproducible=True)
    built = []
    for item in params["builds"]:
        recipe_path = os.path.abspath(item["recipe"])
        before = _archives(out)
        try:
            recipe = Stage0Recipe.from_file(recipe_path)
            render = RenderConfig(platform=PlatformConfig(target_platform=item["platform"]))
            results = recipe.run_build(output_dir=out, channels=[f"file://{out}"], no_build_id=True,
                                       no_include_recipe=True, render_config=render)
        except Exception as exc:  # noqa: BLE001 - py-rattler-build's errors name the failing step
            tail = _log_tail(out)
            if tail:
                print(tail, file=sys.stderr, end="" if tail.endswith("\n") else "\n", flush=True)
            message = " ".join(str(exc).split())[:2000]
            raise ChannelError(f"building {item['recipe']} for {item['platform']} failed: "
                               f"{type(exc).__name__}: {message}") from None
        for package, stamp in _archives(out).items():
            if before.get(package) != stamp:
                normalise_package(package, params.get("source_date_epoch", 0))
        built += [f"built {result}" for result in results]
        reindex_channel(out)
    shutil.rmtree(os.path.join(out, "bld"), ignore_errors=True)
    shutil.rmtree(os.path.join(out, "src_cache"), ignore_errors=True)
    return built


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: channel_worker.py PARAMS.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        params = json.load(f)
    sys.path[:0] = [p for p in params.get("sys_path", []) if p not in sys.path]
    try:
        for line in build(params):
            print(line, flush=True)
    except ChannelError as exc:
        print(f"channel: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I left this file's directory out
    from worker_exit import run_and_exit  # never a finalization: rattler's threads can crash it

    run_and_exit(main)
