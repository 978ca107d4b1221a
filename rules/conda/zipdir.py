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

import struct
import zipfile

MAX_DIRECTORY_BYTES = 64 << 20  # the largest real wheels' directories are a few MiB
MAX_WHEEL_ENTRIES = 200_000  # of a wheel, wherever one is read (real ones: tens of thousands at most)
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
