"""The stage, inside the sandbox: install fetched packages into the final prefix path with
py-rattler, then normalise the result so two stages of the same lock give the same tree digest.

    python3 -I stage_worker.py PARAMS.json

Run by the conda.stage action in bubblewrap, where only the sandbox directory is writable and
nothing of the host but the Python installation is visible: package archives are untrusted, and a
flaw in their check or in rattler must not reach the host. Standalone on purpose (the standard
library and rattler only): it is run as a script, without hb on its path.

PARAMS.json: {"sys_path": [...], "archives": {filename: path}, "out": path, "cache": path,
"cache_in_memory": bool (the cache is on a size-limited tmpfs), "fallback_cache": path (on disk, used
when the packages do not fit in memory), "prefix": "/opt/env", "platform": "linux-64", "packages": [{"filename", "url", ...}], and with PyPI
wheels "python": "3.11", "wheels": [{"filename", "sha256", "name", "version", ...}]}; relative
paths are relative to the working directory (the execution root). On failure it prints one line,
`stage: <what went wrong>`, on stderr and exits 1.

Wheels are installed after the conda packages with PyPA's `installer` into
lib/pythonX.Y/site-packages of the conda python: console scripts start with `#!<prefix>/bin/python`
(the final prefix, not this sandbox), INSTALLER says `hb`, RECORD lists every file, and no .pyc is
written (nothing that depends on the moment or the machine; Python compiles in memory when the
prefix is read-only). A wheel may not overwrite a file of a conda package or of another wheel, write
through a link, hold anything but regular files and directories, write into a .dist-info but its
own, or carry a METADATA naming another project or version than its file name. The wheels are read in the
lock's order, which decides every check and error; their members are decompressed, checked against
RECORD and written by a few threads (WheelWriter), so that the disk's wait per created file overlaps.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import shutil
import stat
import struct
import sys
import time

# conda-meta fields that record where this machine happened to keep things
_MACHINE_FIELDS = ("extracted_package_dir", "package_tarball_full_path")
_LINK_HARDLINK, _LINK_COPY = 1, 3  # conda-meta link types (conda's LinkType)


class StageError(Exception):
    pass


def stage(params: dict) -> str:
    """Install, normalise, check; returns a line for the action's stdout."""
    out = os.path.abspath(params["out"])
    packages = params["packages"]
    archives = {name: os.path.abspath(path) for name, path in params["archives"].items()}
    wheels = params.get("wheels") or []
    # the conda archives and the wheels are hashed at once, on a few threads (started before rattler
    # is imported, which they overlap); each is checked before anything reads it: the conda ones
    # before rattler, the wheels (hashed meanwhile) after it
    checks = start_verifying(archives, [*packages, *wheels])
    import rattler
    from rattler import Config, Subdir

    for check in checks[:len(packages)]:
        check()

    async def install(cache: str, hard_links: bool):
        # read at once (rattler's own threads), in the lock's order: one by one took twice as long
        records = list(await asyncio.gather(*(rattler.RepoDataRecord.from_package_archive(archives[p["filename"]])
                                              for p in packages)))
        check_records(records, packages)
        await rattler.install(
            records, target_prefix=out, cache_dir=cache, alternative_target_prefix=params["prefix"],
            platform=Subdir(params["platform"]), execute_link_scripts=False, show_progress=False,
            config=Config.from_toml(f"allow-hard-links = {'true' if hard_links else 'false'}\nallow-ref-links = false"),
        )

    # The package cache is private to this sandbox. Where the sandbox has a private /tmp (a tmpfs
    # that vanishes with it), the packages are extracted there: no file of it touches the disk
    # or has to be deleted, and the install copies each file into the prefix. Otherwise (too big
    # for the memory it may use, or no bubblewrap) it is on disk and rattler hard-links from it,
    # so no file is written twice; removing the cache then leaves each installed file with one
    # link, so hb moves it into its CAS instead of copying it (a file with other links is copied).
    caches = [(params["cache"], bool(params.get("cache_in_memory")))]
    if params.get("fallback_cache"):
        caches.append((params["fallback_cache"], False))
    note = ""
    for attempt, (cache, in_memory) in enumerate(caches):
        cache = os.path.abspath(cache)
        os.makedirs(cache, exist_ok=True)
        started = time.monotonic()
        try:
            asyncio.run(install(cache, hard_links=not in_memory))
        except StageError:  # check_records: before rattler read the packages
            raise
        except Exception as exc:  # noqa: BLE001 - rattler's install errors name the package
            message = " ".join(str(exc).split())
            if in_memory and attempt + 1 < len(caches) and "os error 28" in message:
                shutil.rmtree(cache, ignore_errors=True)  # the in-memory cache is full: again on disk
                shutil.rmtree(out, ignore_errors=True)
                note = "package cache did not fit in memory, installed again with it on disk; "
                continue
            raise StageError(f"installing into {params['prefix']} failed: {type(exc).__name__}: {message}") from None
        break
    elapsed = time.monotonic() - started
    check_package_cache(cache)  # before anything of the prefix is accepted
    started = time.monotonic()
    if not in_memory:
        shutil.rmtree(cache)
    removed = time.monotonic() - started
    normalise_prefix(out, {p["filename"]: p for p in packages})
    where = "in memory" if in_memory else f"on disk, removed in {removed:.2f}s"
    line = (f"rattler.install: {len(packages)} packages in {elapsed:.2f}s ({note}package cache {where}); "
            f"conda-meta normalised in {time.monotonic() - started - removed:.2f}s")
    check_prefix(out)  # links and modes, before the wheels
    if wheels:
        started = time.monotonic()
        for check in checks[len(packages):]:
            check()
        install_wheels(archives, wheels, out, params["prefix"], params["python"], params.get("max_unpack_ratio") or 0)
        line += (f"; installer: {len(wheels)} wheels in {time.monotonic() - started:.2f}s "
                 f"({WRITER_THREADS} writer threads)")
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return line + f"; worker CPU {usage.ru_utime + usage.ru_stime:.2f}s"


