"""Make a freshly built conda package bit-identical on every machine and every run, as Debian's
strip-nondeterminism does for its packages: py-rattler-build stamps the build time into zip entry
dates, tar member mtimes, info/index.json's `timestamp`, and the channel URL (a path of the build
machine) into info/about.json. Everything else (file contents, modes, order, paths.json with its
sha256 of each file) is kept as it was built.

Standalone on purpose (the standard library and zstandard): channel_worker.py runs it in the sandbox.
"""

from __future__ import annotations

import bz2
import io
import json
import os
import tarfile
import zipfile

ZIP_FLOOR = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can hold
ZSTD_LEVEL = 19


def normalise_package(path: str, source_date_epoch: int) -> None:
    """Rewrite the package at path in place (atomically) with fixed dates and metadata."""
    if path.endswith(".conda"):
        data = _normalised_conda(path, source_date_epoch)
    elif path.endswith(".tar.bz2"):
        with open(path, "rb") as f:
            raw = bz2.decompress(f.read())
        data = bz2.compress(_normalised_tar(raw, source_date_epoch), 9)
    else:
        return
    tmp = f"{path}.normalising"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _normalised_conda(path: str, source_date_epoch: int) -> bytes:
    import time

    import zstandard

    date = max(ZIP_FLOOR, time.gmtime(source_date_epoch)[:6])
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".tar.zst"):
                raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
                tar = _normalised_tar(raw, source_date_epoch)
                data = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, threads=0).compress(tar)
            entry = zipfile.ZipInfo(info.filename, date_time=date)
            entry.compress_type = zipfile.ZIP_STORED
            entry.external_attr = 0o100644 << 16
            entry.create_system = 3
            dst.writestr(entry, data)
    return out.getvalue()


def _normalised_tar(raw: bytes, source_date_epoch: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as src, \
            tarfile.open(fileobj=out, mode="w:", format=tarfile.PAX_FORMAT) as dst:
        for member in src.getmembers():
            content = src.extractfile(member).read() if member.isfile() else None
            if member.name == "info/index.json" and content is not None:
                content = _index_json(content, source_date_epoch)
            elif member.name == "info/about.json" and content is not None:
                content = _about_json(content)
            member.mtime = source_date_epoch
            member.uid = member.gid = 0
            member.uname = member.gname = ""
            member.pax_headers = {}
            if content is not None:
                member.size = len(content)
                dst.addfile(member, io.BytesIO(content))
            else:
                dst.addfile(member)
    return out.getvalue()


def _index_json(content: bytes, source_date_epoch: int) -> bytes:
    index = json.loads(content)
    # kept (not dropped) even at 0: an index without one stamps its own `indexed_timestamp`
    index["timestamp"] = source_date_epoch * 1000
    return (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()


def _about_json(content: bytes) -> bytes:
    about = json.loads(content)
    about.pop("channels", None)  # the build's own channel: a path on the build machine
    return (json.dumps(about, indent=2, sort_keys=True) + "\n").encode()
