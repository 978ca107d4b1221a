"""Layer building benchmark (issue 11): `hb build` of an image target vs `tar | pigz -6` on the same
staged tree, measured side by side in one run.

Rows:
  (a) one file of --big-mib MiB (default 1024) of realistic bytes (real .so/.a/.py files of this
      machine concatenated: partly compressible), placed by oci_files into an image;
  (b) a --packages (default 300) package conda environment (synthetic noarch packages built with
      py-rattler-build, as benchmarks/oci.py does), layered one layer per package group (100 layers);
  (c) with --huge-mib (e.g. 4096): one file of that size, one repetition, for hb's peak RSS.

Each hb row is the whole `hb build //...:img` process as a user runs it, with the staged tree
(the OciFiles / conda_env actions) already in the cache and the layer and image actions not
(their action-cache entries and layer aliases removed before each run). The baseline is
`tar -C <tree> -cf - . | pigz -6 > out` over the same staged tree: it tars and compresses on every
core, nothing more (no hashing, no cache, no image). `sync` runs before each timed run; >= 3
repetitions, min and median; peak RSS is that of the largest process of the command's tree, and CPU
that of the whole tree, taken by harness.py's launcher (a child subreaper: sandboxes count), one per run.

    python3 benchmarks/layers.py [--big-mib 1024] [--packages 300] [--huge-mib 4096] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from harness import Cmd, Retired, compile_bytecode, run_once, sync  # noqa: E402
from support import Workspace, env_workspace  # noqa: E402

HB_REPO = REPO  # whose hermetic_build and rules the timed `hb build` runs (--hb-repo: e.g. main, for before/after)

def measure(argv: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float, float]:
    """(wall seconds, peak RSS MiB, CPU seconds (user + system) of the command's whole process tree),
    after a `sync`, through harness.run_once."""
    sync()
    run = run_once(Cmd(tuple(argv), cwd, env))
    return run.seconds, run.max_rss_kib / 1024, run.cpu


def realistic_file(path: Path, size: int) -> None:
    """`size` bytes of real binaries and sources of this machine, concatenated (cyclically)."""
    sources = []
    for root in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/python3", "/usr/bin", "/usr/share/doc"):
        for dirpath, _dirs, files in os.walk(root):
            for name in sorted(files):
                p = os.path.join(dirpath, name)
                if os.path.isfile(p) and not os.path.islink(p):
                    sources.append(p)
    sources.sort()
    written = 0
    with open(path, "wb") as out:
        while written < size:
            for src in sources:
                try:
                    data = Path(src).read_bytes()[: size - written]
                except OSError:
                    continue
                out.write(data)
                written += len(data)
                if written >= size:
                    break


def forget_layers(cache: Path, blobs: bool = False) -> None:
    """Remove the action-cache entries of the layer and image actions and the layer aliases, so
    the next build writes every layer again; everything else (the staged tree) stays cached.
    blobs=True (--forget-blobs) also removes the blobs those entries name (the layer blobs, the
    image's config, manifest and index, their directory blobs), as in a store that never held them:
    otherwise the build replaces each identical layer blob already in the CAS (a rename over it)."""
    from hermetic_build.digest import Digest
    from hermetic_build.store.local import LocalStore
    from hermetic_build.tree import walk_tree

    store = LocalStore(cache) if blobs else None
    for entry in (cache / "ac").glob("*/*"):
        try:
            data = json.loads(entry.read_text())
        except (OSError, ValueError):
            continue
        mnemonic = (data.get("metadata") or {}).get("mnemonic")
        alias = any(o.get("path", "").startswith("oci-layer/") for o in data.get("outputs", []))
        if mnemonic in ("OciLayers", "OciImage") or alias:
            entry.unlink()
            if store is not None and mnemonic in ("OciLayers", "OciImage"):
                for out in data.get("outputs", []):
                    digest = Digest.parse(out["digest"])
                    doomed = [digest]
                    if out.get("kind") == "dir":
                        doomed += [e.digest for _, e in walk_tree(store, digest) if e.kind != "symlink"]
                    for d in doomed:
                        store.blob_path(d).unlink(missing_ok=True)
    # and the no-op record (hermetic_build/noop.py): with hb-out intact and no input changed, the next
    # build would otherwise be answered from it without running any action
    for record in (cache / "workspaces").glob("*/noop.pickle"):
        record.unlink()


def row(name: str, ws: Workspace, tree: Path, label: str, runs: int, *, baseline: bool = True,
        forget_blobs: bool = False) -> dict:
    env = {**ws.env(), "PYTHONPATH": str(HB_REPO)}
    argv = [sys.executable, "-m", "hermetic_build.cli", "build", label]
    hb_runs, pigz_runs, outs = [], [], []
    for i in range(runs):  # interleaved, so load changes hit both alike
        forget_layers(ws.cache, blobs=forget_blobs)
        hb_runs.append(measure(argv, ws.root, env))
        if baseline:
            # a new file each run, as hb writes new blobs: `>` over the last run's file would first
            # truncate it, which on ext4 (auto_da_alloc) makes the close wait for its blocks
            outs.append(ws.root.parent / f"{ws.root.name}-pigz-{i}.tar.gz")
            pigz_runs.append(measure(["bash", "-c", f"tar -C {tree} -cf - . | pigz -6 > {outs[-1]}"], ws.root))
    for out in outs:  # a handful of files: deleting them frees too few inodes to matter (see Retired)
        out.unlink(missing_ok=True)
    return {"name": name, "hb": hb_runs, "pigz": pigz_runs}


def show(r: dict) -> None:
    def stats(runs):
        secs = [s for s, _, _ in runs]
        return min(secs), statistics.median(secs), max(m for _, m, _ in runs), statistics.median(c for *_, c in runs)

    hmin, hmed, hrss, hcpu = stats(r["hb"])
    line = (f"{r['name']:<34} hb min {hmin:6.2f} s median {hmed:6.2f} s peak RSS {hrss:7.0f} MiB "
            f"CPU {hcpu:6.1f} s")
    if r["pigz"]:
        pmin, pmed, prss, pcpu = stats(r["pigz"])
        line += (f" | tar|pigz -6 min {pmin:6.2f} s median {pmed:6.2f} s peak RSS {prss:5.0f} MiB CPU {pcpu:6.1f} s"
                 f" | throughput hb/pigz (median) {pmed / hmed:.2f} (min) {pmin / hmin:.2f}"
                 f" goal >= 0.8: {'met' if pmed / hmed >= 0.8 else 'MISSED'}; CPU pigz/hb {pcpu / hcpu:.2f}")
    print(line, flush=True)


def file_workspace(tmp: Path, name: str, mib: int, warm: bool = True) -> tuple[Workspace, Path]:
    ws = Workspace(tmp / name, tmp / f"{name}-cache")
    ws.root.mkdir(parents=True)
    ws.write("hermetic.toml", "")
    realistic_file(ws.root / "blob.bin", mib << 20)
    ws.write("BUILD.hermetic", 'oci_files(name = "files", srcs = ["blob.bin"], prefix = "/data")\n'
                               'oci_image(name = "img", layers = [":files"])\n')
    if warm:
        ws.hb("build", "//:img", timeout=3600)
    tree = tmp / f"{name}-tree"  # the staged tree, as OciFiles placed it under the image's prefix
    (tree / "data").mkdir(parents=True)
    os.link(ws.root / "blob.bin", tree / "data/blob.bin")
    return ws, tree


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--packages", type=int, default=300)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--file-kib", type=int, default=8)
    parser.add_argument("--huge-mib", type=int, default=0, help="e.g. 4096 for the peak-RSS row (one run)")
    parser.add_argument("--huge-baseline", action="store_true", help="time tar|pigz on the --huge-mib tree too")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["big", "env", "huge"], action="append")
    parser.add_argument("--keep", type=Path, help="work here and keep the generated channel for the next run")
    parser.add_argument("--hb-repo", type=Path, default=REPO, help="run hb from this checkout (before/after)")
    parser.add_argument("--forget-blobs", action="store_true",
                        help="also remove the layer and image blobs from the cache before each hb run (see forget_layers)")
    args = parser.parse_args()
    global HB_REPO
    HB_REPO = args.hb_repo.resolve()
    compile_bytecode(HB_REPO)  # timed processes start as an installed hb does
    os.environ["PYTHONPATH"] = str(HB_REPO)  # the untimed warm-up builds too
    only = set(args.only or ["big", "env", "huge"])
    tmp = args.keep.resolve() if args.keep else Path(tempfile.mkdtemp(prefix="hb-bench-layers-"))
    # nothing is deleted before or between the timed runs, only moved aside, and deleted at the end: see Retired
    retired = Retired(tmp)
    if args.keep:
        for name in ("big", "big-cache", "big-tree", "huge", "huge-cache", "huge-tree", "env", "env-cache"):
            if name.split("-")[0] in only:
                retired.retire(tmp / name)
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start; "
          f"{subprocess.run(['pigz', '--version'], capture_output=True, text=True).stdout.strip()}", flush=True)
    try:
        if "big" in only and args.big_mib:
            ws, tree = file_workspace(tmp, "big", args.big_mib)
            show(row(f"(a) one {args.big_mib} MiB file", ws, tree, "//:img", args.runs, forget_blobs=args.forget_blobs))
            retired.retire(ws.root.parent / "big-cache", ws.root, tree)
        if "env" in only and args.packages:
            from conda import synthetic_channel

            root = tmp / "synthetic"
            channel = root / "channel"
            if not (root / f"done-{args.packages}-{args.files}-{args.file_kib}").exists():
                retired.retire(root)
                channel = synthetic_channel(root, args.packages, args.files, args.file_kib)
                (root / f"done-{args.packages}-{args.files}-{args.file_kib}").touch()
            ws = Workspace(tmp / "env", tmp / "env-cache")
            ws.root.mkdir()
            ws.write("hermetic.toml", "")
            env_workspace(ws, channel.as_uri(), [f"bench-pkg{i}" for i in range(args.packages)],
                          extra_build='oci_image(name = "img", env = ":env")\n')
            ws.hb("lock", "//env:lock", timeout=3600)
            ws.hb("build", "//env:env", "//env:img", timeout=3600)
            tree = ws.root / "hb-out/env/env/env"
            files = sum(1 for _ in tree.rglob("*"))
            show(row(f"(b) {args.packages}-package env ({files} paths)", ws, tree, "//env:img", args.runs,
                     forget_blobs=args.forget_blobs))
        if "huge" in only and args.huge_mib:
            # no warm-up build: the one measured build also copies the file into the tree (OciFiles)
            ws, tree = file_workspace(tmp, "huge", args.huge_mib, warm=False)
            show(row(f"(c) one {args.huge_mib} MiB file, cold (RSS row)", ws, tree, "//:img", 1,
                     baseline=args.huge_baseline))
    finally:
        retired.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end", flush=True)


if __name__ == "__main__":
    main()