def start_verifying(archives: dict[str, str], packages: list[dict]) -> list:
    """Each archive must be the bytes its lock pins: a fetch result can come from a remote cache
    that anyone with write access could have changed, so the pin is checked where it is used.
    Every archive of `packages` is hashed against its pin on a few threads at once (hashlib releases
    the interpreter lock): one callable per package, in order, that waits for its result and raises
    StageError if it is not the locked package. Nothing may read an archive before its call returned."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(min(4, max(1, len(packages))), thread_name_prefix="verify")
    futures = [pool.submit(_pin_mismatch, archives[p["filename"]], p) for p in packages]
    pool.shutdown(wait=False)

    def waiter(future):
        def check() -> None:
            problem = future.result()
            if problem:
                raise StageError(problem)
        return check

    return [waiter(f) for f in futures]


def _pin_mismatch(path: str, package: dict) -> str | None:
    """Why the archive at `path` is not the package its lock pins, or None when it is."""
    import hashlib

    # md5 only where the target allowed a lock that records nothing else (allow_md5)
    algorithm = "sha256" if package.get("sha256") else "md5"
    expected = package.get(algorithm)
    if not expected:
        return f"{package['filename']} is not pinned by sha256"
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        return (f"{package['filename']} is not the locked package: {algorithm} {digest.hexdigest()}, "
                f"the lock pins {expected} (a cache entry for its fetch was changed; "
                "run `hb clean --expunge` or check who writes to your remote cache)")
    return None


def check_records(records, packages: list[dict]) -> None:
    """What rattler turns into paths, from the packages' own info/index.json, checked before it reads
    them: a python package's python_site_packages_path (CEP 17) is where rattler writes the
    site-packages/ files of every noarch: python package. `../../x` had them written outside the
    prefix (onto the host where bubblewrap is unusable), `conda-meta` into the environment's records,
    and an absolute one made rattler panic. It must be a clean relative path outside conda-meta/."""
    for record, package in zip(records, packages):
        where = getattr(record, "python_site_packages_path", None)
        why = recorded_path_problem(where) if where is not None else None
        if why:
            raise StageError(f"package {package['filename']}: its info/index.json has python_site_packages_path "
                             f"{where!r}, not a clean relative path inside the prefix ({why}): noarch python "
                             "packages are installed there")


def recorded_path_problem(path) -> str | None:
    """Why a path a conda-meta record says rattler installed is not a clean relative path of the
    prefix outside conda-meta/, or None."""
    if not isinstance(path, str) or not path or path.startswith("/"):
        return "not a relative path"
    parts = path.split("/")
    if any(part in ("", ".", "..") or "\\" in part for part in parts):
        return "an empty, '.' or '..' component: it lies outside the prefix"
    why = next(filter(None, map(_name_problem, parts)), None)
    if why:
        return why
    if parts[0] == "conda-meta":
        return "it lies in conda-meta/"
    return None


def normalise_prefix(root, locked: dict[str, dict]) -> None:
    """Remove what depends on this machine or this moment; record the lock's URLs."""
    tag = os.path.join(root, "CACHEDIR.TAG")
    if os.path.lexists(tag):
        os.unlink(tag)
    meta = os.path.join(root, "conda-meta")
    for name in sorted(os.listdir(meta)):
        path = os.path.join(meta, name)
        if not name.endswith(".json") or os.path.islink(path):
            continue
        with open(path) as f:
            record = json.load(f)
        # rattler's account of what it wrote: every path inside the prefix, whatever mapped it there
        # (noarch site-packages/ and python-scripts/, entry points); anything else was written elsewhere
        paths_data = record.get("paths_data")
        listed = paths_data.get("paths") if isinstance(paths_data, dict) else None
        for installed in [*(record.get("files") or []), *(e.get("_path") if isinstance(e, dict) else None
                                                        for e in (listed if isinstance(listed, list) else []))]:
            why = recorded_path_problem(installed)
            if why:
                raise StageError(f"package {record.get('fn', name)}: rattler installed {installed!r}: {why}")
        for field in _MACHINE_FIELDS:
            record.pop(field, None)
        link = record.get("link")
        if isinstance(link, dict):
            link.pop("source", None)
            if link.get("type") == _LINK_HARDLINK:
                # linked from the sandbox's private package cache, which is gone: each file of the
                # environment is its own copy, which is what the record says
                link["type"] = _LINK_COPY
        entry = locked.get(record.get("fn"))
        if entry is not None:
            record["url"] = entry["url"]
            record["channel"] = entry["url"].rsplit("/", 2)[0] if "/" in entry["url"] else ""
        # sorted keys, no indentation: json's C encoder (indent=2 cost 0.5 s for 30 packages)
        # rewritten in place, then cut to length: truncating to zero first makes ext4 (auto_da_alloc)
        # allocate and start writing the old bytes it is about to drop
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        with open(path, "r+b") as f:
            f.write(data)
            f.truncate()
        os.chmod(path, 0o644)
    history = os.path.join(meta, "history")
    if os.path.isfile(history) and not os.path.islink(history):
        with open(history, "w"):
            pass
        os.chmod(history, 0o644)


