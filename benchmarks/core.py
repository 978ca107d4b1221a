"""Core benchmark: no-op builds and cold analysis, measured as a user runs hb (whole processes).

Every row runs `python -m hermetic_build.cli ...` as a subprocess (bytecode cached, as installed),
at least 3 times, and prints the minimum and the median wall time, the median CPU time (user +
system, hb and its whole process tree) and the peak RSS of the run (the largest process of that
tree; benchmarks/harness.py's launcher, a child subreaper, so sandboxed processes count). The baseline, timed side by side in the same run after a `sync`, is
`python -c pass`: the interpreter's start-up, the floor for any command written in Python.

Goals (issue 11): no-op of the example (`hb -C examples build //env:nlp-gpu` again) <= 0.3 s; no-op
of 10,000 genrules <= 0.5 s; cold analysis (`hb aquery //...` with an empty cache) of 50,000
targets <= 8 s, and linear in targets (50k / 10k about 5).

    python3 benchmarks/core.py [--reps 3] [--targets 10000] [--skip ROW ...]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from harness import Cmd, CommandFailed, run_once  # noqa: E402

from hermetic_build.filecache import RACY_SECONDS  # noqa: E402

ROWS = ("example", "noop", "cold")


def generate(root: Path, targets: int, per_package: int = 100) -> None:
    """`targets` genrules in packages of `per_package`; each reads a source file, nine in ten also
    depend on the previous target, so the graph has chains as well as breadth."""
    root.mkdir(parents=True)
    (root / "hermetic.toml").write_text("")
    for p in range(max(1, targets // per_package)):
        pkg = root / f"p{p:03d}"
        pkg.mkdir()
        lines = []
        for t in range(per_package):
            (pkg / f"in{t}.txt").write_text(f"{p} {t}\n")
            srcs = [f'"in{t}.txt"'] + ([f'":t{t - 1}"'] if t % 10 and t else [])
            lines.append(f'genrule(name = "t{t}", srcs = [{", ".join(srcs)}], outs = ["o{t}"], '
                         f'cmd = "cat $(SRCS) > $(OUTS)")')
        (pkg / "BUILD.hermetic").write_text("\n".join(lines) + "\n")


def _env(cache: Path | None) -> dict:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure hb as installed: with its bytecode cached
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if cache is not None:
        env["HB_CACHE_DIR"] = str(cache)
    return env


def run(argv: list[str], cwd: Path, cache: Path | None) -> tuple[float, float, int]:
    """One whole process: (wall s, CPU s of its whole tree, peak RSS KiB), through harness.run_once."""
    try:
        measured = run_once(Cmd(tuple(argv), cwd, _env(cache)))
    except CommandFailed as exc:
        raise SystemExit(str(exc)) from None
    return measured.seconds, measured.cpu, measured.max_rss_kib


def hb(*args: str) -> list[str]:
    return [sys.executable, "-m", "hermetic_build.cli", *args]


BASELINE = [sys.executable, "-c", "pass"]


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def measure(self, name: str, reps: int, once, *, goal: float | None = None) -> dict:
        """`once()` -> (wall, cpu, rss) of one run; the baseline runs after a sync, interleaved."""
        hb_runs, base_runs = [], []
        for _ in range(reps):
            subprocess.run(["sync"], check=True)
            base_runs.append(run(BASELINE, REPO, None))
            hb_runs.append(once())
        walls = [r[0] for r in hb_runs]
        row = {
            "name": name, "min": min(walls), "median": statistics.median(walls),
            "cpu": statistics.median(r[1] for r in hb_runs), "rss": max(r[2] for r in hb_runs),
            "base": statistics.median(r[0] for r in base_runs), "goal": goal, "reps": reps,
        }
        self.rows.append(row)
        verdict = "" if goal is None else f"  goal <= {goal:g} s: {'met' if row['median'] <= goal else 'MISSED'}"
        print(f"{name:<44} min {row['min']:7.3f} s  median {row['median']:7.3f} s  cpu {row['cpu']:7.3f} s  "
              f"peak RSS {row['rss'] / 1024:6.0f} MiB  x{row['median'] / row['base']:6.1f} baseline "
              f"({row['base']:.3f} s){verdict}", flush=True)
        return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--targets", type=int, default=10000, help="the smaller workspace (the bigger: 5x)")
    parser.add_argument("--skip", nargs="*", default=[], choices=ROWS)
    args = parser.parse_args()
    reps = max(3, args.reps)
    tmp = Path(tempfile.mkdtemp(prefix="hb-bench-core-"))
    table = Table()
    print(f"baseline: `{Path(sys.executable).name} -c pass` (interpreter start-up), timed after a sync next to "
          f"each hb run; hb runs as `python -m hermetic_build.cli` subprocesses, {reps} repetitions each; "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
    try:
        if "example" not in args.skip:
            cache = tmp / "cache-example"
            examples = REPO / "examples"
            run(hb("-C", str(examples), "build", "-q", "//env:nlp-gpu"), REPO, cache)
            time.sleep(RACY_SECONDS + 0.2)  # outputs older than the racy window: the next build records
            for _ in range(2):
                run(hb("-C", str(examples), "build", "-q", "//env:nlp-gpu"), REPO, cache)
            table.measure("no-op: hb -C examples build //env:nlp-gpu", reps,
                          lambda: run(hb("-C", str(examples), "build", "-q", "//env:nlp-gpu"), REPO, cache), goal=0.3)
        small, big = args.targets, args.targets * 5
        ws_small, ws_big = tmp / f"ws{small}", tmp / f"ws{big}"
        generate(ws_small, small)
        if "noop" not in args.skip:
            cache = tmp / "cache-noop"
            started = time.perf_counter()
            run(hb("build", "-q", "//..."), ws_small, cache)
            print(f"(full build of {small} genrules, cold cache: {time.perf_counter() - started:.1f} s)", flush=True)
            time.sleep(RACY_SECONDS + 0.2)
            for _ in range(2):
                run(hb("build", "-q", "//..."), ws_small, cache)
            table.measure(f"no-op: hb build //... ({small} genrules)", reps,
                          lambda: run(hb("build", "-q", "//..."), ws_small, cache), goal=0.5)
        if "cold" not in args.skip:
            generate(ws_big, big)
            counter = iter(range(10 ** 6))

            def cold(ws: Path):
                cache = tmp / f"cache-cold-{next(counter)}"  # empty: no analysis cache, no file digests
                try:
                    return run(hb("aquery", "//..."), ws, cache)
                finally:
                    shutil.rmtree(cache, ignore_errors=True)

            a = table.measure(f"cold analysis: hb aquery //... ({small} targets)", reps, lambda: cold(ws_small))
            b = table.measure(f"cold analysis: hb aquery //... ({big} targets)", reps, lambda: cold(ws_big), goal=8.0)
            print(f"ratio {big} / {small} targets: wall (median) {b['median'] / a['median']:.2f}x, "
                  f"CPU {b['cpu'] / a['cpu']:.2f}x, peak RSS {b['rss'] / a['rss']:.2f}x (linear: 5x)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
