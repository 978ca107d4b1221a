"""Conda benchmark: hb as a user runs it (whole processes) next to the plain tools, in one run.

    python3 benchmarks/conda.py [--rows lockread,lock,fetch,cold,stage,big,example] [--reps 3]
                                [--packages 300 --files 20 --file-kib 16] [--big-mib 1024] [--pip-only | --pip-lock-only]

Rows (issue 11 and 9), each hb run and its baseline alternating, `sync` before every timed process,
min / median wall time, median CPU time and peak RSS (harness.run_once: the whole process tree,
sandboxed actions included) per row:
- cold env build: `hb build` with an empty cache and no hb-out (fetch + stage + publish) vs
  8-thread GETs of the same archives from the same nginx + rattler.install (goal <= 1.2x);
- stage only: warm CAS, a new prefix each time so only CondaStage runs (and its tree is published
  into hb-out) vs rattler.install of the same archives (goal <= 1.1x);
- the same for one package holding one 1 GiB file;
- the stage of the real example env (conda packages + PyPI wheels) vs rattler.install + uv pip install.
The synthetic packages are written directly (benchmarks/synthpkg.py). Also: `hb lock` vs `uv pip
compile` (lock) and the executor's fetch throughput vs plain GETs (fetch).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from harness import Cmd, Retired, compile_bytecode, run_once, sync  # noqa: E402
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


def run_measured(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MiB, stderr) of one whole process (harness.run_once: the largest
    process of its tree, sandboxes included)."""
    run = run_once(Cmd(tuple(argv), cwd, env))
    return run.seconds, run.max_rss_kib // 1024, run.stderr


def _median(runs) -> tuple[float, int]:
    return statistics.median(r[0] for r in runs), max(r[1] for r in runs)


# the baselines' rattler.install, as hb stages: no hard links, no link scripts, the same target prefix;
# the scripts end with os._exit(0): py-rattler 0.28 can abort in its finalizers at exit (PyGILState_Release)
RATTLER_INSTALL = """
async def run():
    records = await asyncio.gather(*(rattler.RepoDataRecord.from_package_archive(a) for a in archives))
    await rattler.install(records, target_prefix=prefix, cache_dir=cache, alternative_target_prefix="/opt/env",
                          execute_link_scripts=False, show_progress=False,
                          config=Config.from_toml("allow-hard-links = false\\nallow-ref-links = false"))
asyncio.run(run())
"""

DIRECT_INSTALL = """
import asyncio, os, subprocess, sys, rattler
from rattler import Config
archives, prefix, cache, uv, python, wheels = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:]
""" + RATTLER_INSTALL + """subprocess.run([uv, "pip", "install", "--python", python, "--prefix", prefix, "--no-deps", "--offline",
                "--no-config", "--break-system-packages", "--link-mode", "copy", "--cache-dir", cache + "-uv", "--quiet", *wheels], check=True)
os._exit(0)
"""


