"""Output collection benchmark: whole `hb build` processes (cold cache each time) of an action that
writes a 1,000-file directory output, and of a genrule that writes one 200 MB file.

Measures what collecting outputs into the CAS costs (hashing, moving, tree blobs). Median of N runs.

    python3 benchmarks/collect.py [--runs 3] [--hb-root DIR]

--hb-root runs another checkout of hb (e.g. the commit before a change), for before/after figures.
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

RULE_MODULE = '''
from hermetic_build.api import DefaultInfo, attr, rule


def _impl(ctx):
    out = ctx.declare_directory("tree")
    ctx.actions.run_shell(
        cmd=f"for d in $(seq 0 9); do mkdir -p {out.path}/d$d; for f in $(seq 0 99); do "
            f"echo file $d $f $RANDOM > {out.path}/d$d/f$f; done; done",
        inputs=[], outputs=[out], mnemonic="ManyFiles")
    return [DefaultInfo(files=(out,))]


many_files = rule("many_files", _impl, attrs={"n": attr.int()})
'''


def generate(root: Path) -> None:
    root.mkdir(parents=True)
    (root / "hermetic.toml").write_text('rule_modules = ["rules", "benchrules"]\n')
    (root / "benchrules.py").write_text(RULE_MODULE)
    (root / "BUILD.hermetic").write_text(
        'many_files(name = "tree")\n'
        'genrule(name = "big", outs = ["big.bin"], cmd = "head -c 200000000 /dev/urandom > $(OUTS)")\n')


def timed_build(root: Path, cache: Path, hb_root: Path, target: str) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(root / "hb-out", ignore_errors=True)
    env = {**os.environ, "HB_CACHE_DIR": str(cache), "PYTHONPATH": f"{hb_root}{os.pathsep}{root}",
           "XDG_CONFIG_HOME": str(root / ".config")}  # `hb trust` below records there, not in yours
    subprocess.run([sys.executable, "-m", "hermetic_build.cli", "trust"], cwd=root, env=env, check=True,
                   capture_output=True)  # the rule module of the generated workspace
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "hermetic_build.cli", "build", "-q", target], cwd=root,
                          env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"hb build {target} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hb-root", type=Path, default=REPO)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="hb-bench-collect-"))
    try:
        root = tmp / "ws"
        generate(root)
        for target, what in (("//:tree", "directory output of 1,000 files"), ("//:big", "one 200 MB file")):
            times = [timed_build(root, tmp / "cache", args.hb_root, target) for _ in range(args.runs)]
            print(f"{what}: median {statistics.median(times):.2f} s over {args.runs} runs "
                  f"({', '.join(f'{t:.2f}' for t in times)})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
