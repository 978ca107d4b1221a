"""A real-size ML image: an environment shaped like a CUDA ML stack, built by hb into a CPU and a GPU image.

    python3 benchmarks/mlsize.py [--scale 1.0] [--runs 3] [--workdir /tmp/hb-mlsize] [--keep]

What it generates (scale 1.0; sizes and package counts scale linearly, --scale 0.1 for a quick run), as real
.conda archives written here (zip of info-*.tar.zst and pkg-*.tar.zst with index.json and paths.json carrying
each file's sha256) in a local file:// channel indexed with rattler:
- `ml-torch` in two builds of one version: `cpu_0` (libtorch_cpu.so 1.0 GiB) and `cuda124_100` (build number
  100, needs `__cuda >=12`: libtorch_cpu.so 1.0 GiB + libtorch_cuda.so 1.4 GiB, depending on ml-cublas
  1.1 GiB, ml-cudnn 1.2 GiB, ml-nccl 0.25 GiB, ml-cuda-runtime 0.1 GiB), each with 1,500 Python files;
- `ml-mkl` (0.6 GiB of .so, both variants), `python` (libpython 30 MiB + 3,000 stdlib-like files);
- 400 small Python packages `py-pkg000`... of 120 files each (0.5-16 KiB), 48,000 files.
The GPU environment is ~6 GiB unpacked in ~52,500 files, the CPU one ~2 GiB; both solve one environment.yml,
the GPU one with `cuda = "12.4"` (as examples/env does), so they share python, mkl and the 400 small packages.

Bytes: a shared library is a sequence of 1 MiB blocks; 75% are slices of real ELF shared objects from
/usr/lib/x86_64-linux-gnu (libLLVM, libz3, x265, ...) at random offsets, each passed through one of 256 random
byte permutations (bytes.translate: an LZ77/Huffman compressor sees the same structure and entropy as the real
code, but no two blocks are identical), and 25% are random bytes (like the already-compressed fatbin payloads of
CUDA libraries). Python files are real standard-library sources with a unique header line. The script
prints the resulting gzip -6 ratio of a sample of each.

It reports (whole `hb` processes as a user runs them, harness.py): cold build of both images (fresh cache)
with its peak RSS, the warm no-op, a one-package bump (a new version of py-pkg000, re-locked untimed, then
the rebuild timed; layer bytes rewritten vs reused), the image bytes (compressed layers of each image and the
unique bytes of CPU + GPU together) vs `tar -C prefix -cf - . | pigz -6` of the same staged trees, and vs a
naive Dockerfile-like image (one layer holding the prefix, no package cache: the pigz stream, per image,
nothing shared, rewritten whole on any bump).

Everything goes under --workdir; the directory is deleted at the end only if this script created it (and
--keep is not given). A channel already generated there for the same scale is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Bench, Cmd, Retired, Row, run_once, sync  # noqa: E402

GiB, MiB, KiB = 1 << 30, 1 << 20, 1 << 10
BLOCK = MiB
RANDOM_FRACTION = 0.25
EPOCH = 1_700_000_000  # fixed timestamps: the generated channel is the same on every run
VPKGS = ["__unix", "__linux=5.10", "__glibc=2.36"]
SITE = "lib/python3.11/site-packages"


# ----- content ------------------------------------------------------------------------------------------


class Content:
    """Deterministic file bytes: ELF-like blocks for shared libraries, Python sources for .py files."""

    def __init__(self):
        libdir = Path("/usr/lib/x86_64-linux-gnu")
        pool, total = [], 0
        for path in sorted(libdir.glob("*.so*"), key=lambda p: (-p.stat().st_size, p.name)):
            if path.is_symlink() or not path.is_file() or "icudata" in path.name or path.stat().st_size < MiB:
                continue
            data = path.read_bytes()
            if data[:4] != b"\x7fELF":
                continue
            pool.append(data)
            total += len(data)
            if total > 160 * MiB:
                break
        if total < 16 * MiB:
            raise SystemExit(f"need >= 16 MiB of ELF shared objects under {libdir} to draw bytes from, found {total}")
        self.elf = b"".join(pool)
        rng = random.Random(7)
        self.tables = []
        for _ in range(256):
            perm = list(range(256))
            rng.shuffle(perm)
            self.tables.append(bytes.maketrans(bytes(range(256)), bytes(perm)))
        import sysconfig

        stdlib = Path(sysconfig.get_paths()["stdlib"])
        sources = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 2 * KiB)
        self.python = b"\n".join(p.read_bytes() for p in sources)

    def elf_blocks(self, size: int, seed: int):
        rng = random.Random(seed)
        left = size
        while left:
            n = min(BLOCK, left)
            if rng.random() < RANDOM_FRACTION:
                yield rng.randbytes(n)
            else:
                start = rng.randrange(len(self.elf) - n)
                yield self.elf[start:start + n].translate(self.tables[rng.randrange(256)])
            left -= n

    def text(self, size: int, seed: int, header: str) -> bytes:
        rng = random.Random(seed)
        head = f"# {header}\n".encode()
        start = rng.randrange(len(self.python) - size)
        return (head + self.python[start:start + size])[:size]


@dataclass(frozen=True)
class FileSpec:
    path: str
    size: int
    kind: str  # "elf" or "py"
    seed: int


@dataclass(frozen=True)
class PackageSpec:
    name: str
    version: str
    build: str
    build_number: int
    depends: tuple[str, ...]
    files: tuple[FileSpec, ...]

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.conda"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


class _Reader(io.RawIOBase):
    """A file's generated bytes as a readable stream, hashed (sha256) as tarfile reads them."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.chunk = b""
        self.pos = 0
        self.sha256 = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        parts, want = [], n
        while want != 0:
            if self.pos == len(self.chunk):
                self.chunk, self.pos = next(self.chunks, b""), 0
                if not self.chunk:
                    break
            take = len(self.chunk) - self.pos if want < 0 else min(want, len(self.chunk) - self.pos)
            parts.append(self.chunk[self.pos:self.pos + take])
            self.pos += take
            want = want - take if want > 0 else want
        out = b"".join(parts)
        self.sha256.update(out)
        return out


