"""Chain-of-custody benchmark, measured side by side in one run (whole processes, as a user runs them):

1. what SBOM + provenance add to an image build: a cold `hb build //env:nlp //env:nlp-gpu //env:nlp-sbom
   //env:nlp-gpu-sbom //env:nlp-gpu-provenance` vs a cold `hb build` of the images alone, each in a
   fresh copy of the example with an empty cache (goal: under 5 % more);
2. `hb verify //env:nlp //env:nlp-gpu` (every action rebuilt from nothing) vs the cold build of the
   same images (goal: <= 1.1).

--repeat A/B pairs (default 8), alternating which of the two runs first; `sync` before each timed run.
Per pair it prints both wall times and both CPU times and their differences, with the 1-minute load
average before and after the pair. CPU = user + system seconds of the whole process tree: hb and every
descendant (harness.py's launcher is a child subreaper, so the sandboxes count even where bubblewrap
leaves its namespace's init unreaped), rattler-build and every other child included. On a shared machine a whole-process wall time swings by tens of
percent, so the median of the per-pair differences (with their spread and how many pairs came out
positive) and the CPU seconds added are the numbers to read; the custody actions' own durations (hb's
progress lines) show how much of it is the SBOM and provenance work itself. --no-verify leaves out
the hb verify runs (the SBOM question only, in less time). Peak RSS is that of the largest process of the tree.
hb's own modules are byte-compiled first (python -m compileall), as an installed hb is, so that a
PYTHONDONTWRITEBYTECODE environment does not make every run compile them again.

--together starts the two builds of a pair at the same moment instead (no hb verify): both then see the
same load from everything else on the machine, which on a shared machine drifts by more than the
difference being measured between two runs a minute apart (each build gets about half of what the
machine has left, so the absolute times are not a lone cold build's).

    python3 benchmarks/chain.py [--repeat 8] [--together] [--no-verify]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from harness import Cmd, CommandFailed, Started  # noqa: E402
from support import copy_example  # noqa: E402

IMAGES = ["//env:nlp", "//env:nlp-gpu"]
CUSTODY = ["//env:nlp-sbom", "//env:nlp-gpu-sbom", "//env:nlp-gpu-provenance"]
CUSTODY_ACTION = re.compile(r"^\[\d+/\d+\] (?:OciSbom|OciProvenance) .*\((\d+\.\d+)s\)$", re.MULTILINE)
SUMMARY = re.compile(r"^(\d+) actions executed, (\d+) cached", re.MULTILINE)


@dataclass(frozen=True)
class Run:
    wall: float  # seconds, spawn to exit
    cpu: float  # user + system seconds of hb's whole process tree
    rss_mib: float  # peak RSS of the largest process of the tree
    custody_actions: float  # summed durations of the OciSbom / OciProvenance actions it ran
    executed: int  # actions hb ran (its summary line); a cold build caches none
    cached: int


def start_hb(example, *args) -> Started:
    return Started(Cmd((sys.executable, "-m", "hermetic_build.cli", *args), example.root, example.env()))


def finish_hb(started: Started) -> Run:
    """Wait for one hb process: its wall time, and the rusage (CPU, peak RSS) of its whole tree."""
    try:
        run = started.finish()
    except CommandFailed as exc:
        raise SystemExit(str(exc)) from None
    custody = sum(float(m) for m in CUSTODY_ACTION.findall(run.stderr))
    executed, cached = map(int, SUMMARY.findall(run.stderr)[-1]) if SUMMARY.search(run.stderr) else (-1, -1)
    return Run(run.seconds, run.cpu, run.max_rss_kib / 1024, custody, executed, cached)


def run_hb(example, *args) -> Run:
    subprocess.run(["sync"], check=True)
    return finish_hb(start_hb(example, *args))


def stats(values: list[float], unit: str = "s") -> str:
    return (f"min {min(values):6.2f} {unit}  median {statistics.median(values):6.2f} {unit}  "
            f"(runs: {', '.join(f'{v:.2f}' for v in values)})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=8)
    parser.add_argument("--no-verify", action="store_true", help="leave out the hb verify runs")
    parser.add_argument("--together", action="store_true", help="start the two builds of a pair at once")
    args = parser.parse_args()
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "hermetic_build"), str(REPO / "rules")],
                   check=True)
    images: list[Run] = []
    custody: list[Run] = []
    verify: list[Run] = []
    loads: list[tuple[float, float]] = []  # 1-minute load average before and after each pair
    with tempfile.TemporaryDirectory(prefix="hb-bench-chain-") as tmp:
        for i in range(args.repeat):  # A/B pairs, alternating which runs first
            order = [("images", IMAGES), ("custody", IMAGES + CUSTODY)]
            examples = {name: copy_example(Path(tmp) / f"{name}-{i}" / "examples", Path(tmp) / f"{name}-{i}" / "cache")
                        for name, _ in order}
            load_before = os.getloadavg()[0]
            if args.together:
                subprocess.run(["sync"], check=True)
                started = {name: start_hb(examples[name], "build", *labels)
                           for name, labels in (order if i % 2 == 0 else order[::-1])}
                images.append(finish_hb(started["images"]))
                custody.append(finish_hb(started["custody"]))
            else:
                for name, labels in order if i % 2 == 0 else order[::-1]:
                    (images if name == "images" else custody).append(run_hb(examples[name], "build", *labels))
                    if name == "images" and not args.no_verify:
                        verify.append(run_hb(examples[name], "verify", *IMAGES))
            loads.append((load_before, os.getloadavg()[0]))
            a, b = images[-1], custody[-1]
            print(f"pair {i + 1}: images {a.wall:6.2f} s / {a.cpu:6.2f} CPU s; with SBOMs + provenance "
                  f"{b.wall:6.2f} s / {b.cpu:6.2f} CPU s; added {b.wall - a.wall:+6.2f} s wall, "
                  f"{b.cpu - a.cpu:+5.2f} CPU s (SBOM + provenance actions {b.custody_actions:.2f} s); "
                  f"load {loads[-1][0]:.1f} -> {loads[-1][1]:.1f}; actions executed/cached {a.executed}/{a.cached} "
                  f"and {b.executed}/{b.cached}", flush=True)
    print()
    print("baseline: `hb build //env:nlp //env:nlp-gpu` in a fresh copy of examples/ with an empty cache "
          "(whole process, as a user runs it)" + ("; the two builds of a pair run at the same time" if args.together else ""))
    rows = [("cold build of the example images", images), ("same, with 2 SBOMs and a provenance", custody)]
    for what, runs in rows + ([("hb verify of the images (rebuild from 0)", verify)] if verify else []):
        print(f"{what + ':':44s} wall {stats([r.wall for r in runs])}")
        print(f"{'':44s} CPU  {stats([r.cpu for r in runs])}")
    wall_a = statistics.median(r.wall for r in images)
    cpu_a = statistics.median(r.cpu for r in images)
    for stat in (min, statistics.median):
        a, b = stat(r.wall for r in images), stat(r.wall for r in custody)
        print(f"{stat.__name__:6s} of the runs: SBOM + provenance add {(b / a - 1) * 100:+.1f} % wall (goal < 5 %)"
              + (f"; hb verify = {stat(r.wall for r in verify) / a:.2f}x the cold build (goal <= 1.1)" if verify else ""))
    print("per-pair differences (with SBOMs + provenance minus images alone), as % of the median cold build:")
    print(f"  wall: {spread([b.wall - a.wall for a, b in zip(images, custody)], wall_a)}")
    print(f"  CPU:  {spread([b.cpu - a.cpu for a, b in zip(images, custody)], cpu_a)}")
    print(f"SBOM + provenance actions themselves: median {statistics.median(r.custody_actions for r in custody):.2f} s "
          f"per build (the two SBOMs and the provenance, summed)")
    print(f"load average (1 min) before -> after each pair: {', '.join(f'{a:.1f}->{b:.1f}' for a, b in loads)}; "
          f"{os.cpu_count()} cores")
    print(f"peak RSS of an hb process:                  {max(r.rss_mib for r in images + custody + verify):6.0f} MiB")


def spread(differences: list[float], base: float) -> str:
    """Median, mean, range and sign count of per-pair differences, in seconds and % of `base`."""
    median, mean = statistics.median(differences), statistics.fmean(differences)
    positive = sum(d > 0 for d in differences)
    return (f"median {median:+.2f} s ({median / base * 100:+.1f} %), mean {mean:+.2f} s ({mean / base * 100:+.1f} %), "
            f"range {min(differences):+.2f} .. {max(differences):+.2f} s, {positive}/{len(differences)} pairs > 0 "
            f"(sorted: {', '.join(f'{d:+.2f}' for d in sorted(differences))})")


if __name__ == "__main__":
    main()
