"""Checking a conda package archive before anything is extracted from it.

One scan of the archive's tar streams (a .tar.bz2, or a .conda's info and pkg components) proves:
- every path any reader of the package will write or read (tar members, hardlink targets, the
  entries of info/paths.json, info/files and info/has_prefix, noarch entry points, the
  name-version-build of info/index.json, a python package's python_site_packages_path) is a clean
  relative path;
- no such path passes THROUGH a symlink of the archive (so `a/l -> ..` cannot be used to reach
  outside the prefix, however the links are chained), and every symlink, resolved through the
  archive's own links, stays inside the prefix; a hardlink names a regular file of the archive;
- info/paths.json and info/files list only members of the archive, with their real kind;
- unpacking stays within limits: expanded bytes against compressed bytes (a hard link counts as the
  copy of its target that the install writes), and the member count;
- other readers see the same members: a .conda's zip has no bytes the central directory does not
  account for (rattler reads its local headers as a stream), and a tar has no global PAX header
  (Python's tarfile applies one to later members, rattler's Rust reader ignores it), and every member
  is a plain file, directory, symlink or hard link whose header claims data only if it is a file
  (tarfile reads the blocks after a link's or directory's header as headers, rattler skips them).
The stage checks rattler's own extraction again after it installed (stage_worker.py), so a reader
difference this scan misses still cannot reach the prefix.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import struct
import tarfile
import zipfile
from dataclasses import dataclass

from hermetic_build.api import ActionFailed

try:
    from .zipdir import wheel_problem, zip_directory_problem
except ImportError:  # loaded by its path in the sandboxed check helper (check_worker.py), beside zipdir.py
    from zipdir import wheel_problem, zip_directory_problem

DEFAULT_MAX_UNPACK_RATIO = 1000  # expanded : compressed; real packages are 2-20x, CUDA 2-4x
UNPACK_FLOOR_BYTES = 64 << 20  # a package expanding to less than this passes whatever its ratio
MAX_MEMBERS = 1_000_000  # tar members and zip entries together
MAX_CONDA_ZIP_ENTRIES = 64  # a .conda holds 3 (the layout check names any other before it is read)
TAR_HEADER_BYTES = 512  # counted per member: a million empty files is not free to unpack
MAX_METADATA_BYTES = 64 << 20  # info/paths.json and friends are read into memory
MAX_LINK_HOPS = 40  # like the kernel's limit on symlinks followed in one lookup
MAX_PREFIX_LENGTH = 255  # conda's longest prefix (its placeholders are this long); conda_env enforces it

MAX_HEADER_BYTES = 1 << 20  # a PAX or GNU long-name header, which tarfile reads whole into memory
_EXTENDED_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                     tarfile.GNUTYPE_LONGLINK)

# files a package manager reads to decide what to write: regular files, parsed here
_METADATA = ("info/index.json", "info/paths.json", "info/files", "info/has_prefix", "info/link.json")
_PATH_TYPES = {"hardlink": ("file", "hardlink"), "softlink": ("symlink",), "directory": ("dir",)}
# the member types every reader handles alike; a regular file's size is the only data any header may claim
_KINDS = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink",
          tarfile.LNKTYPE: "hardlink"}


@dataclass(frozen=True)
class UnpackLimits:
    """How far one package may expand: max_ratio times its compressed size, or floor_bytes."""

    max_ratio: int = DEFAULT_MAX_UNPACK_RATIO
    floor_bytes: int = UNPACK_FLOOR_BYTES
    max_members: int = MAX_MEMBERS

    def max_expanded(self, compressed: int) -> int:
        return max(self.floor_bytes, compressed * self.max_ratio)


def path_problem(path) -> str | None:
    """Why `path` is not a clean relative path of single components, or None if it is."""
    if not isinstance(path, str):
        return f"not a string ({type(path).__name__})"
    if not path:
        return "empty path"
    if "\x00" in path:
        return "NUL byte"
    if _CONTROL.search(path):
        return "control character"
    if "\\" in path:
        return "backslash"
    if path.startswith("/"):
        return "absolute path"
    if _BAD_COMPONENT.search(path):
        return "empty, '.' or '..' component"
    return None


def site_packages_problem(path) -> str | None:
    """Why a python package's `python_site_packages_path` cannot be where noarch: python packages are
    installed, or None: it must be a clean relative path, outside conda-meta/ (the stage checks the
    record again before rattler reads it, stage_worker.check_records)."""
    why = path_problem(path)
    if why:
        return f"{why}: noarch python packages are installed there, inside the prefix"
    if path.split("/", 1)[0] == "conda-meta":
        return "noarch python packages would be installed into conda-meta/, the environment's records"
    return None


_CONTROL = re.compile("[\x00-\x1f\x7f]")  # as the stage's check of what rattler wrote (stage_worker._CONTROL)
_BAD_COMPONENT = re.compile(r"(?:^|/)\.{0,2}(?:/|\Z)")  # an empty, "." or ".." component


class _Scan:
    """What one archive holds, gathered member by member, then checked as a whole."""

    def __init__(self, filename: str, limits: UnpackLimits, compressed: int):
        self.filename = filename
        self.limits = limits
        self.compressed = compressed
        self.max_expanded = limits.max_expanded(compressed)
        self.kinds: dict[str, str] = {}  # member name -> file | dir | symlink | hardlink
        self.symlinks: dict[str, str] = {}
        self.hardlinks: dict[str, str] = {}
        self.sizes: dict[str, int] = {}  # regular file member -> its size
        self.metadata: dict[str, bytes] = {}
        self.count = 0
        self.expanded = 0

    def refuse(self, what: str, entry, why: str):
        raise ActionFailed(f"{self.filename}: refusing {what} {entry!r}: {why}")

    def count_entries(self, n: int, size: int = 0) -> None:
        self.count += n
        self.expanded += size
        if self.count > self.limits.max_members:
            raise ActionFailed(
                f"{self.filename}: refusing archive with more than {self.limits.max_members:,} members")
        if self.expanded > self.max_expanded:
            ratio = -(-self.expanded // max(self.compressed, 1))
            raise ActionFailed(
                f"{self.filename}: refusing to unpack: it expands to at least {self.expanded:,} bytes from "
                f"{self.compressed:,} compressed bytes ({ratio:,}:1); the limit is {self.limits.max_ratio:,}:1 "
                f"for packages over {self.limits.floor_bytes >> 20} MiB. If this package is genuine, raise the "
                f"limit on its conda_env target (max_unpack_ratio = {ratio}) or for the workspace "
                f"([conda] max_unpack_ratio = {ratio} in hermetic.toml)")

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = member.name
        why = path_problem(name)
        if why:
            self.refuse("archive entry", name, why)
        kind = _KINDS.get(member.type)
        if kind is None:
            self.refuse("special file", name, "only plain files, directories and links are allowed (no devices, "
                        f"fifos, sparse or contiguous files; tar type {member.type!r})")
        if kind != "file" and member.size:
            # tarfile reads the blocks after a link's or directory's header as the next headers, rattler's
            # reader skips the size the header claims: the two would see different members after it
            shown = "directory" if kind == "dir" else kind
            self.refuse("archive entry", name, f"its header claims {member.size:,} bytes of data for a {shown} "
                        "(tar readers disagree on where the next member starts)")
        if name in self.kinds:
            self.refuse("archive entry", name, "it appears twice")
        if name.split("/", 1)[0] == "conda-meta":
            self.refuse("archive entry", name, "conda-meta/ holds the package manager's records of the environment, "
                        "not a package's files")
        # header sizes are known before the data is read: a bomb is refused before it is inflated
        self.count_entries(1, max(member.size, 0) + TAR_HEADER_BYTES)
        self.kinds[name] = kind
        if kind == "file":
            self.sizes[name] = max(member.size, 0)
        if name in _METADATA and kind != "file":
            self.refuse("metadata file", name, "it must be a regular file")
        if kind == "symlink":
            if not member.linkname or "\x00" in member.linkname:
                self.refuse("link", name, "empty link target or NUL byte")
            self.symlinks[name] = member.linkname
        elif kind == "hardlink":
            why = path_problem(member.linkname)
            if why:
                self.refuse("hardlink", f"{name} -> {member.linkname}", why)
            self.hardlinks[name] = member.linkname
        elif name in _METADATA:
            if member.size > MAX_METADATA_BYTES:
                self.refuse("metadata file", name, f"{member.size:,} bytes is too large")
            self.metadata[name] = tar.extractfile(member).read()

    # ----- checks on the whole archive --------------------------------------------------------
    def through_symlink(self, path: str) -> str | None:
        """The first proper prefix of path that is a symlink member, if any."""
        index = path.find("/")
        while index != -1:
            if path[:index] in self.symlinks:
                return path[:index]
            index = path.find("/", index + 1)
        return None

    def link_problem(self, link: str) -> str | None:
        """Resolve link's target through the archive's own links, as the kernel would: why it leaves
        the prefix, or None if it stays inside."""
        target = self.symlinks[link]
        if target.startswith("/"):
            return "it is absolute: it escapes the prefix"
        stack = link.split("/")[:-1]
        pending = list(reversed(target.split("/")))
        hops = 0
        while pending:
            part = pending.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return "it escapes the prefix"
                stack.pop()
                continue
            stack.append(part)
            next_target = self.symlinks.get("/".join(stack))
            if next_target is not None:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    return f"it goes through more than {MAX_LINK_HOPS} links (a loop?)"
                if next_target.startswith("/"):
                    return "it escapes the prefix through an absolute link"
                stack.pop()
                pending.extend(reversed(next_target.split("/")))
        return None

    def check_members(self) -> None:
        for name in self.kinds:
            via = self.through_symlink(name)
            if via:
                self.refuse("archive entry", name, f"it lies under the symlink {via!r}")
        for name, target in self.symlinks.items():
            why = self.link_problem(name)
            if why:
                self.refuse("link", f"{name} -> {target}", why)
        for name, target in self.hardlinks.items():
            if self.kinds.get(target) != "file":
                self.refuse("hardlink", f"{name} -> {target}", "its target is not a regular file of the archive")
            # installed as a copy of its target (rattler copies, or the prefix is copied later): what a
            # hard link costs to unpack is its target's size, and a text placeholder grows it as much
            self.sizes[name] = self.sizes[target]
            self.count_entries(0, self.sizes[target])

    def check_listed(self, where: str, path, kinds: tuple[str, ...] | None = None) -> None:
        """A path the package's metadata names: clean, through no symlink, a member of this kind."""
        why = path_problem(path)
        if why:
            self.refuse(f"{where} entry", path, why)
        via = self.through_symlink(path)
        if via:
            self.refuse(f"{where} entry", path, f"it lies under the symlink {via!r}")
        kind = self.kinds.get(path)
        if kind is None:
            self.refuse(f"{where} entry", path, "no such file in the archive")
        if kinds is not None and kind not in kinds:
            self.refuse(f"{where} entry", path, f"it is listed as {'/'.join(kinds)} but the archive has a {kind}")

    def check_metadata(self) -> None:
        if "info/paths.json" in self.metadata:
            data = self._json("info/paths.json")
            entries = data.get("paths") if isinstance(data, dict) else None
            if not isinstance(entries, list):
                self.refuse("metadata file", "info/paths.json", "it has no 'paths' list")
            for entry in entries:
                if not isinstance(entry, dict):
                    self.refuse("info/paths.json entry", entry, "not an object")
                path_type = entry.get("path_type", "hardlink")
                if path_type not in _PATH_TYPES:
                    self.refuse("info/paths.json entry", entry.get("_path"), f"unknown path_type {path_type!r}")
                self.check_listed("info/paths.json", entry.get("_path"), _PATH_TYPES[path_type])
                if entry.get("file_mode", "text") == "text":
                    self.count_growth(entry.get("_path"), entry.get("prefix_placeholder"))
        for line in self._lines("info/files"):
            self.check_listed("info/files", line)
        for line in self._lines("info/has_prefix"):
            try:
                parts = [p.strip("\"'") for p in shlex.split(line, posix=False)]
            except ValueError:
                parts = []
            if len(parts) not in (1, 3):
                self.refuse("info/has_prefix line", line, "expected 'path' or 'placeholder mode path'")
            self.check_listed("info/has_prefix", parts[-1])
            if len(parts) == 3 and parts[1] == "text" and "info/paths.json" not in self.metadata:
                self.count_growth(parts[2], parts[0])
        if "info/link.json" in self.metadata:
            link = self._json("info/link.json")
            noarch = link.get("noarch") if isinstance(link, dict) else None
            points = noarch.get("entry_points", []) if isinstance(noarch, dict) else []
            for point in points if isinstance(points, list) else [points]:
                # rattler trims the command with Rust's whitespace, which has no control characters but
                # Python's strip() takes \x1c-\x1f too: `hi\x1f` passed here and became bin/hi\x1f there
                command = point.split("=", 1)[0].strip() if isinstance(point, str) else point
                why = ("control character" if isinstance(point, str) and _CONTROL.search(point) else
                       path_problem(command) or ("'/' in a command name" if "/" in command else None))
                if why:
                    self.refuse("info/link.json entry point", point, why)
        if "info/index.json" in self.metadata:
            index = self._json("info/index.json")
            for field in ("name", "version", "build"):
                value = index.get(field) if isinstance(index, dict) else None
                if value is not None and (not isinstance(value, str) or path_problem(value) or "/" in value):
                    self.refuse("info/index.json field", f"{field}: {value}", "it names a file: no '/', '..' or control characters")
            # where rattler installs every noarch: python package's site-packages/ (CEP 17): a directory of
            # the prefix like any path of the package (`../../x` and `/x` wrote other packages' files there)
            where = index.get("python_site_packages_path") if isinstance(index, dict) else None
            if where is not None:
                why = site_packages_problem(where)
                if why:
                    self.refuse("info/index.json field", f"python_site_packages_path: {where}", why)

    def count_growth(self, path, placeholder) -> None:
        """A text file's placeholder is replaced by the prefix at every occurrence, so a file made of a
        short placeholder grows up to MAX_PREFIX_LENGTH / len(placeholder) times: counted as unpacked
        bytes like the rest (a 1-byte placeholder and a 16 MiB file would otherwise write 4 GiB)."""
        if not isinstance(placeholder, str) or not placeholder or path not in self.sizes:
            return
        extra = (self.sizes[path] // len(placeholder.encode())) * max(0, MAX_PREFIX_LENGTH - len(placeholder.encode()))
        self.count_entries(0, extra)

    def _json(self, name: str):
        try:
            return json.loads(self.metadata[name])
        except (ValueError, UnicodeDecodeError) as exc:
            self.refuse("metadata file", name, f"invalid JSON: {exc}")

    def _lines(self, name: str) -> list[str]:
        if name not in self.metadata:
            return []
        try:
            text = self.metadata[name].decode()
        except UnicodeDecodeError:
            self.refuse("metadata file", name, "not UTF-8")
        return [line for line in text.split("\n") if line.strip()]


class _HugeHeader(Exception):
    pass


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses an extended header over MAX_HEADER_BYTES before tarfile reads it into memory (the image
    unpacker, rules/oci/deb_extract.py, a standalone worker, bounds its headers the same way)."""

    def _proc_member(self, tarfile_):
        if self.type in _EXTENDED_HEADERS and self.size > MAX_HEADER_BYTES:
            raise _HugeHeader(self.size)
        return super()._proc_member(tarfile_)


def _members(scan: _Scan, reader):
    """(tar, member) of one tar stream, then proof that nothing but zero padding follows its end:
    a reader that ignores the end marker must not find members this scan never saw."""
    with reader, tarfile.open(fileobj=reader, mode="r|", tarinfo=_BoundedTarInfo) as tar:
        for member in tar:
            if tar.pax_headers:
                scan.refuse("archive entry", member.name, "a global PAX header precedes it (readers disagree on "
                            "what it changes; conda's own tools never write one)")
            yield tar, member
        while chunk := tar.fileobj.read(1 << 20):
            scan.count_entries(0, len(chunk))
            if chunk.count(0) != len(chunk):
                raise ActionFailed(f"{scan.filename}: refusing archive with data after the end of its tar stream")


def _conda_components(path, scan: _Scan):
    """The info and pkg tar streams of a .conda: exactly one of each, besides metadata.json."""
    from conda_package_streaming.package_streaming import zstd

    if zstd is None:
        raise ActionFailed(f"{scan.filename}: cannot check a .conda package without zstd support "
                           "(pip install backports.zstd)")
    with open(path, "rb") as f:  # measured before zipfile reads it into memory whole (zipdir.py)
        problem = zip_directory_problem(f, MAX_CONDA_ZIP_ENTRIES)
    if problem:
        raise ActionFailed(f"{scan.filename}: not a valid .conda (zip) archive: {problem}")
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ActionFailed(f"{scan.filename}: not a valid .conda (zip) archive: {exc}") from None
    with zf:
        entries = zf.infolist()
        scan.count_entries(len(entries))
        _check_zip_layout(path, entries, zf.start_dir, scan)
        found = {"info": [], "pkg": []}
        for entry in entries:
            name = entry.filename
            kind = name.split("-", 1)[0] if name.endswith(".tar.zst") else None
            if kind in found and "/" not in name:
                found[kind].append(entry)
            elif name != "metadata.json":
                scan.refuse("zip entry", name, "a .conda holds metadata.json, info-*.tar.zst and pkg-*.tar.zst only")
        for kind in ("info", "pkg"):
            if len(found[kind]) != 1:
                raise ActionFailed(f"{scan.filename}: a .conda must hold exactly one {kind}-*.tar.zst "
                                   f"component, not {len(found[kind])}")
            yield from _members(scan, zstd.open(zf.open(found[kind][0])))


_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader
_DATA_DESCRIPTOR_SIGNATURE = b"PK\x07\x08"


def _check_zip_layout(path, entries, central_directory_start: int, scan: _Scan) -> None:
    """The zip's local entries, read front to back as a streaming reader reads them, are exactly
    the central directory's: the first at offset 0, each where the previous one ends, with the same
    name, and the last one ending where the central directory starts. Otherwise an entry hidden from
    the central directory (which zipfile and this scan read) would still be unpacked by rattler."""
    expected = 0
    with open(path, "rb") as f:
        for entry in sorted(entries, key=lambda e: e.header_offset):
            if entry.header_offset != expected:
                scan.refuse("zip entry", entry.filename, f"it starts at byte {entry.header_offset:,}, not where the "
                            f"entry before it ends ({expected:,}): the archive hides bytes from its directory")
            f.seek(expected)
            header = f.read(_LOCAL_HEADER.size)
            if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
                scan.refuse("zip entry", entry.filename, "its local header is missing")
            fields = _LOCAL_HEADER.unpack(header)
            flags, name_length, extra_length = fields[3], fields[10], fields[11]
            name = f.read(name_length).decode("utf-8" if flags & 0x800 else "cp437", "replace")
            if name != entry.filename:
                scan.refuse("zip entry", entry.filename, f"its local header names it {name!r}")
            expected = entry.header_offset + _LOCAL_HEADER.size + name_length + extra_length + entry.compress_size
            if flags & 0x8:  # sizes in a data descriptor after the data (signature optional, no zip64 here)
                f.seek(expected)
                expected += 16 if f.read(4) == _DATA_DESCRIPTOR_SIGNATURE else 12
    if expected != central_directory_start:
        scan.refuse("zip archive", scan.filename, f"{central_directory_start - expected:,} bytes between its last "
                    "entry and its directory belong to no entry")


def _all_members(path, scan: _Scan):
    if scan.filename.endswith(".conda"):
        yield from _conda_components(path, scan)
    elif scan.filename.endswith(".tar.bz2"):
        import bz2

        yield from _members(scan, bz2.open(path, mode="rb"))  # noqa: SIM115 - _members closes it
    else:
        raise ActionFailed(f"{scan.filename}: not a conda package (.conda or .tar.bz2)")


def _decoder_errors() -> tuple[type[BaseException], ...]:
    from conda_package_streaming.package_streaming import zstd

    errors = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError)
    return errors + ((zstd.ZstdError,) if zstd is not None else ())


def check_archive(path, filename: str, limits: UnpackLimits = UnpackLimits()) -> None:
    """Raise ActionFailed naming the package and the entry unless the archive is safe to unpack."""
    scan = _Scan(filename, limits, os.path.getsize(path))
    try:
        for tar, member in _all_members(path, scan):
            scan.add(tar, member)
    except _decoder_errors() as exc:  # a truncated or corrupt stream
        raise ActionFailed(f"{filename}: not a readable conda package: {type(exc).__name__}: {exc}") from None
    except _HugeHeader as exc:
        raise ActionFailed(f"{filename}: refusing an extended tar header of {exc.args[0]:,} bytes (at most "
                           f"{MAX_HEADER_BYTES:,})") from None
    scan.check_members()
    scan.check_metadata()


# ----- wheels (PyPI): the fetch's check of a wheel's zip directory ---------------------------------
# name-version(-build)?-python-abi-platform.whl, one path component
WHEEL_NAME = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.!+]+(-[0-9][A-Za-z0-9_.]*)?-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+"
                        r"-[A-Za-z0-9_.]+\.whl$")


def valid_wheel_filename(filename: str) -> bool:
    return bool(WHEEL_NAME.match(filename)) and "/" not in filename and ".." not in filename


def check_wheel(path, filename: str, max_ratio: int = DEFAULT_MAX_UNPACK_RATIO) -> None:
    """Raise ActionFailed unless `path` is a wheel zipdir.wheel_problem accepts (with the hint that
    raises the unpack limit when only its size is refused)."""
    if not valid_wheel_filename(filename):
        raise ActionFailed(f"wheel {filename}: not a wheel file name (name-version-python-abi-platform.whl)")
    found = wheel_problem(path, filename, max_ratio)
    if found:
        message, too_large = found
        raise ActionFailed(message, hint="raise conda_env(max_unpack_ratio = N) or [conda] max_unpack_ratio in "
                                         "hermetic.toml" if too_large else None)
