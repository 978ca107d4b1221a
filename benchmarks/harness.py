"""A small measuring harness for the benchmarks: whole processes, as a user runs them.

    from harness import Bench, Cmd
    bench = Bench("oci layers")
    hb = bench.measure("hb build //env:img", Cmd([...hb argv...], cwd=ws, env=env), runs=3,
                       before=lambda i: shutil.rmtree(cache, ignore_errors=True))
    base = bench.measure("tar | pigz -6", Cmd.shell(f"tar -C {tree} -cf - . | pigz -6 | wc -c"), runs=3,
                         baseline="tar of the staged tree piped into pigz -6, counted by wc")
    bench.ratio(hb, base)
    print(bench.markdown())

Rules it keeps (README, "Benchmarks"):
- every run is one whole process started with subprocess (wall time from spawn to exit);
- `sync` before every timed run (so a previous run's dirty pages are not flushed on the next one's
  clock), outside the timed part; an untimed `before(i)` hook for per-run set-up (a fresh cache);
- >= 3 runs by default; min and median reported;
- peak RSS and CPU per run: getrusage(RUSAGE_CHILDREN) taken in a small launcher process whose only
  child is the command (see _LAUNCHER for why not in this process), which is a child subreaper: the
  peak of the largest single process of the command's whole tree, and the CPU of all of it, sandboxes
  included (bubblewrap leaves the init of its PID namespace unreaped; the launcher reaps it); not the
  sum of processes alive at the same time; the launcher's own ~10 MiB is the floor;
- a baseline row carries a one-line statement of what it does, printed under the table.
"""

from __future__ import annotations

import os
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


@dataclass(frozen=True)
class Cmd:
    """One command to run: an argv (or a bash pipeline via Cmd.shell), where and with what environment."""

    argv: tuple[str, ...]
    cwd: Path | None = None
    env: dict | None = None

    @staticmethod
    def shell(pipeline: str, cwd: Path | None = None, env: dict | None = None) -> "Cmd":
        return Cmd(("bash", "-o", "pipefail", "-c", pipeline), cwd, env)


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_kib: int
    stdout: str
    stderr: str
    cpu: float = 0.0  # user + system CPU seconds of the command's whole tree (sandboxes included)


@dataclass(frozen=True)
class Row:
    name: str
    runs: tuple[Run, ...]
    baseline: str = ""  # one-line statement of what a baseline does; empty for the measured tool
    note: str = ""

    @property
    def min(self) -> float:
        return min(r.seconds for r in self.runs)

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def peak_rss_mib(self) -> float:
        return max(r.max_rss_kib for r in self.runs) / 1024

    @property
    def last(self) -> Run:
        return self.runs[-1]


class CommandFailed(RuntimeError):
    pass


def sync() -> None:
    subprocess.run(["sync"], check=True)