MAX_UNPACK_RATIO = 1000  # archive.DEFAULT_MAX_UNPACK_RATIO, where the target sets none


@functools.cache
def _zipdir():
    """zipdir.py, the fetch's wheel checks: from this package, or from beside this file where it runs as a
    script (the sandboxed worker)."""
    try:
        from . import zipdir
    except ImportError:
        import zipdir
    return zipdir


def check_wheel_members(path: str, filename: str, max_ratio: int = 0) -> None:
    """The fetch's check again (zipdir.wheel_problem), here where the bytes are unpacked: the result
    may come from a shared cache."""
    found = _zipdir().wheel_problem(path, filename, max_ratio or MAX_UNPACK_RATIO)
    if found:
        raise StageError(found[0])


def _writer_threads() -> int:
    """Files created at once: as many as this process may run on, from 2 to 8. Each create waits on
    the disk's journal, which threads overlap; but past the cores they only take the GIL from each
    other and from the thread that walks the wheels (on 2 cores, the example's 17 wheels: 8 threads
    1.54-1.74 s, 4 threads 1.38-1.41 s, 2 threads 1.29-1.36 s, alternating runs, 2026-12-07)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(2, min(8, cores))


WRITER_THREADS = _writer_threads()


# What one path a wheel writes, and the directories a wheel makes, may cost: each component of a path
# is walked (and each directory kept) by the claim. Neither a path's length nor the directories count
# towards the unpack limit, which counts file bytes: an entry point named "a/" * 60,000 + "x" (a 1.2 KB
# wheel) took the stage 3.6 GB of memory (quadratic in its length), and member names of "a/" * 900
# made 90,000 directories (353 MB of disk) from a 371 KB wheel. A path relative to the prefix (itself
# at most 255 bytes) stays far below PATH_MAX; real wheels make a few thousand directories at most.
MAX_INSTALLED_PATH = 1024
MAX_WHEEL_DIRECTORIES = 200_000  # zipdir.MAX_WHEEL_ENTRIES


class WheelWriter:
    """Writes the members of the wheels of one stage from a few threads: each member is decompressed,
    hashed against its RECORD row and written by a thread, so that the disk's latency per created
    file (most of an install's time on a busy machine) overlaps. What is written where is decided in
    the calling thread, in the wheels' order: the checks (inside the prefix, no link on the way,
    nothing there already, a conda file or an earlier wheel's) and their errors do not depend on
    the threads. Files are created exclusively (O_EXCL, never through a link), modes from the umask
    read once, as PyPA's installer sets them (0644, executables 0755)."""

    def __init__(self, out: str, threads: int = WRITER_THREADS):
        import concurrent.futures
        import threading

        self.out_real = os.path.realpath(out)
        umask = os.umask(0o022)
        os.umask(umask)  # read once, here: changing it while threads create files would change their modes
        self.file_mode, self.exec_mode = 0o666 & ~umask, 0o777 & ~umask | 0o111
        self.claimed: set[str] = set()  # files written or queued
        self.own_dist_info = ""  # the .dist-info of the wheel being installed, relative to the prefix
        self.claimed_dirs: set[str] = set()  # the directories those need
        self.dirs_made_by: dict[str, int] = {}  # wheel filename -> directories it made (claimed_dirs it added)
        self.listings: dict[str, set[str]] = {}  # directories that were there before the wheels: their names
        self.made_dirs: set[str] = set()  # directories the threads made (or found) already
        self.real_dirs: set[str] = {self.out_real}  # directories known to be directories, not links
        self.pending: list = []  # (wheel filename, future), in the order submitted
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="wheel-writer")
        # one descriptor per wheel, shared by the threads: each member is read with pread (no
        # seek, no lock) and inflated by zlib, both without the GIL; a ZipFile shared by the
        # threads serialised every read behind its lock
        self.fds: dict[str, int] = {}
        self.fds_lock = threading.Lock()

    def claim(self, filename: str, target: str, path: str, scheme: str) -> str:
        """The path relative to the prefix where `target` may be written; StageError if not."""
        out_real = self.out_real
        if not (target + os.sep).startswith(out_real + os.sep):
            raise StageError(f"wheel {filename}: {path} ({scheme}) lies outside the prefix")
        rel = os.path.relpath(target, out_real)
        if len(rel.encode("utf-8", "surrogateescape")) > MAX_INSTALLED_PATH:  # before any work per component
            raise StageError(f"wheel {filename}: {path[:200]!r}... ({scheme}) would write a path of "
                             f"{len(rel.encode('utf-8', 'surrogateescape')):,} bytes (at most {MAX_INSTALLED_PATH:,})")
        parts = rel.split(os.sep)
        why = next(filter(None, map(_name_problem, parts)), None)
        if why:  # a console script's name comes from entry_points.txt, not from a member name the zip check saw
            raise StageError(f"wheel {filename}: {path!r} ({scheme}) has {why}")
        if parts[0] == "conda-meta":  # the package manager's records: what hb and conda read to know the env
            raise StageError(f"wheel {filename}: {path} ({scheme}) would write {rel}, in conda's own records")
        if (len(parts) > 3 and parts[0] == "lib" and parts[2] == "site-packages"
                and parts[3].lower().endswith((".dist-info", ".egg-info"))
                and "/".join(parts[:4]) != self.own_dist_info):
            # layering takes every site-packages/*.dist-info for an installed project, and importlib.metadata
            # (pip list, version checks) every name ending so in any case, and *.egg-info: NUMPY-9.DIST-INFO
            # or numpy-9.egg-info made importlib.metadata report numpy 9
            raise StageError(f"wheel {filename}: {path} ({scheme}) would write {rel}, another project's "
                             f"metadata (a wheel writes only its own .dist-info, {self.own_dist_info})")
        current, missing = out_real, False
        for part in parts[:-1]:  # never write through a link of the prefix
            parent, current = current, os.path.join(current, part)
            if current in self.real_dirs:
                continue
            if current in self.claimed:
                raise StageError(f"wheel {filename} would overwrite {os.path.relpath(current, out_real)}, "
                                 "installed by another wheel (the lock installs it twice)")
            if missing or current in self.claimed_dirs or part not in self._names(parent):
                missing = True  # made by this writer, as a directory
                continue
            if os.path.islink(current):
                raise StageError(f"wheel {filename}: {rel} would be written through the link "
                                 f"{os.path.relpath(current, out_real)}")
            if not os.path.isdir(current):
                raise StageError(f"wheel {filename} would overwrite {os.path.relpath(current, out_real)} "
                                 f"with a directory (to write {rel})")
            self.real_dirs.add(current)
        if (target in self.claimed or target in self.claimed_dirs
                or (not missing and parts[-1] in self._names(current))):
            raise StageError(f"wheel {filename} would overwrite {rel}, installed by a conda package or "
                             "another wheel (the lock installs it twice)")
        self.claimed.add(target)
        parent = os.path.dirname(target)
        made = self.dirs_made_by.get(filename, 0)
        while parent != out_real and parent not in self.claimed_dirs:
            made += 1
            if made > MAX_WHEEL_DIRECTORIES:
                raise StageError(f"wheel {filename} would make more than {MAX_WHEEL_DIRECTORIES:,} directories "
                                 f"(to write {rel[:200]!r})")
            self.claimed_dirs.add(parent)
            parent = os.path.dirname(parent)
        self.dirs_made_by[filename] = made
        return rel

    def _names(self, directory: str) -> set[str]:
        """The names in a directory of the prefix as the conda packages left it: listed once, the
        first time a wheel writes into or below it, before this writer adds anything there (it is
        the only writer), instead of a stat per file that waits on the threads' creates there."""
        names = self.listings.get(directory)
        if names is None:
            names = self.listings[directory] = set(os.listdir(directory))
        return names

    def write(self, target: str, chunks, executable: bool) -> tuple[str, int]:
        """Create `target` (and its directories) with the bytes of `chunks`; (urlsafe-base64 sha256
        without padding, as RECORD writes it, size)."""
        import base64
        import hashlib

        parent = os.path.dirname(target)
        if parent not in self.made_dirs:
            os.makedirs(parent, exist_ok=True)
            self.made_dirs.add(parent)
        hasher, size = hashlib.sha256(), 0
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     self.exec_mode if executable else self.file_mode)
        with open(fd, "wb") as f:
            for chunk in chunks:
                hasher.update(chunk)
                f.write(chunk)
                size += len(chunk)
        if executable:  # the mode os.open gave is cut by the umask too: set it as installer does
            os.chmod(target, self.exec_mode)
        return base64.urlsafe_b64encode(hasher.digest()).decode("ascii").rstrip("="), size

    def submit_member(self, filename: str, archive: str, info, target: str, record: tuple, executable: bool) -> None:
        """Write a wheel member from a thread; its RECORD row (checked there) is what it must be."""
        self.pending.append((filename, self.pool.submit(self._write_member, filename, archive, info, target,
                                                         record, executable)))

    def _write_member(self, filename, archive, info, target, record, executable) -> None:
        with self.fds_lock:
            fd = self.fds.get(archive)
            if fd is None:
                fd = self.fds[archive] = os.open(archive, os.O_RDONLY | os.O_CLOEXEC)
        digest, size = self.write(target, member_chunks(fd, info, filename), executable)
        algorithm, _, expected = record[1].partition("=")
        if algorithm != "sha256" or digest != expected or (record[2] and int(record[2]) != size):
            raise StageError(f"wheel {filename}: {record[0]} does not match its RECORD hash / size")

    def finish(self) -> None:
        """Wait for every write; the first failure in the order submitted is raised (the others are
        cancelled or ignored)."""
        try:
            for filename, future in self.pending:
                try:
                    future.result()
                except StageError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the zip's own errors (a bad CRC) and the disk's
                    raise StageError(f"installing wheel {filename} failed: {type(exc).__name__}: "
                                     f"{' '.join(str(exc).split())}") from None
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pending = []
            for fd in self.fds.values():
                os.close(fd)
            self.fds = {}


