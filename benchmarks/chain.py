"""Chain-of-custody benchmark, measured side by side in one run (whole processes, as a user runs them):

1. what SBOM + provenance add to an image build: a cold `hb build //env:nlp //env:nlp-sbom
   //env:nlp-gpu-provenance ...` vs a cold `hb build` of the images alone, each in a fresh copy of the
   example with an empty cache (goal: under 5 % more);
2. `hb verify //env:nlp //env:nlp-gpu` (every action rebuilt from nothing) vs the cold build of the
   same images (goal: <= 1.1).

Min and median of --repeat runs (default 3), A/B pairs alternating which runs first; `sync` before each
timed run; peak RSS of the hb processes (resource.getrusage(RUSAGE_CHILDREN).ru_maxrss).

    python3 benchmarks/chain.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support import copy_example  # noqa: E402

IMAGES = ["//env:nlp", "//env:nlp-gpu"]
CUSTODY = ["//env:nlp-sbom", "//env:nlp-gpu-sbom", "//env:nlp-gpu-provenance"]


CPU: list[tuple[str, float]] = []  # (what, user + system CPU seconds of hb and everything it waited for)


def run_hb(example, *args) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of this child) of one hb process; its CPU seconds go to CPU."""
    subprocess.run(["sync"], check=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hermetic_build.cli", *args], cwd=example.root, env=example.env(),
                   check=True, capture_output=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    CPU.append((args[0] + (" +custody" if CUSTODY[0] in args else ""), cpu))
    return seconds, max(before.ru_maxrss, after.ru_maxrss) / 1024


def cold(labels: list[str], tmp: Path, name: str):
    example = copy_example(tmp / name / "examples", tmp / name / "cache")
    return example, run_hb(example, "build", *labels)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    images, custody, verify = [], [], []
    peak = 0.0
    with tempfile.TemporaryDirectory(prefix="hb-bench-chain-") as tmp:
        for i in range(args.repeat):  # A/B pairs, alternating which runs first
            order = [("images", IMAGES), ("custody", IMAGES + CUSTODY)]
            for name, labels in order if i % 2 == 0 else order[::-1]:
                example, (seconds, rss) = cold(labels, Path(tmp), f"{name}-{i}")
                (images if name == "images" else custody).append(seconds)
                peak = max(peak, rss)
                if name == "images":
                    seconds, rss = run_hb(example, "verify", *IMAGES)
                    verify.append(seconds)
                    peak = max(peak, rss)
    print("baseline: `hb build //env:nlp //env:nlp-gpu` in a fresh copy of examples/ with an empty cache "
          "(whole process, as a user runs it)")
    for what, values in (("cold build of the example images", images),
                         ("same, with 2 SBOMs and a provenance", custody),
                         ("hb verify of the images (rebuild from 0)", verify)):
        print(f"{what + ':':44s} min {min(values):6.2f} s  median {statistics.median(values):6.2f} s  "
              f"(runs: {', '.join(f'{v:.2f}' for v in values)})")
    for stat in (min, statistics.median):
        a, b, v = stat(images), stat(custody), stat(verify)
        print(f"{stat.__name__:6s}: SBOM + provenance add {(b / a - 1) * 100:+.1f} % (goal < 5 %); "
              f"hb verify = {v / a:.2f}x the cold build (goal <= 1.1)")
    cpu_images = [c for what, c in CPU if what == "build"]
    cpu_custody = [c for what, c in CPU if what == "build +custody"]
    a, b = statistics.median(cpu_images), statistics.median(cpu_custody)
    print(f"CPU seconds (user+sys, hb and its workers), median: images {a:.2f} s, with SBOMs + provenance "
          f"{b:.2f} s -> {(b / a - 1) * 100:+.1f} %")
    print(f"peak RSS of an hb process:                  {peak:6.0f} MiB")


if __name__ == "__main__":
    main()