class Retired:
    """What a benchmark would delete between timed runs (a previous run's cache, hb-out/, prefix), moved
    aside instead and deleted once, at the end (`close`), after every timed run.

    Why: on ext4 without a journal (this machine's root file system), allocating an inode skips each
    inode freed in the last 60 s (360 s while its inode-table block is not yet written back), one
    buffer lookup per skipped inode (fs/ext4/ialloc.c, recently_deleted). After deleting thousands of
    files, every file created in that minute pays for all of them: a cold 6,300-file build took
    1.5-2x as long, and its fetch + rattler.install baseline 3-4x, right after an `rm -rf` of the
    previous run's outputs as with them renamed away; whichever side ran after a deletion paid, which
    is what made these rows swing. A rename
    frees no inode. The deletions hb itself makes while it builds are still part of its time."""

    def __init__(self, root: Path):
        self.root = Path(root) / ".retired"
        self.count = 0

    def retire(self, *paths: Path) -> None:
        for path in paths:
            path = Path(path)
            if os.path.lexists(path):
                self.root.mkdir(parents=True, exist_ok=True)
                self.count += 1
                os.rename(path, self.root / f"{self.count}-{path.name}")

    def close(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


# A small launcher between us and the measured command. Linux records the RSS a process had when it called
# exec (a forked child starts with its parent's resident pages), so a command started straight from a big
# benchmark process would report the benchmark's own size as its peak. The launcher is a small process; the
# command it forks inherits only that, and getrusage(RUSAGE_CHILDREN) in the launcher is the command's peak.
# The launcher is also a child subreaper (PR_SET_CHILD_SUBREAPER): a descendant whose parent exits without
# waiting for it is reaped here, so its CPU and RSS count. bubblewrap does that with --unshare-pid: its
# outer process takes the command's status from the namespace's init and exits without reaping it, which
# took every sandboxed action (a stage worker's 1-5 CPU s and 84 MiB) out of wait4's rusage of hb.
# The wall time is taken inside the launcher, from fork to reaped exit of the command (the launcher's own
# start is excluded); orphans still running then are waited for (untimed, at most 120 s) before rusage.
_LAUNCHER = """
import ctypes, os, resource, signal, sys, time
out, argv = sys.argv[1], sys.argv[2:]
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("the measuring launcher cannot be a child subreaper: prctl failed")
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status = os.waitpid(pid, 0)
seconds = time.perf_counter() - started
signal.alarm(120)  # an orphan that never exits fails the run (the launcher dies of SIGALRM)
orphans = 0
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
    orphans += 1
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(out, "w") as f:
    f.write(f"{seconds!r} {usage.ru_maxrss} {usage.ru_utime + usage.ru_stime!r} {orphans}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_once(cmd: Cmd, *, capture: bool = True, timeout: float | None = None) -> Run:
    """Run one whole process (through the launcher above): wall time from fork to reaped exit, and the
    peak RSS of the largest process in its tree and the CPU of all of it. Output goes to temporary
    files, never pipes."""
    return Started(cmd, capture).finish(timeout)


class Started:
    """One command started through the launcher (several may run at once); finish() waits for it."""

    def __init__(self, cmd: Cmd, capture: bool = True):
        import sys
        import tempfile

        self.cmd = cmd
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.result = tempfile.NamedTemporaryFile("r", prefix="hb-bench-rusage-")
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _LAUNCHER, self.result.name, *cmd.argv],
                                     cwd=cmd.cwd, env=cmd.env, stdout=self.out if capture else subprocess.DEVNULL,
                                     stderr=self.err if capture else subprocess.DEVNULL, text=True,
                                     start_new_session=True)

    def finish(self, timeout: float | None = None) -> Run:
        import signal

        what = " ".join(map(str, self.cmd.argv[:6]))
        with self.out, self.err, self.result:
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise CommandFailed(f"{what} ran past {timeout} s") from None
            self.out.seek(0)
            self.err.seek(0)
            stdout, stderr = self.out.read(), self.err.read()
            measured = self.result.read().split()
        if code != 0 or len(measured) != 4:
            raise CommandFailed(f"{what} exited {code}:\n{stdout[-1500:]}\n{stderr[-3000:]}")
        return Run(float(measured[0]), int(measured[1]), stdout, stderr, float(measured[2]))


class Bench:
    """Rows measured side by side in one run, printed as a markdown table."""

    def __init__(self, title: str):
        self.title = title
        self.rows: list[Row] = []
        self.ratios: list[tuple[str, str, float]] = []
        self.notes: list[str] = []

    def measure(self, name: str, cmd: Cmd | Callable[[int], Cmd], *, runs: int = 3, baseline: str = "",
                before: Callable[[int], None] | None = None, note: str = "", timeout: float | None = None,
                do_sync: bool = True) -> Row:
        """Run `cmd` `runs` times (cmd may be a function of the run index), `before(i)` and `sync`
        untimed before each run."""
        done = []
        for i in range(runs):
            if before is not None:
                before(i)
            if do_sync:
                sync()
            done.append(run_once(cmd(i) if callable(cmd) else cmd, timeout=timeout))
        row = Row(name, tuple(done), baseline, note)
        self.rows.append(row)
        return row

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def ratio(self, measured: Row, baseline: Row, what: str = "") -> float:
        """median(measured) / median(baseline), recorded for the printout."""
        value = measured.median / baseline.median
        self.ratios.append((what or f"{measured.name} / {baseline.name}", "median", value))
        return value

    def note(self, line: str) -> None:
        self.notes.append(line)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "",
                 "| what | runs | min s | median s | peak RSS MiB | note |",
                 "|---|---:|---:|---:|---:|---|"]
        for row in self.rows:
            name = (f"{row.name} (baseline)" if row.baseline else row.name).replace("|", "\\|")
            lines.append(f"| {name} | {len(row.runs)} | {row.min:.2f} | {row.median:.2f} | {row.peak_rss_mib:.0f} | "
                         f"{row.note} |")
        lines.append("")
        for what, kind, value in self.ratios:
            lines.append(f"- ratio {what}: {value:.2f} ({kind} wall time)")
        for row in self.rows:
            if row.baseline:
                lines.append(f"- baseline `{row.name}`: {row.baseline}")
        lines.extend(f"- {n}" for n in self.notes)
        return "\n".join(lines) + "\n"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def compile_bytecode(repo: Path) -> None:
    """Compile hb's modules before anything is timed, as pip does when it installs a package: hb's
    timed processes then start as an installed hb starts. Where PYTHONDONTWRITEBYTECODE is set (it is
    on the machine these numbers come from) a module changed since its last .pyc is otherwise
    compiled again by every timed process: 24 stale modules made importing the rules 30-60 ms slower."""
    import sys

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(repo / "hermetic_build"), str(repo / "rules")],
                   check=True, stdout=subprocess.DEVNULL)