_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip entry's local header (zipfile's structFileHeader)
_READ = 1 << 20
_STORED, _DEFLATED, _BZIP2, _LZMA = 0, 8, 12, 14  # the methods zipfile reads


class _Inflater:
    """zlib's raw deflate with the interface of bz2's and lzma's decompressors (needs_input, eof,
    decompress(data, max_length))."""

    def __init__(self):
        import zlib

        self._z = zlib.decompressobj(-15)

    @property
    def needs_input(self) -> bool:
        return not self._z.unconsumed_tail

    @property
    def eof(self) -> bool:
        return self._z.eof

    def decompress(self, data: bytes, max_length: int) -> bytes:
        return self._z.decompress(data or self._z.unconsumed_tail, max_length)

    def flush(self) -> bytes:
        """What zlib holds back once all the input is consumed (the rest of a match cut by max_length:
        at most a few hundred bytes), as zipfile takes it at the end."""
        return self._z.flush()


def member_chunks(fd: int, info, filename: str):
    """The bytes of the wheel member `info` (a ZipInfo of the central directory), read from fd with
    pread and decompressed, in pieces of at most 1 MiB; what zipfile's reader would give, checked as
    it checks: the local header is there and names the member, no encryption, and the data
    decompresses to exactly the size the directory records (the caller checks the RECORD hash).
    Every method zipfile reads (stored, deflate, bzip2, lzma) is read here, from the one descriptor
    with pread: a ZipFile per member read the whole central directory again for each (a 1.2 MB wheel
    of 10,000 bzip2 members took 365 s, 200,000 would take days) on a dup of the shared descriptor,
    whose file offset the threads moved under each other (a sound bzip2 wheel failed the stage)."""
    import bz2
    import lzma
    import zlib

    def refuse(why: str) -> StageError:
        return StageError(f"wheel {filename}: member {info.filename!r} {why}")

    offset = info.header_offset
    header = os.pread(fd, _LOCAL_HEADER.size, offset)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise refuse("has no local header where the directory says")
    fields = _LOCAL_HEADER.unpack(header)
    flags, name_length, extra_length = fields[3], fields[10], fields[11]
    name = os.pread(fd, name_length, offset + _LOCAL_HEADER.size)
    if name.decode("utf-8" if flags & 0x800 else "cp437", "replace") != info.orig_filename:
        raise refuse(f"is named {name!r} in its local header")
    if flags & 0x1 or info.flag_bits & 0x1:
        raise refuse("is encrypted")
    position = offset + _LOCAL_HEADER.size + name_length + extra_length
    end = position + info.compress_size
    if info.compress_type == _DEFLATED:
        decompressor = _Inflater()
    elif info.compress_type == _BZIP2:
        decompressor = bz2.BZ2Decompressor()
    elif info.compress_type == _LZMA:  # zipfile's: 2 bytes of version, 2 of the properties' size, properties
        start = os.pread(fd, 4, position)
        size = struct.unpack("<H", start[2:4])[0] if len(start) == 4 else 0
        properties = os.pread(fd, size, position + 4)
        if len(start) != 4 or len(properties) != size or position + 4 + size > end:
            raise refuse("is cut short: the wheel ends inside it")
        try:
            decompressor = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[
                lzma._decode_filter_properties(lzma.FILTER_LZMA1, properties)])
        except (lzma.LZMAError, ValueError) as exc:
            raise refuse(f"has lzma properties that are not: {exc}") from None
        position += 4 + size
    elif info.compress_type == _STORED:
        decompressor = None
    else:
        raise refuse(f"is compressed with method {info.compress_type}, which zipfile does not read")
    produced, flushed = 0, False
    try:
        while True:
            if decompressor is not None and decompressor.eof:
                break
            if decompressor is None or decompressor.needs_input:
                if position >= end:
                    if flushed or not isinstance(decompressor, _Inflater):
                        break
                    # what zlib holds back when the last output filled max_length exactly: a member
                    # of a 256 MiB run of zeros was refused as incomplete before
                    data, flushed = decompressor.flush(), True
                else:
                    piece = os.pread(fd, min(_READ, end - position), position)
                    if not piece:
                        raise refuse("is cut short: the wheel ends inside it")
                    position += len(piece)
                    data = decompressor.decompress(piece, _READ) if decompressor is not None else piece
            else:  # output held back by max_length: no more input until it is taken
                data = decompressor.decompress(b"", _READ)
            produced += len(data)
            if produced > info.file_size:
                raise refuse(f"holds more than the {info.file_size} bytes its directory entry records")
            if data:
                yield data
    except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error) as exc:
        raise refuse(f"cannot be decompressed: {exc}") from None
    if decompressor is not None and not decompressor.eof and info.compress_type != _LZMA:
        raise refuse("is not a complete compressed stream")
    if produced != info.file_size:
        raise refuse(f"holds {produced} bytes, not the {info.file_size} its directory entry records")