def pip_benchmarks(tmp: Path) -> None:
    """hb lock with a pip section vs uv pip compile alone (two baselines: sequential and concurrent)."""
    import tomllib  # noqa: F401 - python >= 3.11

    from rules.conda.pypi import wheel_target
    from rules.conda.uv_run import uv_binary

    example = copy_example(tmp / "examples", tmp / "cache-example")
    example.hb("lock", "//...", timeout=900)  # builds the channel, warms uv's cache (not timed)
    hb = [sys.executable, "-m", "hermetic_build.cli"]
    env = example.env()
    # the same requirements alone, for the same two platforms and python, uv's cache warm as hb's is
    requirements = tmp / "requirements.in"
    requirements.write_text("numpy >=2.2,<2.5\ntokenizers >=0.21,<0.24\n")
    uv, uv_cache = uv_binary(), tmp / "uv-cache"
    targets = [wheel_target("linux-64", ["__glibc=2.36"], "3.11.2"),
               wheel_target("osx-arm64", ["__osx=13.0"], "3.11.2")]

    def uv_argv(target, out):
        return [uv, "pip", "compile", str(requirements), "--format", "pylock.toml", "-o", str(out), "--only-binary",
                ":all:", "--no-config", "--python-version", target.python_version, "--python-platform",
                target.uv_platform, "--cache-dir", str(uv_cache), "--quiet"]

    def uv_sequential():
        total, peak = 0.0, 0
        for target in targets:
            out = tmp / f"pylock.{target.platform.replace('-', '_')}.toml"
            out.unlink(missing_ok=True)
            seconds, rss, _ = run_measured(uv_argv(target, out), env={**os.environ, **dict(target.uv_env)})
            total, peak = total + seconds, max(peak, rss)
        return total, peak, ""

    def uv_concurrent():
        import subprocess

        started = time.perf_counter()
        procs = []
        for target in targets:
            out = tmp / f"pylock.{target.platform.replace('-', '_')}.toml"
            out.unlink(missing_ok=True)
            procs.append(subprocess.Popen(uv_argv(target, out), env={**os.environ, **dict(target.uv_env)},
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        peak = 0
        for proc in procs:
            _, status, usage = os.wait4(proc.pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            peak = max(peak, usage.ru_maxrss // 1024)
        return time.perf_counter() - started, peak, ""

    uv_sequential()  # warm uv's cache
    lock_runs, seq_runs, conc_runs = [], [], []
    for _ in range(5):  # interleaved, so load changes hit all three alike
        os.sync()
        lock_runs.append(run_measured([*hb, "lock", "//env:nlp-lock"], cwd=example.root, env=env))
        os.sync()
        seq_runs.append(uv_sequential())
        os.sync()
        conc_runs.append(uv_concurrent())

    def stats(runs):
        times = [r[0] for r in runs]
        return min(times), statistics.median(times), max(r[1] for r in runs)

    (h_min, h_med, h_rss), (s_min, s_med, s_rss) = stats(lock_runs), stats(seq_runs)
    c_min, c_med, c_rss = stats(conc_runs)
    print(f"hb lock //env:nlp-lock with its pip section (conda solve + uv + wheel metadata, linux-64 + osx-arm64; "
          f"uv cache and wheel-metadata cache warm): min {h_min:.2f} s, median {h_med:.2f} s, peak {h_rss} MiB")
    print(f"  baseline 1: `uv pip compile` of the same requirements alone, the two platforms one after the other "
          f"(as a user's script would): min {s_min:.2f} s, median {s_med:.2f} s, peak {s_rss} MiB: ratio "
          f"{h_min / s_min:.2f}x (min) {h_med / s_med:.2f}x (median)")
    print(f"  baseline 2: the same two `uv pip compile` started at once: min {c_min:.2f} s, median {c_med:.2f} s, "
          f"peak {c_rss} MiB: ratio {h_min / c_min:.2f}x (min) {h_med / c_med:.2f}x (median)")
    print("  (hb adds python start-up, conda-lock's import and models, the conda solves, the wheels' dependencies "
          "and the explicit files; its uv runs start before the solves when the last lock recorded the same inputs)")


def example_stage_row(tmp: Path, reps: int) -> "Row":
    """The stage of the real example environment (conda packages + PyPI wheels), warm CAS, a new
    prefix each time so only CondaStage runs, vs rattler.install + uv pip install of the same files."""
    from conda_lock.lockfile import parse_conda_lock_file

    from rules.conda.uv_run import uv_binary

    example = copy_example(tmp / "examples", tmp / "cache-example")
    example.hb("build", "//env:nlp-env", "//channel:test-channel", timeout=900)  # channel (into hb-out), fetches
    lock = parse_conda_lock_file(example.root / "env/conda-lock.yml")
    conda = [p for p in lock.package if p.platform == "linux-64" and p.manager == "conda"]
    wheels_dir = tmp / "wheels"
    wheels_dir.mkdir()
    wheels = []
    for p in lock.package:
        if p.platform == "linux-64" and p.manager == "pip":
            dest = wheels_dir / p.url.rsplit("/", 1)[1]
            dest.write_bytes(urllib.request.urlopen(p.url).read())
            wheels.append(str(dest))
    # the lock records file:// URLs into the hb-out/ of the checkout that locked: the same files are
    # in this copy's hb-out/ (its channel was built above)
    archives = [str(example.root / "hb-out" / p.url.split("/hb-out/", 1)[1]) for p in conda]
    build_file = example.root / "env/BUILD.hermetic"
    original = build_file.read_text()
    row = Row(f"stage of the example env ({len(conda)} conda packages + {len(wheels)} wheels), warm CAS",
              "rattler.install of the conda archives (fresh cache, copies) + uv pip install --no-deps --offline "
              "--link-mode copy of the wheels (fresh cache) into an empty prefix", 1.1)
    retired = Retired(tmp)  # nothing is deleted between timed runs: see Retired
    try:
        for n in range(reps):
            build_file.write_text(original.replace('prefix = "/opt/env",\n)', f'prefix = "/opt/bench{n}",\n)', 1))
            retired.retire(example.root / "hb-out/env/nlp-env")  # hb, like the baseline, fills an empty place
            run = measure([*HB, "build", "//env:nlp-env"], cwd=example.root, env=example.env())
            assert action_seconds(run.stderr, "CondaStage") and not action_seconds(run.stderr, "WheelFetch"), run.stderr
            row.add_hb(run, action_seconds(run.stderr, "CondaStage")[0])
            prefix, cache = tmp / f"direct{n}", tmp / f"direct-cache{n}"
            row.add_baseline(measure([sys.executable, "-c", DIRECT_INSTALL, ",".join(archives), str(prefix), str(cache),
                                      uv_binary(), "/usr/bin/python3.11", *wheels]))
            retired.retire(prefix, cache, Path(str(cache) + "-uv"))
    finally:
        build_file.write_text(original)  # what was retired goes with the work directory, at the end
    return row


# ----- whole-process rows: hb as a user runs it vs the plain tools, side by side --------------------

HB = [sys.executable, "-m", "hermetic_build.cli"]


@dataclass
class Run:
    seconds: float  # wall time of the whole process
    rss_mib: int  # peak RSS of the largest process of the command's tree (sandboxes included)
    cpu: float  # user + system CPU seconds of the whole tree
    stderr: str


def measure(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> Run:
    """One whole process, timed after a `sync` (so no run pays for the previous one's dirty pages),
    through harness.run_once's launcher: a small process (a child forked from this large Python
    process would report this process's RSS at fork time as its peak) and a child subreaper, so the
    sandboxed actions' CPU and RSS count (bubblewrap leaves its namespace's init unreaped: with GNU
    time, which measured here before, a stage worker's CPU and memory were missing from hb's)."""
    sync()
    run = run_once(Cmd(tuple(argv), cwd, env))
    return Run(run.seconds, run.max_rss_kib // 1024, run.cpu, run.stderr)


@dataclass
class Row:
    name: str
    baseline: str  # what the baseline does, in one line
    goal: float  # hb / baseline, on the median wall time
    hb: list = field(default_factory=list)
    base: list = field(default_factory=list)
    inner: list = field(default_factory=list)  # seconds of the action itself, where one is measured

    def add_hb(self, run: Run, inner: float | None = None) -> None:
        self.hb.append(run)
        if inner is not None:
            self.inner.append(inner)
        print(f"  {self.name}: hb {run.seconds:.2f} s{f' (action {inner:.2f} s)' if inner is not None else ''}, "
              f"cpu {run.cpu:.2f} s, peak {run.rss_mib} MiB", flush=True)

    def add_baseline(self, run: Run) -> None:
        self.base.append(run)
        print(f"  {self.name}: baseline {run.seconds:.2f} s, cpu {run.cpu:.2f} s, peak {run.rss_mib} MiB", flush=True)

    def line(self) -> str:
        def stats(runs):
            walls = [r.seconds for r in runs]
            return min(walls), statistics.median(walls), max(r.rss_mib for r in runs), \
                statistics.median(r.cpu for r in runs)

        h_min, h_med, h_rss, h_cpu = stats(self.hb)
        b_min, b_med, b_rss, b_cpu = stats(self.base)
        ratio = h_med / b_med
        inner = f" (action {statistics.median(self.inner):.2f})" if self.inner else ""
        return (f"| {self.name} | {h_min:.2f} / {h_med:.2f}{inner} | {b_min:.2f} / {b_med:.2f} | "
                f"**{ratio:.2f}x** (min {h_min / b_min:.2f}x) | {h_cpu:.1f} / {b_cpu:.1f} | {h_rss} / {b_rss} | "
                f"<= {self.goal}: {'met' if ratio <= self.goal else 'MISSED'} |")


TABLE_HEADER = ("| row (n = {n} each, side by side) | hb s, min / median | baseline s, min / median | hb / baseline "
                "(median) | CPU s hb / baseline | peak RSS MiB hb / baseline | goal |\n|---|---|---|---|---|---|---|")

FETCH_INSTALL = """
import asyncio, concurrent.futures, hashlib, os, sys, urllib.request, rattler
from rattler import Config
urls, dest, prefix, cache = sys.argv[1].split(","), sys.argv[2], sys.argv[3], sys.argv[4]
os.makedirs(dest, exist_ok=True)
def get(url):
    path, sha = os.path.join(dest, url.rsplit("/", 1)[1]), hashlib.sha256()
    with urllib.request.urlopen(url) as response, open(path, "wb") as out:
        while chunk := response.read(1 << 20):
            sha.update(chunk)
            out.write(chunk)
    return path
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    archives = list(pool.map(get, urls))
""" + RATTLER_INSTALL + """os._exit(0)
"""

INSTALL = """
import asyncio, os, sys, rattler
from rattler import Config
archives, prefix, cache = sys.argv[1].split(","), sys.argv[2], sys.argv[3]
""" + RATTLER_INSTALL + """os._exit(0)
"""


class SyntheticEnv:
    """A channel of synthetic packages served by nginx and a workspace with a locked //env:env."""

    def __init__(self, root: Path, channel: Path):
        self.root, self.channel = root, channel
        self.retired = Retired(root)
        self.archives = sorted((channel / "noarch").glob("*.conda"))
        self.nginx = Nginx(channel, root / "nginx")
        self.ws = Workspace(root / "ws", root / "cache")
        self.ws.root.mkdir()
        (self.ws.root / "hermetic.toml").write_text("")
        names = sorted({a.name.rsplit("-", 2)[0] for a in self.archives})
        env_workspace(self.ws, self.nginx.url, names)
        self.ws.hb("lock", "//env:lock", timeout=900)

    def cold_row(self, name: str, reps: int, goal: float) -> Row:
        """Cold `hb build` (empty cache, no hb-out) vs fetch (8 threads) + rattler.install."""
        row = Row(name, "8 threads GET each archive from the same nginx (sha256 while writing) + rattler.install "
                  "(fresh cache, copies)", goal)
        urls = ",".join(f"{self.nginx.url}/noarch/{a.name}" for a in self.archives)
        for _ in range(reps):
            self.retired.retire(self.ws.cache, self.ws.root / "hb-out")  # moved aside, not deleted: see Retired
            run = measure([*HB, "build", "//env:env"], cwd=self.ws.root, env=self.ws.env())
            row.add_hb(run, action_seconds(run.stderr, "CondaStage")[0])
            direct = self.root / "direct"
            row.add_baseline(measure([sys.executable, "-c", FETCH_INSTALL, urls, str(direct / "dl"), str(direct / "prefix"),
                                      str(direct / "cache")]))
            self.retired.retire(direct)
        return row

    def stage_row(self, name: str, reps: int, goal: float) -> Row:
        """Warm CAS (the packages fetched), a new prefix each time so only CondaStage runs (and its
        tree is published into hb-out), vs rattler.install of the same archives from disk."""
        row = Row(name, "rattler.install of the same archives from a local directory (fresh cache, copies)", goal)
        self.ws.hb("build", "//env:env", timeout=900)
        build = self.ws.root / "env/BUILD.hermetic"
        original = build.read_text()
        archives = ",".join(str(a) for a in self.archives)
        try:
            for n in range(reps):
                build.write_text(original.replace("platform = 'linux-64')", f"platform = 'linux-64', prefix = '/opt/bench{n}')"))
                # the previous run's tree is moved aside, so hb, like the baseline, fills an empty place
                self.retired.retire(self.ws.root / "hb-out/env/env")
                run = measure([*HB, "build", "//env:env"], cwd=self.ws.root, env=self.ws.env())
                stage = action_seconds(run.stderr, "CondaStage")
                assert len(stage) == 1 and not action_seconds(run.stderr, "CondaFetch"), run.stderr
                row.add_hb(run, stage[0])
                direct = self.root / "direct"
                row.add_baseline(measure([sys.executable, "-c", INSTALL, archives, str(direct / "prefix"),
                                          str(direct / "cache")]))
                self.retired.retire(direct)
        finally:
            build.write_text(original)
        return row

    def stop(self) -> None:
        self.nginx.stop()  # what it retired is deleted with the whole work directory, after the last row


def stage_benchmarks(tmp: Path, args, rows: list) -> None:
    """Append the rows asked for to `rows` as each is measured."""
    from synthpkg import big_file_channel, text_channel

    if {"cold", "stage"} & args.rows:
        channel = text_channel(tmp / "text", args.packages, args.files, args.file_kib)
        env = SyntheticEnv(tmp / "text", channel)
        files = args.packages * args.files
        try:
            if "cold" in args.rows:
                rows.append(env.cold_row(f"cold env build: {args.packages} packages, {files} files", args.reps, 1.2))
            if "stage" in args.rows:
                rows.append(env.stage_row(f"stage only: {args.packages} packages, {files} files", args.reps, 1.1))
        finally:
            env.stop()  # its files stay until the end: deleting them now would slow the next rows (see Retired)
    if "big" in args.rows:
        channel = big_file_channel(tmp / "big", args.big_mib << 20)
        env = SyntheticEnv(tmp / "big", channel)
        try:
            rows.append(env.stage_row(f"stage only: one {args.big_mib} MiB file", args.reps, 1.1))
        finally:
            env.stop()
    if "example" in args.rows:
        rows.append(example_stage_row(tmp / "example", args.reps))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=300)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--file-kib", type=int, default=16)
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", default="lockread,lock,fetch,cold,stage,big,example",
                        help="comma-separated: lockread (a 1.4 MB lock file read, benchmarks/lockread.py), lock (hb "
                             "lock rows), fetch (throughput), cold, stage, big, example")
    parser.add_argument("--pip-only", action="store_true", help="only the pip (uv, wheels) measurements")
    parser.add_argument("--pip-lock-only", action="store_true", help="only hb lock vs uv pip compile")
    args = parser.parse_args()
    compile_bytecode(REPO)  # timed processes start as an installed hb does
    args.rows = ({"lock"} if args.pip_lock_only else {"lock", "example"} if args.pip_only
                 else set(args.rows.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="hb-bench-conda-"))
    servers = []
    try:
        if "lockread" in args.rows:  # issue 9: a 1.4 MB conda-lock.yml (800 packages x 4 platforms) read in <= 1 s
            subprocess.run([sys.executable, str(Path(__file__).with_name("lockread.py")), "--repeat", str(args.reps)],
                           check=True)
        if "lock" in args.rows:
            pip_benchmarks(tmp / "pip")
            # lock time of the example, all platforms (its channel built beforehand, not timed)
            example = copy_example(tmp / "examples", tmp / "cache-example")
            example.hb("build", "//channel:test-channel", timeout=900)
            lock_times = [timed(lambda: example.hb("lock", "//env:nlp-lock"))[0] for _ in range(3)]
            print(f"hb lock //env:nlp-lock (linux-64 + osx-arm64, channel cached): median "
                  f"{statistics.median(lock_times):.2f} s (includes python start-up and importing conda-lock)")
        if "fetch" in args.rows:
            fetch_row(tmp / "fetch", servers)
        rows: list[Row] = []
        try:
            stage_benchmarks(tmp / "stage", args, rows)
        finally:
            print_table(rows, args.reps)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def print_table(rows: list, reps: int) -> None:
    """The rows measured so far (a row that failed is left out), as a markdown table."""
    if rows:
        print("\nwhole processes as a user runs them, `sync` before each; baselines:")
        for row in rows:
            print(f"- {row.name}: {row.baseline}")
        print(TABLE_HEADER.format(n=reps))
        for row in rows:
            print(row.line())


def fetch_row(tmp: Path, servers: list) -> None:
    """Fetch throughput of the executor's CondaFetch actions from nginx vs plain sequential GETs."""
    channel = synthetic_channel(tmp / "synthetic", 30, 300, 16)
    archives = sorted((channel / "noarch").glob("*.conda"))
    total = sum(a.stat().st_size for a in archives)
    nginx = Nginx(channel, tmp / "nginx")
    servers.append(nginx)
    ws = Workspace(tmp / "ws", tmp / "cache")
    ws.root.mkdir(parents=True)
    (ws.root / "hermetic.toml").write_text("")
    env_workspace(ws, nginx.url, [f"bench-pkg{i}" for i in range(30)])
    ws.hb("lock", "//env:lock")
    fetch_seconds, raw_seconds = fetch_throughput(ws, tmp / "cache-fetch", nginx, archives)
    print(f"fetch from nginx on 127.0.0.1, cold cache, 8 jobs: {total / 2**20 / fetch_seconds:.1f} MiB/s "
          f"({len(archives)} packages, {total / 2**20:.1f} MiB in {fetch_seconds:.2f} s: hb's executor running "
          f"the CondaFetch actions); plain urllib GETs of the same files: {raw_seconds:.2f} s "
          f"(ratio {fetch_seconds / raw_seconds:.1f}x: sandbox per action, sha256 + BLAKE3, archive scan, CAS store)")


if __name__ == "__main__":
    main()