def write_conda(channel: Path, spec: PackageSpec, content: Content) -> Path:
    """A real .conda archive, streamed: the pkg tar.zst is written while the files are generated."""
    import zstandard

    subdir = channel / "linux-64"
    subdir.mkdir(parents=True, exist_ok=True)
    stem = spec.filename[: -len(".conda")]
    tmp = channel / ".tmp"
    tmp.mkdir(exist_ok=True)
    pkg_path, info_path = tmp / f"pkg-{stem}.tar.zst", tmp / f"info-{stem}.tar.zst"
    paths = []
    cctx = zstandard.ZstdCompressor(level=3, threads=2)
    with open(pkg_path, "wb") as raw, cctx.stream_writer(raw, closefd=False) as zst, \
            tarfile.open(fileobj=zst, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for f in sorted(spec.files, key=lambda f: f.path):
            if f.kind == "elf":
                reader = _Reader(content.elf_blocks(f.size, f.seed))
            else:
                reader = _Reader([content.text(f.size, f.seed, f"{spec.name} {spec.version} {f.path}")])
            info = tarfile.TarInfo(f.path)
            info.size, info.mtime, info.mode = f.size, EPOCH, 0o755 if f.kind == "elf" else 0o644
            tar.addfile(info, reader)
            paths.append({"_path": f.path, "path_type": "hardlink", "sha256": reader.sha256.hexdigest(),
                          "size_in_bytes": f.size})
    index = {"arch": "x86_64", "build": spec.build, "build_number": spec.build_number, "depends": list(spec.depends),
             "license": "BSD-3-Clause", "name": spec.name, "platform": "linux", "subdir": "linux-64",
             "timestamp": EPOCH * 1000, "version": spec.version}
    metadata = {"info/index.json": json.dumps(index, indent=2, sort_keys=True).encode(),
                "info/paths.json": json.dumps({"paths": paths, "paths_version": 1}, indent=2).encode(),
                "info/files": "".join(p["_path"] + "\n" for p in paths).encode()}
    with open(info_path, "wb") as raw, zstandard.ZstdCompressor(level=19).stream_writer(raw, closefd=False) as zst, \
            tarfile.open(fileobj=zst, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(metadata.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), EPOCH, 0o644
            tar.addfile(info, io.BytesIO(data))
    out = subdir / spec.filename
    with zipfile.ZipFile(out.with_suffix(".partial"), "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(zipfile.ZipInfo("metadata.json", (1980, 1, 1, 0, 0, 0)), '{"conda_pkg_format_version": 2}')
        for component in (info_path, pkg_path):
            zinfo = zipfile.ZipInfo(component.name, (1980, 1, 1, 0, 0, 0))
            zinfo.file_size = component.stat().st_size
            with open(component, "rb") as src, zf.open(zinfo, "w", force_zip64=zinfo.file_size > (1 << 31) - 1) as dst:
                shutil.copyfileobj(src, dst, 4 * MiB)
            component.unlink()
    out.with_suffix(".partial").rename(out)
    return out


# ----- the stack --------------------------------------------------------------------------------------


def _py_files(prefix: str, count: int, seed: int, rng_sizes: random.Random) -> tuple[FileSpec, ...]:
    files = []
    for j in range(count):
        sub = f"sub{j // 20}/" if count > 40 else ""
        size = rng_sizes.randint(512, 16 * KiB)
        files.append(FileSpec(f"{prefix}/{sub}mod{j:04d}.py", size, "py", seed * 100_003 + j))
    return tuple(files)


def _lib(path: str, gib: float, scale: float, seed: int) -> FileSpec:
    return FileSpec(path, max(BLOCK, int(gib * scale * GiB) // BLOCK * BLOCK), "elf", seed)


def stack(scale: float) -> list[PackageSpec]:
    rng = random.Random(11)
    small = max(4, round(400 * scale))
    py = ("python >=3.11,<3.12",)
    pkgs = [
        PackageSpec("python", "3.11.9", "h0_0", 0, (), (
            _lib("lib/libpython3.11.so.1.0", 30 / 1024, scale, 1),
            *_py_files("lib/python3.11", max(100, round(3000 * scale)), 1, rng))),
        PackageSpec("ml-mkl", "2024.2.0", "h0_0", 0, (), (
            _lib("lib/libmkl_core.so.2", 0.35, scale, 2), _lib("lib/libmkl_intel_thread.so.2", 0.25, scale, 3))),
        PackageSpec("ml-cublas", "12.4.5", "h0_0", 0, (), (
            _lib("lib/libcublasLt.so.12", 1.0, scale, 4), _lib("lib/libcublas.so.12", 0.1, scale, 5))),
        PackageSpec("ml-cudnn", "9.1.0", "h0_0", 0, (), (
            _lib("lib/libcudnn_engines_precompiled.so.9", 0.8, scale, 6), _lib("lib/libcudnn_adv.so.9", 0.4, scale, 7))),
        PackageSpec("ml-nccl", "2.21.5", "h0_0", 0, (), (_lib("lib/libnccl.so.2", 0.25, scale, 8),)),
        PackageSpec("ml-cuda-runtime", "12.4.127", "h0_0", 0, (), (
            _lib("lib/libcudart.so.12", 0.02, scale, 9), _lib("lib/libnvrtc.so.12", 0.08, scale, 10))),
    ]
    torch_py = max(50, round(1500 * scale))
    pkgs.append(PackageSpec("ml-torch", "2.4.0", "cpu_0", 0, (*py, "ml-mkl"), (
        _lib(f"{SITE}/torch/lib/libtorch_cpu.so", 1.0, scale, 20),
        *_py_files(f"{SITE}/torch", torch_py, 20, random.Random(20)))))
    pkgs.append(PackageSpec("ml-torch", "2.4.0", "cuda124_100", 100,
                            (*py, "ml-mkl", "ml-cublas", "ml-cudnn", "ml-nccl", "ml-cuda-runtime", "__cuda >=12"), (
        _lib(f"{SITE}/torch/lib/libtorch_cpu.so", 1.0, scale, 21),
        _lib(f"{SITE}/torch/lib/libtorch_cuda.so", 1.4, scale, 22),
        *_py_files(f"{SITE}/torch", torch_py, 20, random.Random(20)))))
    for i in range(small):
        pkgs.append(small_package(i, "1.0"))
    return pkgs


def small_package(i: int, version: str, bump: int = 0) -> PackageSpec:
    files = _py_files(f"{SITE}/py_pkg{i:03d}", 120, 1000 + i, random.Random(1000 + i))
    if bump:  # one file's bytes change, as in a patch release
        files = (FileSpec(files[0].path, files[0].size, "py", 7_000_000 + bump), *files[1:])
    return PackageSpec(f"py-pkg{i:03d}", version, "py_0", 0, ("python >=3.11,<3.12",), files)


def index(channel: Path) -> None:
    from rules.conda.channel import index_channel

    (channel / "noarch").mkdir(parents=True, exist_ok=True)
    index_channel(channel)


def sample_gzip_ratio(content: Content, kind: str) -> float:
    import zlib

    if kind == "elf":
        data = b"".join(content.elf_blocks(64 * MiB, 99))
    else:
        data = b"".join(content.text(8 * KiB, s, f"sample {s}") for s in range(2000))
    return len(zlib.compress(data, 6)) / len(data)


# ----- measuring --------------------------------------------------------------------------------------


BUILD = f"""\
conda_lock(name = "cpu-lock", environment = "environment.yml", platforms = ["linux-64"],
           virtual_packages = {{"linux-64": {VPKGS!r}}})
conda_env(name = "cpu-env", lock = ":cpu-lock", platform = "linux-64", prefix = "/opt/env")
conda_lock(name = "gpu-lock", environment = "environment.yml", platforms = ["linux-64"],
           virtual_packages = {{"linux-64": {VPKGS!r}}}, cuda = "12.4", lockfile = "conda-lock.gpu.yml")
conda_env(name = "gpu-env", lock = ":gpu-lock", platform = "linux-64", prefix = "/opt/env")
oci_image(name = "cpu", env = ":cpu-env")
oci_image(name = "gpu", env = ":gpu-env")
"""


def manifest_layers(layout: Path) -> list[tuple[str, int]]:
    index_json = json.loads((layout / "index.json").read_text())
    digest = index_json["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((layout / "blobs/sha256" / digest).read_text())
    return [(layer["digest"], layer["size"]) for layer in manifest["layers"]]


def tree_stats(tree: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(tree):
        for name in names:
            st = os.lstat(os.path.join(dirpath, name))
            files += 1
            size += st.st_size
    return files, size


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hb-mlsize"))
    parser.add_argument("--keep", action="store_true", help="keep the workdir even if this script created it")
    parser.add_argument("--generate-only", action="store_true", help="write the channel (kept for a later run), measure nothing")
    args = parser.parse_args()
    made = not args.workdir.exists() and not args.generate_only
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        run(args)
    finally:
        if made and not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)


def run(args) -> None:
    work = args.workdir.resolve()
    channel = work / f"channel-{args.scale:g}"
    content = Content()
    specs = stack(args.scale)
    marker = channel / ".complete"
    started = time.perf_counter()
    if not marker.exists():
        shutil.rmtree(channel, ignore_errors=True)
        for spec in specs:
            write_conda(channel, spec, content)
        shutil.rmtree(channel / ".tmp", ignore_errors=True)
        index(channel)
        marker.write_text("")
    bumped = [p for p in (channel / "linux-64").glob("py-pkg000-*.conda") if p.name != small_package(0, "1.0").filename]
    if bumped:  # versions a previous run's bumps added to a reused channel
        for p in bumped:
            p.unlink()
        index(channel)
    archives = sum(p.stat().st_size for p in (channel / "linux-64").glob("*.conda"))
    print(f"channel: {len(specs)} packages, {gib(archives)} of .conda archives ({channel}; generated or reused in "
          f"{time.perf_counter() - started:.0f} s); generated bytes gzip -6 ratio: shared libraries "
          f"{sample_gzip_ratio(content, 'elf'):.2f}, Python files {sample_gzip_ratio(content, 'py'):.2f}", flush=True)
    if args.generate_only:
        return

    ws = work / "ws"
    shutil.rmtree(ws, ignore_errors=True)
    (ws / "env").mkdir(parents=True)
    (ws / "hermetic.toml").write_text("")
    small = [s.name for s in specs if s.name.startswith("py-pkg")]
    deps = "".join(f"  - {d}\n" for d in ["python 3.11.*", "ml-torch", *small])
    (ws / "env/environment.yml").write_text(f"name: ml\nchannels:\n  - {channel.as_uri()}\ndependencies:\n{deps}")
    (ws / "env/BUILD.hermetic").write_text(BUILD)
    cache = work / "cache"
    env = {**os.environ, "HB_CACHE_DIR": str(cache), "PYTHONPATH": str(REPO)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("COLUMNS", None)
    hb = (sys.executable, "-m", "hermetic_build.cli")

    def hb_cmd(*argv: str) -> Cmd:
        return Cmd((*hb, *argv), ws, env)

    shutil.rmtree(cache, ignore_errors=True)
    run_once(hb_cmd("lock", "//env:cpu-lock", "//env:gpu-lock"), timeout=1800)
    gpu_lock = (ws / "env/conda-lock.gpu.yml").read_text()
    assert "cuda124_100" in gpu_lock and "cuda124_100" not in (ws / "env/conda-lock.yml").read_text(), \
        "the GPU lock should pick the CUDA build of ml-torch and the CPU lock the CPU build"
    targets = ("//env:cpu", "//env:gpu")
    bench = Bench(f"mlsize, scale {args.scale:g}")

    retired = Retired(ws.parent)  # the cold runs' caches are moved aside, deleted at the end: see Retired

    def cold(i: int) -> None:
        retired.retire(cache, ws / "hb-out")

    cold_row = bench.measure("hb build //env:cpu //env:gpu, cold (empty cache)", hb_cmd("build", *targets),
                             runs=args.runs, before=cold, timeout=3 * 3600)
    print(f"cold build: min {cold_row.min:.1f} s, median {cold_row.median:.1f} s, peak RSS "
          f"{cold_row.peak_rss_mib:.0f} MiB", flush=True)
    noop = bench.measure("hb build //env:cpu //env:gpu, warm no-op", hb_cmd("build", *targets), runs=max(3, args.runs))

    run_once(hb_cmd("build", "//env:cpu-env", "//env:gpu-env"), timeout=3600)  # publish the staged trees (untimed)
    trees = {v: ws / f"hb-out/env/{v}-env/env" for v in ("cpu", "gpu")}
    stats = {v: tree_stats(t) for v, t in trees.items()}
    layers = {v: manifest_layers(ws / f"hb-out/env/{v}") for v in ("cpu", "gpu")}
    pigz = {}
    for v, tree in trees.items():
        pigz[v] = bench.measure(f"tar -C {v}-prefix -cf - . | pigz -6", Cmd.shell(f"tar -C {tree} -cf - . | pigz -6 | wc -c"),
                                runs=args.runs, baseline=f"one gzip -6 layer of the staged {v} prefix "
                                f"(pigz, {os.cpu_count()} threads), bytes counted by wc")
    pigz_bytes = {v: int(pigz[v].last.stdout.strip()) for v in pigz}
    bench.ratio(cold_row, pigz["gpu"], "hb cold build of both images / tar|pigz of the GPU prefix alone")
    pigz_both = Row("tar|pigz of both prefixes", tuple(
        type(a)(a.seconds + b.seconds, max(a.max_rss_kib, b.max_rss_kib), "", "")
        for a, b in zip(pigz["cpu"].runs, pigz["gpu"].runs)), baseline="the two rows above added run by run: "
        "what a naive single-layer build compresses for the two images")
    bench.add(pigz_both)
    bench.ratio(cold_row, pigz_both, "hb cold build (fetch + stage + layers of both) / tar|pigz of both prefixes")

    # one-package bump: a new py-pkg000 each run, re-locked (untimed), both images rebuilt (timed)
    before_layers = {v: list(layers[v]) for v in layers}
    bump_stats = []

    def bump(i: int) -> None:
        nonlocal before_layers
        if i:
            record_bump(i - 1)
        before_layers = {v: manifest_layers(ws / f"hb-out/env/{v}") for v in ("cpu", "gpu")}
        write_conda(channel, small_package(0, f"1.{i + 1}", bump=i + 1), content)
        shutil.rmtree(channel / ".tmp", ignore_errors=True)
        index(channel)
        run_once(hb_cmd("lock", "//env:cpu-lock", "//env:gpu-lock", "--update", "py-pkg000"), timeout=1800)

    def record_bump(i: int) -> None:
        old = {d for v in before_layers for d, _ in before_layers[v]}
        new = {d: s for v in ("cpu", "gpu") for d, s in manifest_layers(ws / f"hb-out/env/{v}")}
        rewritten = sum(s for d, s in new.items() if d not in old)
        reused = sum(s for d, s in new.items() if d in old)
        bump_stats.append((rewritten, reused, sum(1 for d in new if d not in old), len(new)))

    bump_row = bench.measure("hb build //env:cpu //env:gpu after bumping py-pkg000 (re-locked untimed)",
                             hb_cmd("build", *targets), runs=args.runs, before=bump, timeout=3 * 3600)
    record_bump(args.runs - 1)
    bench.ratio(bump_row, pigz_both, "hb rebuild after a bump / tar|pigz of both prefixes (naive: every byte again)")

    gpu_bytes = sum(s for _, s in layers["gpu"])
    cpu_bytes = sum(s for _, s in layers["cpu"])
    unique = sum(dict(layers["cpu"] + layers["gpu"]).values())
    shared = sum(s for d, s in layers["gpu"] if d in dict(layers["cpu"]))
    naive_both = pigz_bytes["cpu"] + pigz_bytes["gpu"]
    rewritten, reused, n_new, n_all = bump_stats[-1]
    bench.note(f"staged trees: GPU {stats['gpu'][0]:,} files, {gib(stats['gpu'][1])}; CPU {stats['cpu'][0]:,} files, "
               f"{gib(stats['cpu'][1])}; .conda archives in the channel {gib(archives)}")
    bench.note(f"image bytes (compressed layers): hb GPU {gib(gpu_bytes)} in {len(layers['gpu'])} layers "
               f"(tar|pigz -6 of the GPU prefix: {gib(pigz_bytes['gpu'])}, ratio {gpu_bytes / pigz_bytes['gpu']:.3f}); "
               f"hb CPU {gib(cpu_bytes)} in {len(layers['cpu'])} layers (tar|pigz: {gib(pigz_bytes['cpu'])}, ratio "
               f"{cpu_bytes / pigz_bytes['cpu']:.3f})")
    bench.note(f"CPU + GPU together: hb unique bytes {gib(unique)} ({gib(shared)} of layers shared) vs naive "
               f"Dockerfile-like images (one layer of the prefix each, no package cache, nothing shared) "
               f"{gib(naive_both)}: ratio {unique / naive_both:.3f}")
    bench.note(f"bump of py-pkg000 (one file changed), both images: hb rewrote {n_new} of {n_all} distinct layers, "
               f"{rewritten / MiB:.1f} MiB rewritten, {gib(reused)} reused "
               f"({100 * rewritten / (rewritten + reused):.2f}% rewritten; all bumps: "
               + ", ".join(f"{r / MiB:.1f} MiB" for r, *_ in bump_stats)
               + f"); the naive images rewrite both layers whole: {gib(naive_both)}")
    bench.note(f"warm no-op: median {noop.median:.2f} s over {len(noop.runs)} runs")
    print(bench.markdown(), flush=True)
    retired.close()  # after the last timed run (see Retired)


if __name__ == "__main__":
    main()
