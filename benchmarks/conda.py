"""Conda benchmark: lock time of the example, warm-cache stage vs a direct rattler.install of the
same records, and fetch throughput from a local HTTP server (nginx).

    python3 benchmarks/conda.py [--packages 30 --files 300 --file-kib 16]

Prints measurements taken side by side in one run. Goal (issue 3): hb's stage / direct install <= 1.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support import Nginx, Workspace, copy_example, env_workspace  # noqa: E402


def synthetic_channel(root: Path, packages: int, files: int, file_kib: int) -> Path:
    """Noarch packages of `files` text files each, built with py-rattler-build."""
    from rules.conda.channel import index_channel

    channel = root / "channel"
    index_channel(channel)
    rng = random.Random(1)
    words = [f"w{rng.getrandbits(40):x}" for _ in range(5000)]
    for i in range(packages):
        src = root / "src" / f"pkg{i}"
        src.mkdir(parents=True)
        for j in range(files):
            text = " ".join(rng.choice(words) for _ in range(file_kib * 1024 // 12))
            (src / f"f{j}.txt").write_text(text[: file_kib * 1024])
        build_text_package(channel, root, i, "1.0")
    index_channel(channel)
    return channel


def build_text_package(channel: Path, root: Path, i: int, version: str) -> None:
    """bench-pkg<i> at `version`: a noarch package of the text files in root/src/pkg<i>."""
    from rattler_build import Stage0Recipe

    recipe = root / "recipes" / f"pkg{i}-{version}" / "recipe.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(textwrap.dedent(f"""\
        package:
          name: bench-pkg{i}
          version: "{version}"
        source:
          path: {root / "src" / f"pkg{i}"}
        build:
          noarch: generic
          script:
            - mkdir -p $PREFIX/share/pkg{i} && cp *.txt $PREFIX/share/pkg{i}/
    """))
    Stage0Recipe.from_file(str(recipe)).run_build(output_dir=str(channel), channels=[channel.as_uri()],
                                                  no_build_id=True, no_include_recipe=True)
    shutil.rmtree(channel / "bld", ignore_errors=True)


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def action_seconds(stderr: str, mnemonic: str) -> list[float]:
    return [float(m) for m in re.findall(rf"\] {mnemonic} .*\(([0-9.]+)s\)", stderr)]


def direct_install(archives: list[Path], prefix: Path, cache: Path) -> None:
    import rattler
    from rattler import Config

    async def run():
        records = [await rattler.RepoDataRecord.from_package_archive(str(a)) for a in archives]
        await rattler.install(records, target_prefix=str(prefix), cache_dir=str(cache),
                              alternative_target_prefix="/opt/env", execute_link_scripts=False, show_progress=False,
                              config=Config.from_toml("allow-hard-links = false\nallow-ref-links = false"))

    asyncio.run(run())


def rattler_seconds(ws) -> float:
    """The rattler.install time the last CondaStage action recorded in its stdout."""
    from hermetic_build.store.local import LocalStore

    actions = json.loads(ws.hb("aquery", "--json", "//env:env").stdout)
    key = next(a["key"] for a in actions if a["mnemonic"] == "CondaStage")
    store = LocalStore(ws.cache)
    text = store.get_blob(store.get_action_result(key).stdout).decode()
    return float(re.search(r"rattler.install: \d+ packages in ([0-9.]+)s", text).group(1))


def fetch_throughput(ws, cache: Path, nginx, archives) -> tuple[float, float]:
    """Seconds for hb's executor to run only the fetch actions of //env:env into an empty cache,
    and for plain sequential urllib GETs of the same files."""
    os.environ["HB_CACHE_DIR"] = str(cache)
    import rules  # noqa: F401
    from hermetic_build.build import Session
    from hermetic_build.report import Reporter
    from hermetic_build.workspace import find_workspace

    session = Session(find_workspace(ws.root), jobs=8, reporter=Reporter(quiet=True))
    analysis = session.analyze(["//env:env"])
    executor = session.executor(analysis)
    fetches = [i for i, a in enumerate(analysis.actions) if a.mnemonic == "CondaFetch"]
    seconds, stats = timed(lambda: executor.run(fetches))
    assert stats.executed == len(archives)
    raw, _ = timed(lambda: [urllib.request.urlopen(f"{nginx.url}/noarch/{a.name}").read() for a in archives])
    return seconds, raw


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=30)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--file-kib", type=int, default=16)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hb-bench-conda-"))
    servers = []
    try:
        # 1. lock time of the example, all platforms (its channel built beforehand, not timed)
        example = copy_example(tmp / "examples", tmp / "cache-example")
        example.hb("build", "//channel:test-channel", timeout=900)
        lock_times = [timed(lambda: example.hb("lock", "//env:nlp-lock"))[0] for _ in range(3)]
        print(f"hb lock //env:nlp-lock (linux-64 + osx-arm64, channel cached): median {statistics.median(lock_times):.2f} s "
              f"(includes python start-up and importing conda-lock)")

        # 2. a bigger synthetic environment, served by nginx
        channel = synthetic_channel(tmp / "synthetic", args.packages, args.files, args.file_kib)
        archives = sorted((channel / "noarch").glob("*.conda"))
        total = sum(a.stat().st_size for a in archives)
        installed = args.packages * args.files * args.file_kib * 1024
        print(f"synthetic environment: {len(archives)} packages, {total / 2**20:.1f} MiB compressed, "
              f"{installed / 2**20:.1f} MiB installed in {args.packages * args.files} files")
        nginx = Nginx(channel, tmp / "nginx")
        servers.append(nginx)
        ws = Workspace(tmp / "ws", tmp / "cache")
        ws.root.mkdir()
        (ws.root / "hermetic.toml").write_text("")
        env_workspace(ws, nginx.url, [f"bench-pkg{i}" for i in range(args.packages)])
        ws.hb("lock", "//env:lock")
        fetch_seconds, raw_seconds = fetch_throughput(ws, tmp / "cache-fetch", nginx, archives)
        print(f"fetch from nginx on 127.0.0.1, cold cache, 8 jobs: {total / 2**20 / fetch_seconds:.1f} MiB/s "
              f"({len(archives)} packages, {total / 2**20:.1f} MiB in {fetch_seconds:.2f} s: hb's executor running "
              f"the CondaFetch actions); plain urllib GETs of the same files: {raw_seconds:.2f} s "
              f"(ratio {fetch_seconds / raw_seconds:.1f}x: sandbox per action, sha256 + BLAKE3, archive scan, CAS store)")
        ws.hb("build", "//env:env")

        # 3. warm-cache stage: packages in the CAS, stage re-run (a new prefix) vs direct rattler.install
        hb_stage, direct, inner = [], [], []
        for n in range(3):
            build = (ws.root / "env/BUILD.hermetic").read_text()
            build = re.sub(r"platform = 'linux-64'(, prefix = \"/opt/env\d+\")?\)",
                           f"platform = 'linux-64', prefix = \"/opt/env{n}\")", build)
            ws.write("env/BUILD.hermetic", build)
            _, proc = timed(lambda: ws.hb("build", "//env:env"))
            seconds = action_seconds(proc.stderr, "CondaStage")
            assert len(seconds) == 1 and not action_seconds(proc.stderr, "CondaFetch"), proc.stderr
            hb_stage.append(seconds[0])
            inner.append(rattler_seconds(ws))
            prefix, cache = tmp / f"direct{n}", tmp / f"direct-cache{n}"
            direct.append(timed(lambda: direct_install(archives, prefix, cache))[0])
            shutil.rmtree(prefix)
            shutil.rmtree(cache)
        h, d = statistics.median(hb_stage), statistics.median(direct)
        print(f"stage, warm CAS: hb CondaStage action {h:.2f} s vs direct rattler.install (fresh package cache) "
              f"{d:.2f} s: ratio {h / d:.2f} (goal <= 1.1: {'met' if h / d <= 1.1 else 'MISSED'})")
        print(f"  of hb's stage, rattler.install itself took {statistics.median(inner):.2f} s; the rest copies the "
              "archives out of the CAS (verifying BLAKE3), normalises conda-meta, hashes every file into the CAS "
              "and syncs it to disk once")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
