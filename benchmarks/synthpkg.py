"""Synthetic noarch conda packages written directly (a .conda zip holding zstd tars of pkg/ and info/),
for benchmarks that need hundreds of packages or one huge file: py-rattler-build takes about a
second per package. The archives are ordinary packages: index.json, paths.json (sha256 and size of
every file) and info/files, which hb's fetch check and rattler.install read like any other."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tarfile
import zipfile
from pathlib import Path

import zstandard

_DATE = (1980, 1, 1, 0, 0, 0)


def _add_tar_zst(archive: zipfile.ZipFile, arcname: str, members: list[tuple[str, bytes | Path]]) -> None:
    """members: (name, bytes or a host file streamed in); written in a temp file, then stored."""
    with archive.open(zipfile.ZipInfo(arcname, _DATE), "w") as dest:
        with zstandard.ZstdCompressor(level=1).stream_writer(dest, closefd=False) as zst, \
                tarfile.open(fileobj=zst, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.mode, info.mtime = 0o644, 0
                if isinstance(data, bytes):
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                else:
                    info.size = os.path.getsize(data)
                    with open(data, "rb") as f:
                        tar.addfile(info, f)


def _sha256(data: bytes | Path) -> str:
    if isinstance(data, bytes):
        return hashlib.sha256(data).hexdigest()
    sha = hashlib.sha256()
    with open(data, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def write_package(channel: Path, name: str, files: dict[str, bytes | Path], version: str = "1.0") -> Path:
    """channel/noarch/<name>-<version>-0.conda holding `files` (relative path -> content)."""
    stem = f"{name}-{version}-0"
    paths = [{"_path": rel, "path_type": "hardlink", "sha256": _sha256(data),
              "size_in_bytes": len(data) if isinstance(data, bytes) else os.path.getsize(data)}
             for rel, data in sorted(files.items())]
    index = {"name": name, "version": version, "build": "0", "build_number": 0, "depends": [],
             "noarch": "generic", "subdir": "noarch", "license": "MIT", "timestamp": 0}
    info = [("info/index.json", json.dumps(index, sort_keys=True).encode()),
            ("info/paths.json", json.dumps({"paths": paths, "paths_version": 1}).encode()),
            ("info/files", "".join(p["_path"] + "\n" for p in paths).encode())]
    out = channel / "noarch" / f"{stem}.conda"
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo("metadata.json", _DATE), json.dumps({"conda_pkg_format_version": 2}))
        _add_tar_zst(archive, f"pkg-{stem}.tar.zst", sorted(files.items()))
        _add_tar_zst(archive, f"info-{stem}.tar.zst", info)
    return out


def text_channel(root: Path, packages: int, files: int, file_kib: int) -> Path:
    """root/channel: `packages` packages bench-pkg<i> of `files` text files of file_kib KiB each."""
    from rules.conda.channel import index_channel

    channel = root / "channel"
    rng = random.Random(1)
    words = [f"w{rng.getrandbits(40):x}" for _ in range(5000)]
    for i in range(packages):
        content = {}
        for j in range(files):
            text = " ".join(rng.choice(words) for _ in range(file_kib * 1024 // 12))
            content[f"share/pkg{i}/f{j}.txt"] = text[: file_kib * 1024].encode()
        write_package(channel, f"bench-pkg{i}", content)
    index_channel(channel)
    return channel


def big_file_channel(root: Path, size: int) -> Path:
    """root/channel: one package bench-big holding one file of `size` random bytes."""
    from rules.conda.channel import index_channel

    channel = root / "channel"
    root.mkdir(parents=True, exist_ok=True)
    data = root / "big.bin"
    rng = random.Random(2)
    with open(data, "wb") as f:
        left = size
        while left:
            n = min(left, 1 << 24)
            f.write(rng.randbytes(n))
            left -= n
    write_package(channel, "bench-big", {"share/big/big.bin": data})
    data.unlink()
    index_channel(channel)
    return channel