class _Chunks:
    """A stream over a generator of non-empty pieces, for the writer (which reads until b"")."""

    def __init__(self, chunks):
        self._chunks = chunks

    def read(self, *_args) -> bytes:
        return next(self._chunks, b"")


class _Member:
    """A wheel member not yet read: the writer's thread opens, decompresses and hashes it."""

    def __init__(self, archive: str, info, record: tuple):
        self.archive, self.info, self.record = archive, info, record

    def script(self, filename: str, interpreter: str) -> "_Chunks":
        """The member as installer writes a script of the wheel's .data/scripts: a first line
        `#!python...` replaced by `#!<interpreter>` (installer's fix_shebang), read in pieces from its
        own descriptor with pread (member_chunks) and checked against its RECORD row when the last
        piece was read. Before, each script was read whole into memory, twice, by a new ZipFile that
        read the whole central directory again: 5,000 scripts took 68 s, quadratic."""
        return _Chunks(self._script_chunks(filename, interpreter))

    def _script_chunks(self, filename: str, interpreter: str):
        import base64
        import hashlib

        hasher, size = hashlib.sha256(), 0
        head, decided, skipping = b"", False, False
        fd = os.open(self.archive, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for chunk in member_chunks(fd, self.info, filename):
                hasher.update(chunk)
                size += len(chunk)
                if not decided:  # installer looks at the first 8 bytes
                    head += chunk
                    if len(head) < 8:
                        continue
                    chunk, head, decided = head, b"", True
                    if chunk.startswith(b"#!python"):
                        yield f"#!{interpreter}\n".encode()
                        skipping = True
                if skipping:  # the rest of the first line, newline included, is dropped
                    newline = chunk.find(b"\n")
                    if newline < 0:
                        continue
                    chunk, skipping = chunk[newline + 1:], False
                if chunk:
                    yield chunk
            if head:  # fewer than 8 bytes: as they are
                yield head
        finally:
            os.close(fd)
        digest = base64.urlsafe_b64encode(hasher.digest()).decode("ascii").rstrip("=")
        algorithm, _, expected = self.record[1].partition("=")
        if algorithm != "sha256" or digest != expected or (self.record[2] and int(self.record[2]) != size):
            raise StageError(f"wheel {filename}: {self.record[0]} does not match its RECORD hash / size")

    def read(self, *_args):  # installer reads only scripts, which write_file hands over as bytes
        raise StageError(f"wheel member {self.info.filename} was read outside the writer")


def install_wheels(archives: dict[str, str], wheels: list[dict], out: str, prefix: str, python: str,
                   max_ratio: int = 0) -> None:
    """Install the wheels in order (their files written by a WheelWriter's threads); every file of
    all of them is written when this returns."""
    writer = WheelWriter(out)
    try:
        for wheel in wheels:
            install_wheel(archives[wheel["filename"]], wheel, out, prefix, python, max_ratio, writer=writer)
    finally:
        writer.finish()


def install_wheel(archive: str, wheel: dict, out: str, prefix: str, python: str, max_ratio: int = 0,
                  writer: WheelWriter | None = None) -> None:
    """Install one wheel into the staged prefix `out`, as if it lived at `prefix` (with its own
    writer unless one is given: then its files may still be being written when this returns)."""

    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.records import Hash, RecordEntry, parse_record_file
    from installer.sources import WheelFile

    if writer is None:
        own = WheelWriter(out)
        try:
            install_wheel(archive, wheel, out, prefix, python, max_ratio, writer=own)
        finally:
            own.finish()
        return
    filename = wheel["filename"]
    check_wheel_members(archive, filename, max_ratio)
    out = writer.out_real
    site = os.path.join(out, "lib", f"python{python}", "site-packages")
    if not os.path.isdir(site) or os.path.islink(site):
        raise StageError(f"installing {filename}: the conda python has no lib/python{python}/site-packages")

    class Destination(SchemeDictionaryDestination):
        def write_file(self, scheme, path, stream, is_executable):
            if isinstance(stream, _Member) and scheme == "scripts":  # its #!python line rewritten, as installer does
                return self.write_to_fs(scheme, os.fspath(path), stream.script(filename, self.interpreter),
                                        is_executable)
            return super().write_file(scheme, path, stream, is_executable)

        def write_to_fs(self, scheme, path, stream, is_executable):
            target = os.path.abspath(os.path.join(self.scheme_dict[scheme], path))
            writer.claim(filename, target, path, scheme)
            if isinstance(stream, _Member):
                record = stream.record
                if not record[1]:
                    raise StageError(f"wheel {filename}: {record[0]} has no hash in RECORD")
                writer.submit_member(filename, archive, stream.info, target, record, is_executable)
                algorithm, _, digest = record[1].partition("=")
                return RecordEntry(path, Hash(algorithm, digest), stream.info.file_size)
            # generated here (a console script, INSTALLER, RECORD): small, written now
            digest, size = writer.write(target, iter(lambda: stream.read(1 << 20), b""), is_executable)
            return RecordEntry(path, Hash(self.hash_algorithm, digest), size)

    scheme = {
        "purelib": site, "platlib": site, "scripts": os.path.join(out, "bin"), "data": out,
        "headers": os.path.join(out, "include", f"python{python}", wheel["name"]),
    }

    class DeferredWheel(WheelFile):
        """Members handed over unread (the writer's thread reads each and checks it against its
        RECORD row as it writes it: one pass over the bytes), in the zip's order."""

        def read_dist_info(self, name: str) -> str:
            # installer reads these whole and parses them in memory: each within its bound first
            check_read_whole(self, filename, name)
            return super().read_dist_info(name)

        def get_contents(self):
            import stat

            from installer.utils import SCHEME_NAMES

            records = {row[0]: row for row in parse_record_file(self.read_dist_info("RECORD").splitlines())}
            for info in self._zipfile.infolist():
                if info.filename.endswith("/"):
                    continue
                parts = info.filename.split("/")
                if parts[0] == self.data_dir and (len(parts) < 3 or parts[1] not in SCHEME_NAMES):
                    # installer maps it to a scheme by splitting it until it reaches the data directory:
                    # a file named the data directory itself never does (an endless loop that took
                    # memory until the machine's was gone); its own error for the other shapes
                    raise StageError(f"wheel {filename}: member {info.filename!r} is not a file of a "
                                     f"{self.data_dir}/<scheme>/ directory ({', '.join(SCHEME_NAMES)})")
                member = _Member(archive, info, records.get(info.filename, (info.filename, "", "")))
                mode = info.external_attr >> 16
                yield member.record, member, bool(mode and stat.S_ISREG(mode) and mode & 0o111)

    destination = Destination(scheme, interpreter=f"{prefix.rstrip('/')}/bin/python", script_kind="posix",
                              bytecode_optimization_levels=(), overwrite_existing=False)
    try:
        with DeferredWheel.open(archive) as source:
            check_record_rows(source.read_dist_info("RECORD"), source._zipfile.infolist(), filename)
            source.validate_record(validate_contents=False)  # every member listed in RECORD with a hash
            check_wheel_metadata(source, filename)
            writer.own_dist_info = f"{os.path.relpath(site, out)}/{source.dist_info_dir}"
            install(source, destination, additional_metadata={"INSTALLER": b"hb\n"})
    except StageError:
        raise
    except Exception as exc:  # noqa: BLE001 - installer's errors name the file
        raise StageError(f"installing wheel {filename} failed: {type(exc).__name__}: "
                         f"{' '.join(str(exc).split())}") from None


def check_read_whole(source, filename: str, name: str) -> None:
    """StageError unless the wheel's .dist-info file `name`, if there, is within its bound
    (zipdir.MAX_READ_WHOLE; the zip check refused a larger one already: this holds for any file
    installer reads)."""
    path = f"{source.dist_info_dir}/{name}"
    try:
        info = source._zipfile.getinfo(path)
    except KeyError:
        return
    problem = _zipdir().read_whole_problem(path, info.file_size)
    if problem:
        raise StageError(f"wheel {filename}: {problem}")


# str.splitlines' line boundaries, which installer splits RECORD at: "\r\n" is one
_LINE_BOUNDARIES = ("\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def check_record_rows(text: str, infos, filename: str) -> None:
    """StageError if the wheel's RECORD has more rows than twice its files (and 16): installer holds
    every row of it as objects, twice (its check and its install), so 32 MiB of rows that name no
    file took a 33 KB wheel's stage to 661 MiB and 4.9 s. A RECORD lists each file of the wheel once;
    rows are counted without splitting the text (installer's splitlines, the same boundaries)."""
    rows = sum(text.count(boundary) for boundary in _LINE_BOUNDARIES) - text.count("\r\n") + 1
    files = sum(1 for info in infos if not info.filename.endswith("/"))
    if rows > 2 * files + 16:
        raise StageError(f"wheel {filename}: its RECORD has {rows:,} rows for {files:,} files (a RECORD lists "
                         "each file of the wheel once; the other rows would only take the stage's memory)")


MAX_METADATA_HEADER = 16 << 20  # what the lock's reader of METADATA reads at most (pypi_deps.MAX_METADATA_BYTES)


def check_wheel_metadata(source, filename: str) -> None:
    """The wheel's METADATA must name one project and one version, those of its file name (PEP 503 /
    PEP 440 equal): layering names a wheel's layer after it (`pypi:<Name>`), and the lock entry, whose
    name and version the SBOM reports, was checked against the file name. Only the header is read, at
    most MAX_METADATA_HEADER bytes (the body, a README, may be long), by zipdir.metadata_header, as
    layering reads it."""
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import InvalidVersion, Version

    project, version = parse_wheel_filename(filename)[:2]
    path = f"{source.dist_info_dir}/METADATA"
    try:
        info = source._zipfile.getinfo(path)
    except KeyError:
        raise StageError(f"wheel {filename} has no {path}") from None
    with source._zipfile.open(info) as stream:
        headers = _zipdir().metadata_header(stream.readline, MAX_METADATA_HEADER)
    if headers is None:
        raise StageError(f"wheel {filename}: the header of its {path} is longer than "
                         f"{MAX_METADATA_HEADER >> 20} MiB")
    for key in ("Name", "Version"):
        found = headers.get_all(key) or []
        if len(found) != 1:
            raise StageError(f"wheel {filename}: its {path} has {len(found)} {key} headers (a wheel's has one)")
    name, stated = str(headers["Name"]).strip(), str(headers["Version"]).strip()
    try:
        same = canonicalize_name(name) == project and Version(stated) == version
    except InvalidVersion:
        same = False
    if not same:
        raise StageError(f"wheel {filename}: its METADATA names {name[:100]!r} {stated[:100]!r}, not {project} "
                         f"{version}: the wheel is not the package its file name says")


MAX_LINK_HOPS = 40  # the kernel's limit (ELOOP)


def resolve_in_tree(root: str, rel: str) -> str | None:
    """Where `rel` (a path relative to root) leads, following the tree's own links as the kernel
    would, as a path relative to root; None when it leaves the tree at any step: an absolute link, a
    `..` above the root (whatever names follow it: where the tree sits must not decide the answer; in
    the sandbox the prefix's parents are not those of the real prefix) or more than MAX_LINK_HOPS links.
    Past a name that does not exist the rest is taken as plain names."""
    pending = list(reversed(rel.split("/")))
    resolved: list[str] = []
    hops, exists = 0, True
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not resolved:
                return None
            resolved.pop()
            continue
        if exists:
            try:
                st = os.lstat(os.path.join(root, *resolved, part))
            except (FileNotFoundError, NotADirectoryError):
                exists = False
            else:
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    target = os.readlink(os.path.join(root, *resolved, part))
                    if hops > MAX_LINK_HOPS or target.startswith("/"):
                        return None
                    pending.extend(reversed(target.split("/")))
                    continue
        resolved.append(part)
    return "/".join(resolved)


def check_package_cache(cache: str) -> None:
    """Check what rattler itself unpacked (its package cache), after it installed and before the
    prefix is accepted. The fetch's archive check read each archive with Python's readers; rattler
    reads it with its own, and whatever the two disagree on (a zip entry one of them does not see, a
    tar header one of them ignores) shows here: each package directory holds regular files,
    directories and links only, with printable UTF-8 names; every link resolves inside the package
    (resolve_in_tree); every path its info/paths.json lists is a clean relative path that does not
    leave it. A link rattler followed while it installed was followed in this sandbox, which sees
    nothing of the host but system files; refusing here keeps what it read out of the result."""
    with os.scandir(cache) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False):
                _check_unpacked(entry.path, entry.name)
            elif not entry.is_file(follow_symlinks=False):
                raise StageError(f"package cache entry {entry.name!r} is not a file or directory")


def _check_unpacked(package_dir: str, package: str) -> None:
    def refuse(what: str) -> StageError:
        return StageError(f"package {package}: {what} (in what rattler unpacked; the archive check saw "
                          "the archive differently)")

    links: list[str] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(os.path.join(package_dir, rel_dir)) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if _name_problem(entry.name):
                    raise refuse(f"entry {rel!r}: {_name_problem(entry.name)}")
                if entry.is_symlink():
                    links.append(rel)
                elif entry.is_dir(follow_symlinks=False):
                    pending.append(rel)
                elif not entry.is_file(follow_symlinks=False):
                    raise refuse(f"entry {rel!r} is not a file, directory or link")
    for rel in links:
        if resolve_in_tree(package_dir, rel) is None:
            raise refuse(f"link {rel} -> {os.readlink(os.path.join(package_dir, rel))} leaves the package")
    try:
        with open(os.path.join(package_dir, "info", "paths.json"), "rb") as f:
            listed = json.load(f).get("paths", [])
    except FileNotFoundError:
        listed = []
    except (OSError, ValueError, AttributeError) as exc:
        raise refuse(f"info/paths.json cannot be read: {exc}") from None
    linked = set(links)
    for item in listed if isinstance(listed, list) else [None]:
        path = item.get("_path") if isinstance(item, dict) else None
        if not isinstance(path, str) or path.startswith("/") or any(
                part in ("", ".", "..") or _name_problem(part) for part in path.split("/")):
            raise refuse(f"info/paths.json lists {path!r}, not a clean relative path")
        if path.split("/", 1)[0] == "conda-meta":  # the records of the environment (hb reads them), no package's
            raise refuse(f"info/paths.json lists {path!r}, in conda-meta/")
        parents = path.split("/")[:-1]
        if any("/".join(parents[:i]) in linked for i in range(1, len(parents) + 1)) \
                and resolve_in_tree(package_dir, path) is None:
            raise refuse(f"info/paths.json lists {path!r}, which leads out of the package through a link")


# C0 and C1 controls and the line and paragraph separators: a name holding one is not printable, and
# str.splitlines ends a line there (a console script "python\u2028x" split its RECORD row for layering)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # os.fsdecode's escapes of bytes that are not UTF-8


def _name_problem(name: str) -> str | None:
    if _CONTROL.search(name):
        return "a control character in its name"
    if _NOT_UTF8.search(name):
        return "its name is not UTF-8"
    return None


def check_prefix(root) -> None:
    """One walk of the installed prefix, before the wheels (which add regular files and directories
    only, written under umask 022):
    - no symlink may point outside it: each is resolved within the tree (resolve_in_tree: links
      through links, also across packages, never through the names of the directories the tree
      happens to sit in);
    - every name is printable UTF-8 (_name_problem): rattler writes names the package's tar never
      held (a noarch entry point `hi\x1f = m:f` became bin/hi\x1f in the image);
    - no file or directory stays writable by group or others: rattler keeps the modes a package's
      archive gives (0666 and 0777 files reached images as shipped), and in an image such a file lets
      any user of the container change the environment's code. Setuid and setgid bits are rattler's
      to strip (it does); links have no mode of their own.
    Directories are entered only when they are real ones."""
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                why = _name_problem(entry.name)
                if why:  # a noarch entry point's name comes from info/link.json, not from a member name
                    raise StageError(f"installed path {rel!r} has {why}")
                if entry.is_symlink():
                    if resolve_in_tree(root, rel) is None:
                        raise StageError(f"installed link {rel} -> {os.readlink(entry.path)} escapes the prefix")
                    continue
                mode = entry.stat(follow_symlinks=False).st_mode
                if mode & 0o022:
                    os.chmod(entry.path, stat.S_IMODE(mode) & ~0o022, follow_symlinks=False)
                if stat.S_ISDIR(mode):
                    pending.append(rel)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: stage_worker.py PARAMS.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        params = json.load(f)
    # -I left hb's environment out: the directories holding rattler come from the parameters
    sys.path[:0] = [p for p in params.get("sys_path", []) if p not in sys.path]
    os.umask(0o022)  # installed files' modes do not depend on the caller's umask
    try:
        print(stage(params), flush=True)
    except StageError as exc:
        print(f"stage: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # -I left this file's directory out
    from worker_exit import run_and_exit  # never a finalization: rattler's threads can crash it

    run_and_exit(main)
