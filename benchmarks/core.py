"""Core benchmark: analysis of 10,000 genrule targets, and no-op rebuild times.

Prints measurements taken side by side in one run, and their ratios. Goals (issue 2):
no-op build of the example workspace <= 0.3 s; analysis of 10,000 targets <= 3 s.

    python3 benchmarks/core.py [--targets 10000] [--skip-full-build]
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


def generate(root: Path, targets: int, per_package: int = 100) -> None:
    """`targets` genrules in packages of `per_package`; each reads a source file, every tenth
    also depends on the previous target, so the graph has chains as well as breadth."""
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


def hb(root: Path, cache: Path, *args) -> float:
    env = {**os.environ, "HB_CACHE_DIR": str(cache)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # measure hb as installed: with its bytecode cached
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hermetic_build.cli", *args], cwd=root, env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"hb {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def best_of(n, fn) -> float:
    return min(fn() for _ in range(n))


def analysis_time(root: Path, cache: Path) -> tuple[float, int]:
    os.environ["HB_CACHE_DIR"] = str(cache)
    import rules  # noqa: F401
    from hermetic_build.analysis import Analyzer
    from hermetic_build.rule import registered_rules
    from hermetic_build.workspace import find_workspace

    started = time.perf_counter()
    result = Analyzer(find_workspace(root), registered_rules()).analyze(["//..."])
    return time.perf_counter() - started, len(result.actions)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", type=int, default=10000)
    parser.add_argument("--skip-full-build", action="store_true", help="measure analysis only")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hb-bench-core-"))
    try:
        big, small = tmp / "big", tmp / "small"
        generate(big, args.targets)
        generate(small, 10, per_package=10)
        cache = tmp / "cache"

        startup = best_of(5, lambda: _time([sys.executable, "-c", "pass"]))
        analysis, n_actions = analysis_time(big, cache)
        print(f"analysis of {args.targets} targets ({n_actions} actions), in-process: {analysis:.2f} s "
              f"(goal <= 3 s: {'met' if analysis <= 3 else 'MISSED'})")

        hb(small, cache, "build", "//...")
        small_noop = statistics.median(hb(small, cache, "build", "-q", "//...") for _ in range(7))
        example = REPO / "examples"
        hb(example, cache, "build", "//data:stats")
        example_noop = statistics.median(hb(example, cache, "build", "-q", "//data:stats") for _ in range(7))
        print(f"python start-up (python -c pass): {startup:.3f} s")
        print(f"no-op build, 10-target workspace: {small_noop:.3f} s "
              f"({small_noop / startup:.1f}x python start-up)")
        print(f"no-op build, examples //data:stats: {example_noop:.3f} s "
              f"(goal <= 0.3 s: {'met' if example_noop <= 0.3 else 'MISSED'})")
        if args.skip_full_build:
            return
        full = hb(big, cache, "build", "-q", "//...")
        print(f"full build of {args.targets} targets (cold cache): {full:.1f} s "
              f"({full / n_actions * 1000:.1f} ms per action)")
        first_noop = hb(big, cache, "build", "-q", "//...")
        noop = statistics.median(hb(big, cache, "build", "-q", "//...") for _ in range(3))
        os.utime(big / "p000" / "BUILD.hermetic")  # invalidates the cached analysis
        reanalyse = hb(big, cache, "build", "-q", "//...")
        print(f"no-op build of {args.targets} targets: {noop:.2f} s (first after build: {first_noop:.2f} s); "
              f"with re-analysis (a BUILD file touched): {reanalyse:.2f} s")
        print(f"ratio no-op {args.targets} targets / no-op 10 targets: {noop / small_noop:.1f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _time(cmd) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
