"""A zip's central directory, measured before zipfile reads it.

zipfile.ZipFile reads the whole central directory into memory and makes an object of every entry
before anyone can count them: a 162 MB "wheel" of 3 million empty entries took 1.4 GB and 19 s of CPU
to refuse, and the directory's size is whatever the archive says (an entry may carry 64 KiB each of
name, extra field and comment). zip_directory_problem walks the directory that zipfile would read (its
own end-of-directory record, then record by record as it does) with fixed-size reads, and says why the
archive is refused before zipfile sees it.

Only the standard library: the sandboxed workers import this file beside them (stage_worker.py,
check_worker.py via archive.py)."""

from __future__ import annotations

import os
import stat
import struct
import zipfile

MAX_DIRECTORY_BYTES = 64 << 20  # the largest real wheels' directories are a few MiB
MAX_WHEEL_ENTRIES = 200_000  # of a wheel, wherever one is read (real ones: tens of thousands at most)
MIN_UNPACK_LIMIT = 64 << 20  # a wheel may always expand to this, whatever max_unpack_ratio says
# what the stage's installer reads whole from a wheel's .dist-info and parses in memory, at most: the
# unpack limit bounds only the total (64 MiB, or 1000 times the wheel's size), and parsing costs many
# times the bytes (a 690 KB wheel's 256 MiB WHEEL file took the stage 8 GB and 96 s; 6 MiB of
# entry_points.txt sections 1.1 GB). Real ones: WHEEL ~100 bytes, entry_points.txt some KiB, RECORD
# a few MiB for the largest wheels (torch: 1.6 MiB).
MAX_READ_WHOLE = {"WHEEL": 1 << 20, "entry_points.txt": 1 << 20, "RECORD": 32 << 20}
MAX_READ_WHOLE_OTHER = 1 << 20
_RECORD = struct.Struct(zipfile.structCentralDir)  # 46 bytes, then name, extra field and comment


def zip_directory_problem(fp, max_entries: int, max_bytes: int = MAX_DIRECTORY_BYTES) -> str | None:
    """Why zipfile must not read the central directory of the open binary file fp (more than
    max_entries entries, more than max_bytes bytes, a record that is not one), or None. The directory
    is found as zipfile finds it (zipfile._EndRecData, zip64 included), so both read the same bytes."""
    end = zipfile._EndRecData(fp)
    if end is None:
        return "it is not a zip archive (no end of central directory record)"
    size, offset = end[zipfile._ECD_SIZE], end[zipfile._ECD_OFFSET]
    if size > max_bytes:
        return f"its central directory is {size:,} bytes (at most {max_bytes:,})"
    start = end[zipfile._ECD_LOCATION] - size  # where zipfile starts reading it (prepended data allowed)
    if end[zipfile._ECD_SIGNATURE] == zipfile.stringEndArchive64:
        start -= zipfile.sizeEndCentDir64 + zipfile.sizeEndCentDir64Locator
    if start < 0 or offset < 0:
        return "its central directory lies outside the file"
    fp.seek(start)
    entries = walked = 0
    while walked < size:
        record = fp.read(_RECORD.size)
        if len(record) != _RECORD.size or record[:4] != zipfile.stringCentralDir:
            return "its central directory has a record that is not one"
        fields = _RECORD.unpack(record)
        variable = (fields[zipfile._CD_FILENAME_LENGTH] + fields[zipfile._CD_EXTRA_FIELD_LENGTH]
                    + fields[zipfile._CD_COMMENT_LENGTH])
        fp.seek(variable, 1)
        walked += _RECORD.size + variable
        entries += 1
        if entries > max_entries:
            return f"it has more than {max_entries:,} entries"
    return None


def wheel_member_problem(name: str) -> str | None:
    """Why a zip member name is not a safe relative path, or None."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return "is not a relative POSIX path"
    if any(ord(c) < 32 for c in name):
        return "has a control character"
    parts = name.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "has an empty, '.' or '..' component"
    return None


def metadata_header(readline, limit: int):
    """The header of a core-metadata file (a wheel's METADATA) as email's parser reads it, as pip and
    importlib.metadata read it: its lines up to the first blank one (`\n` or `\r\n`), read with
    readline(n), parsed by email.parser.HeaderParser (which also ends lines at a lone `\r`). The stage's
    check of a wheel's Name and Version and layering's name for its layer both read it here, so both
    see the same header. None when it is longer than `limit` bytes."""
    import email.parser

    lines, size = [], 0
    while True:
        line = readline(limit + 1 - size)
        size += len(line)
        if line in (b"", b"\n", b"\r\n"):
            break
        if size > limit:
            return None
        lines.append(line)
    return email.parser.HeaderParser().parsestr(b"".join(lines).decode("utf-8", "replace"))


def read_whole_problem(path: str, size: int) -> str | None:
    """Why the .dist-info member `path` (dist-info/name) of `size` bytes is too large to be read
    whole, or None."""
    limit = MAX_READ_WHOLE.get(path.rsplit("/", 1)[-1], MAX_READ_WHOLE_OTHER)
    if size > limit:
        return f"its {path} is {size:,} bytes, more than the {limit:,} a wheel's may have (it is read whole)"
    return None


def wheel_problem(path, filename: str, max_ratio: int) -> tuple[str, bool] | None:
    """Why the wheel at `path` is refused, and whether only its size is (a larger max_unpack_ratio
    would let it through), or None: its directory measured before zipfile reads it, members with safe
    relative names, regular files or directories only, unique, expanding to at most
    max(MIN_UNPACK_LIMIT, max_ratio x its size), one .dist-info/RECORD, the .dist-info files read whole
    within MAX_READ_WHOLE. No member is decompressed.
    The fetch's check (archive.check_wheel) and the stage worker, where the bytes are unpacked (the
    fetch's result may come from a shared cache), ask the same question here."""
    where = f"wheel {filename}"
    try:
        with open(path, "rb") as f:
            problem = zip_directory_problem(f, MAX_WHEEL_ENTRIES)
        if problem:
            return f"{where} is refused: {problem}", False
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        return f"{where} is not a zip archive: {exc}", False
    compressed = os.path.getsize(path)
    limit = max(MIN_UNPACK_LIMIT, max_ratio * compressed)
    seen, total, records = set(), 0, []
    for info in infos:
        problem = wheel_member_problem(info.filename)
        if problem:
            return f"{where}: member {info.filename!r} {problem}", False
        key = info.filename.rstrip("/")
        if key in seen:
            return f"{where}: member {key!r} appears twice", False
        seen.add(key)
        mode = info.external_attr >> 16
        if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # no type bits: a file
            return f"{where}: member {key!r} is not a regular file or directory (mode {oct(mode)})", False
        total += info.file_size
        if key.endswith(".dist-info/RECORD") and key.count("/") == 1:
            records.append(key)
        top, _, rest = key.partition("/")
        if top.endswith(".dist-info") and rest in MAX_READ_WHOLE:
            problem = read_whole_problem(key, info.file_size)
            if problem:
                return f"{where}: {problem}", False
    if total > limit:
        return (f"{where} expands to {total} bytes, more than {limit} (max_unpack_ratio {max_ratio} x "
                f"{compressed} compressed bytes)"), True
    if len(records) != 1:
        return f"{where} has {len(records)} .dist-info/RECORD files (a wheel has exactly one)", False
    return None
