"""OCI benchmark, measured side by side in one run (whole processes as a user runs them, harness.py:
>= 3 runs, min and median wall time, peak RSS of each row, `sync` before each timed run):

1. layer build throughput: `hb build //env:img` of a staged synthetic environment, only the layer and image
   actions re-run (hermetic.toml's source_date_epoch changes before each run), vs `tar -c | pigz -6` (and
   `tar -c | gzip -6`) of the same tree (goal: hb / pigz throughput >= 0.8);
2. image size vs the naive image: one layer holding the staged prefix as a careful Dockerfile leaves it
   (no package cache), i.e. the bytes of `tar -c | pigz -6` of the tree;
3. bytes re-pushed to a registry after bumping one package vs the image's total;
4. the no-op `hb build //env:nlp-gpu` in examples/ vs the Python start-up floor (`python -c pass`).

    python3 benchmarks/oci.py [--packages 30 --files 300 --file-kib 16 --runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from conda import action_seconds, build_text_package, synthetic_channel
from harness import Bench, Cmd
from support import Registry, Workspace, copy_example, env_workspace


def bump_package(channel: Path, root: Path, index: int) -> None:
    """Add version 1.1 of bench-pkg<index> (one file changed) to the channel."""
    from rules.conda.channel import index_channel

    src = root / "src" / f"pkg{index}"
    (src / "f0.txt").write_text("bumped " + (src / "f0.txt").read_text()[7:])
    build_text_package(channel, root, index, "1.1")
    index_channel(channel)


def image_bytes(layout: Path) -> tuple[int, int]:
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((layout / "blobs/sha256" / index["manifests"][0]["digest"].split(":")[1]).read_text())
    return sum(layer["size"] for layer in manifest["layers"]) + manifest["config"]["size"], len(manifest["layers"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=30)
    parser.add_argument("--files", type=int, default=300)
    parser.add_argument("--file-kib", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = str(REPO)  # every hb this script starts runs this tree
    tmp = Path(tempfile.mkdtemp(prefix="hb-bench-oci-"))
    servers = []
    hb = (sys.executable, "-m", "hermetic_build.cli")
    try:
        root = tmp / "synthetic"
        channel = synthetic_channel(root, args.packages, args.files, args.file_kib)
        installed = args.packages * args.files * args.file_kib * 1024
        image_build = 'oci_image(name = "img", env = ":env")\n'

        # 1. layer throughput: the environment staged once (untimed); each run changes source_date_epoch,
        # which only the layer and image actions depend on, so every layer is written again
        ws = Workspace(tmp / "ws", tmp / "cache")
        ws.root.mkdir()
        (ws.root / "hermetic.toml").write_text("")
        env_workspace(ws, channel.as_uri(), [f"bench-pkg{i}" for i in range(args.packages)], extra_build=image_build)
        ws.hb("lock", "//env:lock")
        ws.hb("build", "//env:env", "//env:img", timeout=900)
        env = {**ws.env(), "PYTHONPATH": str(REPO)}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        tree = ws.root / "hb-out/env/env/env"
        bench = Bench(f"oci: layers of a synthetic environment ({args.packages} packages, "
                      f"{installed / 2**20:.0f} MiB in {args.packages * args.files} files)")

        def new_epoch(i: int) -> None:
            (ws.root / "hermetic.toml").write_text(f"source_date_epoch = {1_000_000 + i}\n")

        hb_row = bench.measure("hb build //env:img (layers + image)", Cmd((*hb, "build", "//env:img"), ws.root, env),
                               runs=args.runs, before=new_epoch, timeout=900)
        inner = []
        for run in hb_row.runs:
            seconds = action_seconds(run.stderr, "OciLayers")
            assert len(seconds) == 1 and not action_seconds(run.stderr, "CondaStage"), run.stderr
            inner.append(seconds[0])
        pigz = bench.measure("tar -c | pigz -6", Cmd.shell(f"tar -c -C {tree} . | pigz -6 | wc -c"), runs=args.runs,
                             baseline=f"tar of the same staged tree piped into pigz -6 ({os.cpu_count()} threads), "
                                      "output counted by wc: one naive layer")
        gzip = bench.measure("tar -c | gzip -6", Cmd.shell(f"tar -c -C {tree} . | gzip -6 | wc -c"), runs=args.runs,
                             baseline="the same with single-threaded gzip -6")
        throughput = pigz.median / hb_row.median
        bench.ratios.append(("throughput hb / tar|pigz (goal >= 0.8: "
                             f"{'met' if throughput >= 0.8 else 'MISSED'})", "median", throughput))
        bench.ratios.append(("throughput hb / tar|gzip", "median", gzip.median / hb_row.median))
        total, layers = image_bytes(ws.root / "hb-out/env/img")
        bench.note(f"inside hb, the OciLayers action itself: median {statistics.median(inner):.2f} s "
                   f"({installed / 2**20 / statistics.median(inner):.1f} MiB/s, {layers} layers, gzip -6); the "
                   "rest of the whole process is start-up, analysis, the image action and publishing to hb-out/")

        # 2. size vs the naive single layer of the prefix (no package cache)
        naive_bytes = int(pigz.last.stdout.strip())
        bench.note(f"image size: hb {total / 2**20:.2f} MiB in {layers} layers (+ config) vs naive single layer of "
                   f"the prefix, no package cache {naive_bytes / 2**20:.2f} MiB: ratio {total / naive_bytes:.3f}")

        # 3. bytes re-pushed after bumping one package
        registry = Registry(tmp / "registry")
        servers.append(registry)
        first = ws.hb("push", "//env:img", f"{registry.host}/bench/img:v1")
        bump_package(channel, root, 0)
        ws.hb("lock", "//env:lock", "--update", "bench-pkg0")
        ws.hb("build", "//env:img", timeout=900)
        total2, _ = image_bytes(ws.root / "hb-out/env/img")
        second = ws.hb("push", "//env:img", f"{registry.host}/bench/img:v2")
        sent = int(re.search(r"blobs uploaded \((\d+) bytes\)", second.stderr).group(1))
        bench.note(f"push after bumping one package: {sent / 2**20:.2f} MiB uploaded of {total2 / 2**20:.2f} MiB "
                   f"({100 * sent / total2:.1f}%; {re.search(r'[0-9]+ blobs uploaded.*', second.stderr).group(0)}); "
                   f"first push: {re.search(r'[0-9]+ blobs uploaded.*', first.stderr).group(0)}; a naive "
                   f"single-layer image re-pushes its whole layer ({naive_bytes / 2**20:.2f} MiB)")
        print(bench.markdown(), flush=True)

        # 4. no-op build of the example's GPU image
        example = copy_example(tmp / "examples", tmp / "cache-example")
        example.hb("lock", "//...", timeout=900)
        example.hb("build", "//env:nlp-gpu", timeout=900)
        example.hb("build", "//env:nlp-gpu")
        ex_env = {**example.env(), "PYTHONPATH": str(REPO)}
        ex_env.pop("PYTHONDONTWRITEBYTECODE", None)
        noop = Bench("oci: no-op build of the example's GPU image")
        row = noop.measure("hb build //env:nlp-gpu, no-op", Cmd((*hb, "build", "//env:nlp-gpu"), example.root, ex_env),
                           runs=max(5, args.runs))
        floor = noop.measure("python -c pass", Cmd((sys.executable, "-c", "pass"), example.root, ex_env),
                             runs=max(5, args.runs), baseline="the same interpreter starting and exiting: the floor "
                             "of any Python command")
        noop.ratio(row, floor)
        print(noop.markdown(), flush=True)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
