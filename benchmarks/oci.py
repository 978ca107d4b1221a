"""OCI benchmark, measured side by side in one run:

1. layer build throughput: hb's OciLayers action over a staged environment vs `tar -c | pigz` (and
   `tar -c | gzip`) over the same tree (goal: hb / pigz throughput >= 0.8);
2. image size vs the naive build: one layer holding the environment plus the package cache left in
   (the archives and their extracted copies, as `conda install` leaves them);
3. bytes re-pushed to a registry after bumping one package vs the image's total;
4. the no-op time of `hb build //env:nlp-gpu` in examples/.

    python3 benchmarks/oci.py [--packages 30 --files 300 --file-kib 16]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from conda import action_seconds, build_text_package, synthetic_channel, timed
from support import Registry, Workspace, copy_example, env_workspace


def shell_seconds(cmd: str) -> tuple[float, int]:
    """Seconds and output bytes of a shell pipeline writing to stdout."""
    started = time.perf_counter()
    out = subprocess.run(["bash", "-c", f"{cmd} | wc -c"], check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - started, int(out.strip())


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
    tmp = Path(tempfile.mkdtemp(prefix="hb-bench-oci-"))
    servers = []
    try:
        root = tmp / "synthetic"
        channel = synthetic_channel(root, args.packages, args.files, args.file_kib)
        installed = args.packages * args.files * args.file_kib * 1024
        print(f"synthetic environment: {args.packages} packages, {installed / 2**20:.1f} MiB in "
              f"{args.packages * args.files} files")
        image_build = 'oci_image(name = "img", env = ":env")\n'

        # 1. layer throughput: each run in a fresh cache, so every layer is written
        hb_runs = []
        for n in range(args.runs):
            ws = Workspace(tmp / f"ws{n}", tmp / f"cache{n}")
            ws.root.mkdir()
            (ws.root / "hermetic.toml").write_text("")
            env_workspace(ws, channel.as_uri(), [f"bench-pkg{i}" for i in range(args.packages)], extra_build=image_build)
            ws.hb("lock", "//env:lock")
            ws.hb("build", "//env:env", timeout=900)
            proc = ws.hb("build", "//env:img", timeout=900)
            seconds = action_seconds(proc.stderr, "OciLayers")
            assert len(seconds) == 1, proc.stderr
            hb_runs.append(seconds[0])
        tree = ws.root / "hb-out/env/env/env"
        pigz = [shell_seconds(f"tar -c -C {tree} . | pigz -6") for _ in range(args.runs)]
        gzip = [shell_seconds(f"tar -c -C {tree} . | gzip -6") for _ in range(args.runs)]
        h = statistics.median(hb_runs)
        p = statistics.median(s for s, _ in pigz)
        g = statistics.median(s for s, _ in gzip)
        total, layers = image_bytes(ws.root / "hb-out/env/img")
        print(f"layer build: hb OciLayers {h:.2f} s ({installed / 2**20 / h:.1f} MiB/s, {layers} layers, gzip -6, "
              f"2 threads) vs tar|pigz -6 {p:.2f} s vs tar|gzip -6 {g:.2f} s: throughput ratio hb/pigz "
              f"{p / h:.2f} (goal >= 0.8: {'met' if p / h >= 0.8 else 'MISSED'}), hb/gzip {g / h:.2f}")

        # 2. size vs the naive single layer with the package cache left in
        naive = tmp / "naive"
        shutil.copytree(tree, naive / "opt/env", symlinks=True)
        pkgs = naive / "opt/env/pkgs"
        pkgs.mkdir()
        from rattler.package_streaming import extract

        for archive in sorted((channel / "noarch").glob("*.conda")):
            shutil.copy(archive, pkgs)
            extract(str(archive), str(pkgs / archive.name[: -len(".conda")]))
        _, naive_bytes = shell_seconds(f"tar -c -C {naive} . | pigz -6")
        print(f"image size: hb {total / 2**20:.2f} MiB in {layers} layers vs naive single layer with the package "
              f"cache left in {naive_bytes / 2**20:.2f} MiB: ratio {total / naive_bytes:.2f}")

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
        print(f"push after bumping one package: {sent / 2**20:.2f} MiB uploaded of {total2 / 2**20:.2f} MiB "
              f"({100 * sent / total2:.1f}%; {re.search(r'[0-9]+ blobs uploaded.*', second.stderr).group(0)}); "
              f"first push: {re.search(r'[0-9]+ blobs uploaded.*', first.stderr).group(0)}")

        # 4. no-op build of the example's GPU image
        example = copy_example(tmp / "examples", tmp / "cache-example")
        example.hb("lock", "//...", timeout=900)
        example.hb("build", "//env:nlp-gpu", timeout=900)
        example.hb("build", "//env:nlp-gpu")
        noop = [timed(lambda: example.hb("build", "//env:nlp-gpu"))[0] for _ in range(5)]
        start = [timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True))[0] for _ in range(5)]
        print(f"no-op hb build //env:nlp-gpu: median {statistics.median(noop):.2f} s "
              f"(python start-up alone {statistics.median(start):.2f} s)")
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
