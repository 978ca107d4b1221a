"""zipdir.zip_directory_problem: a zip's central directory measured before zipfile reads it whole (a
wheel or .conda is outside bytes: a directory of millions of entries cost hb's process gigabytes)."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rules.conda.zipdir import zip_directory_problem

ZIPDIR_DIR = str(Path(__file__).resolve().parents[3] / "rules" / "conda")


def directory_bomb(path: Path, entries: int, comment: int = 0) -> Path:
    """A zip64 archive of `entries` central directory records (each `comment` bytes of comment) and
    no data: what zipfile turns into one object per record before anyone can count them."""
    cd = bytearray()
    for i in range(entries):
        name = b"m%07d" % i
        cd += struct.pack(zipfile.structCentralDir, zipfile.stringCentralDir, 20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0,
                          len(name), 0, comment, 0, 0, 0, 0) + name + b"c" * comment
    with open(path, "wb") as f:
        f.write(cd)
        f.write(struct.pack(zipfile.structEndArchive64, zipfile.stringEndArchive64, 44, 45, 45, 0, 0,
                            entries, entries, len(cd), 0))
        f.write(struct.pack(zipfile.structEndArchive64Locator, zipfile.stringEndArchive64Locator, 0, len(cd), 1))
        f.write(struct.pack(zipfile.structEndArchive, zipfile.stringEndArchive, 0, 0, 0xFFFF, 0xFFFF,
                            0xFFFFFFFF, 0xFFFFFFFF, 0))
    return path


def _zip(members: int, *, comment: bytes = b"", prefix: bytes = b"", method=zipfile.ZIP_DEFLATED,
         force_zip64: bool = False) -> bytes:
    buf = io.BytesIO()
    buf.write(prefix)
    with zipfile.ZipFile(buf, "w", method) as zf:
        zf.comment = comment
        for i in range(members):
            info = zipfile.ZipInfo(f"pkg/m{i}.py")
            info.comment = b"x" * (i % 3)
            info.extra = b""
            with zf.open(info, "w", force_zip64=force_zip64) as f:
                f.write(b"data %d\n" % i)
    return buf.getvalue()


@pytest.mark.parametrize("kwargs", [{}, {"comment": b"archive comment"}, {"prefix": b"#!/bin/sh\nexec python\n"},
                                    {"method": zipfile.ZIP_STORED}, {"force_zip64": True}])
def test_a_zip_zipfile_reads_is_accepted_and_counted_as_zipfile_counts(kwargs):
    data = _zip(70, **kwargs)
    assert zip_directory_problem(io.BytesIO(data), 70) is None
    assert len(zipfile.ZipFile(io.BytesIO(data)).infolist()) == 70
    assert zip_directory_problem(io.BytesIO(data), 69) == "it has more than 69 entries"


def test_what_is_refused_before_zipfile_reads_it(tmp_path):
    bomb = directory_bomb(tmp_path / "bomb.whl", 2_001)
    with open(bomb, "rb") as f:
        assert zip_directory_problem(f, 2_000) == "it has more than 2,000 entries"
    wide = directory_bomb(tmp_path / "wide.whl", 100, comment=60_000)  # 6 MB of comments in 100 entries
    with open(wide, "rb") as f:
        assert zip_directory_problem(f, 1_000, max_bytes=1 << 20) == \
            "its central directory is 6,005,400 bytes (at most 1,048,576)"  # 100 x (46 + 8 + 60,000)
    assert zip_directory_problem(io.BytesIO(b"not a zip at all"), 10).startswith("it is not a zip archive")
    data = bytearray(_zip(5))
    second = data.index(zipfile.stringCentralDir, data.index(zipfile.stringCentralDir) + 1)
    data[second:second + 4] = b"PK\x09\x09"  # zipfile: "Bad magic number for central directory"
    assert zip_directory_problem(io.BytesIO(bytes(data)), 10) == "its central directory has a record that is not one"
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(bytes(data)))


def test_a_million_entry_directory_costs_no_memory_to_refuse(tmp_path):
    """zipfile alone took ~490 MiB for this 54 MB archive (and 1.4 GB for 3 million entries)."""
    bomb = directory_bomb(tmp_path / "bomb.whl", 1_000_000)
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from zipdir import zip_directory_problem; "
            "print(zip_directory_problem(open(sys.argv[1], 'rb'), 200_000)); "
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))")
    out = subprocess.run([sys.executable, "-c", code, str(bomb), ZIPDIR_DIR], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0] == "its central directory is 54,000,000 bytes (at most 67,108,864)" or \
        out[0] == "it has more than 200,000 entries"
    assert int(out[1]) < 64 << 10, f"peak RSS {int(out[1]) >> 10} MiB"  # VmHWM: this program's own, in kB
