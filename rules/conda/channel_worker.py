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


def index_channel(directory: str) -> None:
    from rattler.index import index_fs

    os.makedirs(os.path.join(directory, NOARCH), exist_ok=True)
    result = index_fs(directory)
    if inspect.iscoroutine(result):
        asyncio.run(result)


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


def build(params: dict) -> list[str]:
    from rattler_build import PlatformConfig, RenderConfig, Stage0Recipe

    out = os.path.abspath(params["out"])
    os.makedirs(out, exist_ok=True)
    index_channel(out)
    built = []
    for item in params["builds"]:
        recipe_path = os.path.abspath(item["recipe"])
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
        built += [f"built {result}" for result in results]
        index_channel(out)
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
    sys.exit(main(sys.argv[1:]))
