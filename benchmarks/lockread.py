"""Reading a large lock file, as `conda_env` does at analysis: hb's reader (lockread.py, yaml's C loader
into frozen records) vs conda-lock's own parser (pydantic models) on the same file, each a whole
process (`python -c`), median of --repeat runs, peak RSS of each. The file: a real conda-lock.yml
(tests/data/locks, poprox-recommender: 1,055 entries, 3 platforms) grown to about 1.4 MB (800 packages
on each of 4 platforms) by renaming copies of its entries (goal: <= 1 s).

    python3 benchmarks/lockread.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import copy
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "tests/data/locks/CCRI-POPROX_poprox-recommender__conda-lock.yml"
PLATFORMS = ["linux-64", "osx-arm64", "osx-64", "win-64"]


def big_lock(dest: Path, per_platform: int = 800) -> None:
    doc = yaml.safe_load(SOURCE.read_text())
    conda = [p for p in doc["package"] if p.get("manager", "conda") == "conda"]
    packages = []
    for platform in PLATFORMS:
        for i in range(per_platform):
            entry = copy.deepcopy(conda[i % len(conda)])  # no shared objects: no YAML anchors
            entry["name"] = f"{entry['name']}-{i}"  # one entry per name and platform, as conda-lock writes
            entry["platform"] = platform
            packages.append(entry)
    doc["package"] = packages
    doc["metadata"]["platforms"] = PLATFORMS
    doc["metadata"]["content_hash"] = {p: "0" * 64 for p in PLATFORMS}
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))


READERS = {
    "hb lockread": "from rules.conda.lockread import read_lock, select; import pathlib, sys; "
                   "lock = read_lock(pathlib.Path(sys.argv[1])); [select(lock, p) for p in lock.metadata.platforms]",
    "conda-lock parser": "from conda_lock.lockfile import parse_conda_lock_file; import pathlib, sys; "
                         "parse_conda_lock_file(pathlib.Path(sys.argv[1]))",
    "python startup + imports only": "import yaml, rules.conda.lockfile",
}


def run(code: str, path: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, check=True)
    seconds = time.perf_counter() - started
    return seconds, max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hb-bench-lock-") as tmp:
        path = Path(tmp) / "conda-lock.yml"
        big_lock(path)
        print(f"lock file: {path.stat().st_size / 1e6:.2f} MB, 800 packages x {len(PLATFORMS)} platforms")
        results = {}
        for name, code in READERS.items():
            runs = [run(code, path) for _ in range(args.repeat)]
            results[name] = statistics.median(r[0] for r in runs), min(r[0] for r in runs), runs[-1][1]
        for name, (median, best, rss) in results.items():
            print(f"{name:30s} median {median:6.3f} s  min {best:6.3f} s  (peak RSS of the children so far {rss:.0f} MiB)")
        hb, baseline = results["hb lockread"][0], results["conda-lock parser"][0]
        print(f"hb / conda-lock: {hb / baseline:.3f} (goal: hb <= 1 s; it is {hb:.2f} s)")


if __name__ == "__main__":
    main()
