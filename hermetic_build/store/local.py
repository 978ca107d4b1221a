"""The local store: sharded CAS files and action-cache entries on disk.

Writes go to a temp file, are fsynced and renamed into place, so a crash (even kill -9) never
leaves a partial blob under its final name. Blobs are made read-only. Every read is verified
against the digest; a corrupt blob is deleted and reported as missing, never served. Action-cache
entries are parsed strictly; a malformed one is deleted, counted and reported as a miss.

A cache directory carries a marker (hb-cache.json with the layout version, and a CACHEDIR.TAG):
hb creates it only in a new or empty directory, and deletes only what it made, only where the
marker is (`hb clean --expunge`, `hb cache gc`).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import stat
import tempfile
import time
from pathlib import Path

from blake3 import blake3

from ..anchored import RefusedPath, open_regular_file
from ..digest import CHUNK, Digest, digest_bytes, sha256_if_blob
from ..errors import UsageError
from ..jobs import BackgroundJobs
from ..leftovers import owner_pid, pid_alive, remove_tree, store_temp_prefix, sweep
from .base import MAX_ENTRY_BYTES, ActionResult, InvalidEntry, NewFile, Store, VerifiedReader, load_json

LAYOUT = 1
MARKER = "hb-cache.json"  # {"layout": 1}: proves hb made this directory
CACHEDIR_TAG = "CACHEDIR.TAG"  # https://bford.info/cachedir/: backup tools skip the directory
CACHEDIR_TAG_TEXT = ("Signature: 8a477f597d28d172789f06886806bc55\n"
                     "# This file is a cache directory tag created by hermetic-build (hb).\n"
                     "# For information about cache directory tags see https://bford.info/cachedir/\n")
LEGACY_MARKER = ".layout-v1"  # caches made before hb-cache.json; also "all shards exist"
# replaced by a new file (a new inode) whenever hb deletes a blob or an action-cache entry, so the
# no-op check (noop.py) sees with one stat that entries a build used may be gone
EVICTIONS = "evictions"
# everything hb creates at the top of a cache directory (workspaces/ is the sessions' state)
HB_ENTRIES = ("cas", "ac", "tmp", "views", "workspaces", "lock", EVICTIONS, MARKER, CACHEDIR_TAG, LEGACY_MARKER)
# A hit refreshes an entry's mtime (what gc's least-recently-used order reads) at most this often:
# touching every entry on every build made a no-op build write as many inodes as it has actions.
TOUCH_AFTER_S = 3600
_LEGACY_TEMP = re.compile(r"(?:sb|w)-[a-z0-9_]{8}")  # temp names before they carried a PID


def _load_syncfs():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


def _read_umask() -> int | None:
    """This process's umask (Linux shows it in /proc/self/status), without changing it; None if unknown."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


_syncfs = _load_syncfs()
_move_names = itertools.count()  # names in tmp/ for outputs being moved into the CAS
_temp_names = itertools.count()  # names in tmp/ for files being written
# read once: hb never changes its own umask (the stage worker sets its own, in its own process)
_UMASK = _read_umask()


def file_mode(mode: int = 0o666) -> int:
    """`mode` as a new file of this process gets it (the umask applied; 022 where it cannot be read),
    for a file first written under another name with its own mode (tempfile.mkstemp's 0600)."""
    return mode & ~(0o022 if _UMASK is None else _UMASK)


class LocalStore(Store):
    def __init__(self, root: Path, *, setting: str | None = None):
        """setting: how the user named this directory, for errors (e.g. "HB_CACHE_DIR=/x")."""
        self.root = Path(root)
        self.setting = setting or f"cache directory {self.root}"
        self.cas_dir = self.root / "cas"
        self.ac_dir = self.root / "ac"
        self.tmp_dir = self.root / "tmp"
        self.corrupt_removed: list[Digest] = []
        self.rejected_entries: list[tuple[str, str]] = []  # (action key, why) of malformed entries removed
        self._cas = str(self.cas_dir)
        self._tmp = str(self.tmp_dir)
        # blobs this process hashed itself and put into the CAS: digest -> the stat of the committed
        # file (inode, size, mtime, ctime). Reading one back while its stat is unchanged needs no
        # second hash of its content (see fetch_file); anything else is verified as it is read.
        self._fresh: dict[Digest, tuple] = {}
        self._deferred = 0  # > 0 inside deferred_durability(): no fsync per write, one syncfs at its end
        self._unsynced = False  # something was written since the last syncfs
        self._background_syncs = BackgroundJobs("hb-syncfs")  # syncfs calls to wait for
        try:
            self._open_root()
        except OSError as exc:
            raise UsageError(f"{self.setting}: cannot use it as the cache directory: {exc.strerror or exc}",
                             hint="point HB_CACHE_DIR (or cache_dir in hermetic.toml) at a writable directory "
                                  "that hb may create or already uses") from None

    # ----- the cache directory and its marker -------------------------------------------------
    def _open_root(self) -> None:
        try:
            os.makedirs(self.root, exist_ok=True)
        except FileExistsError:
            raise UsageError(f"{self.setting} is not a directory",
                             hint="point it at an empty or new directory") from None
        if not self.root.is_dir():
            raise UsageError(f"{self.setting} is not a directory", hint="point it at an empty or new directory")
        self._refuse_foreign_root()
        if not os.path.lexists(self.root / MARKER):
            self._claim()
        self._check_marker()
        if not (self.root / LEGACY_MARKER).exists():
            for d in (self.cas_dir, self.ac_dir, self.tmp_dir):
                d.mkdir(exist_ok=True)
            for i in range(256):  # all shards up front: no mkdir on the hot path
                os.makedirs(os.path.join(self._cas, f"{i:02x}"), exist_ok=True)
                os.makedirs(os.path.join(self.ac_dir, f"{i:02x}"), exist_ok=True)
            (self.root / LEGACY_MARKER).touch()
        fd, probe = self._temp()  # fail now, with the setting's name, if it is not writable
        os.close(fd)
        os.unlink(probe)

    def _refuse_foreign_root(self) -> None:
        """The cache must be yours: hb takes its results as its own and loads the state it keeps there
        as Python objects, so a cache another user made (say in /tmp, before you named it) or may
        write into is code run as you. Refused: a directory owned by another user, or writable by
        every user (git refuses others' repositories for the same reason: safe.directory)."""
        st = os.stat(self.root)
        if st.st_uid != os.getuid():
            raise UsageError(f"{self.setting} belongs to another user (uid {st.st_uid}): hb would take its results, "
                             "and the state it loads back, as its own",
                             hint="use a directory of your own (HB_CACHE_DIR); to keep its entries, copy them into one")
        if st.st_mode & stat.S_IWOTH:
            raise UsageError(f"{self.setting} is writable by every user: anyone could put results (and state hb "
                             "loads back) into it", hint=f"chmod o-w {self.root}, or use another directory")

    def _claim(self) -> None:
        """Write the marker into a new or empty directory, or an hb cache from before markers."""
        names = os.listdir(self.root)
        if MARKER in names:  # another hb claimed it since we looked (CI jobs starting on a new cache at once)
            return
        in_progress = {n for n in names if n == CACHEDIR_TAG or n.startswith(MARKER + ".tmp-")}
        if LEGACY_MARKER not in names and set(names) - in_progress:
            raise UsageError(f"{self.setting} is not an hb cache (no {MARKER}); "
                             "point it at an empty or new directory",
                             hint="hb only creates its cache in a new or empty directory, so that "
                                  "`hb clean --expunge` and `hb cache gc` never delete anything else")
        self._write_root_file(CACHEDIR_TAG, CACHEDIR_TAG_TEXT.encode())
        self._write_root_file(MARKER, json.dumps({"layout": LAYOUT}).encode() + b"\n")

    def _write_root_file(self, name: str, data: bytes) -> None:
        tmp = self.root / f"{MARKER}.tmp-{os.getpid()}-{name}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.root / name)

    def _check_marker(self) -> None:
        path = self.root / MARKER
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise InvalidEntry("not a regular file")
            marker = load_json(path.read_bytes(), limit=4096)
            layout = marker.get("layout") if isinstance(marker, dict) else None
        except (InvalidEntry, FileNotFoundError) as exc:
            raise UsageError(f"{self.setting}: {MARKER} is unreadable ({exc})",
                             hint=f"if this is an hb cache, delete {path} and run hb again") from None
        if layout != LAYOUT:
            raise UsageError(f"{self.setting}: cache layout {layout!r}, this hb uses layout {LAYOUT}",
                             hint="use another HB_CACHE_DIR for this hb version")

    def is_marked(self) -> bool:
        """True if the directory still carries hb's marker (checked again before deleting)."""
        try:
            self._check_marker()
        except UsageError:
            return False
        return True

    def expunge(self) -> list[str]:
        """Delete every entry hb makes in the cache directory (and the directory if that empties
        it). Returns the names of the entries left because hb did not make them."""
        if not self.is_marked():
            raise UsageError(f"{self.setting} is not an hb cache (no valid {MARKER}); not deleting anything")
        with self.lock(exclusive=True):
            for name in HB_ENTRIES:
                path = self.root / name
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISDIR(os.lstat(path).st_mode):
                        remove_tree(path)  # trees may hold 0o555 directories (views, sandboxes)
                    elif name != MARKER:
                        os.unlink(path)
            left = sorted(os.listdir(self.root))
            os.unlink(self.root / MARKER)  # last: until everything else is gone, it stays an hb cache
        if left == [MARKER]:
            with contextlib.suppress(OSError):
                os.rmdir(self.root)
        return [n for n in left if n != MARKER]

    def sweep_leftovers(self) -> int:
        """Remove sandboxes and temp files of hb processes that are gone (killed mid-build)."""
        return sweep(self.tmp_dir)

    # ----- paths and locking -------------------------------------------------------------
    def blob_path(self, digest: Digest) -> Path:
        return Path(self._blob(digest))

    def _blob(self, digest: Digest) -> str:
        return f"{self._cas}/{digest.hash[:2]}/{digest.hash}"

    def _ac_path(self, key: str) -> Path:
        return self.ac_dir / key[:2] / key

    def eviction_signals(self) -> list[str]:
        """Paths whose stat changes when entries are deleted: the evictions file (see EVICTIONS) and
        the cas/ and ac/ directories themselves (replaced if someone deletes them)."""
        return [str(self.root / EVICTIONS), self._cas, str(self.ac_dir)]

    def _note_eviction(self) -> None:
        with contextlib.suppress(OSError):
            fd, tmp = self._temp()
            os.close(fd)
            os.replace(tmp, self.root / EVICTIONS)

    @contextlib.contextmanager
    def lock(self, exclusive: bool = False, wait: bool = True):
        """Builds hold the cache shared; gc holds it exclusively, so it never races a build."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            if not wait:
                flags |= fcntl.LOCK_NB
            fcntl.flock(fd, flags)
            yield
        finally:
            os.close(fd)

    def _temp(self, mode: int = 0o600) -> tuple[int, str]:
        """A new file in tmp/ (a name of this process, see leftovers), opened for writing. Created
        with `mode`: a file committed with that mode needs no chmod (see _commit)."""
        for _ in range(100):
            tmp = f"{self._tmp}/{store_temp_prefix()}t{next(_temp_names)}"
            try:
                return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode), tmp
            except FileExistsError:  # left by a process that had this PID before
                continue
        fd, tmp = tempfile.mkstemp(dir=self._tmp, prefix=store_temp_prefix())
        os.fchmod(fd, mode)
        return fd, tmp

    def _commit(self, tmp: str, final, mode: int = 0o444, *, has_mode: bool = False) -> None:
        """Rename tmp to final with permissions `mode` (has_mode: tmp has them already, see _exact)."""
        self._unsynced = True
        if not has_mode:
            os.chmod(tmp, mode)
        try:
            os.replace(tmp, final)
        except FileNotFoundError:  # a shard removed by hand: recreate it
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.replace(tmp, final)

    def _commit_blob(self, tmp: str, digest: Digest, fd: int | None = None, *, has_mode: bool = False) -> None:
        """Commit a blob whose content this process has just hashed, and remember it as fresh.
        fd: a descriptor of the same inode, if one is open (fstat is cheaper than a path lookup)."""
        final = self._blob(digest)
        self._commit(tmp, final, has_mode=has_mode)
        st = os.fstat(fd) if fd is not None else os.stat(final)
        if st.st_size == digest.size:
            self._fresh[digest] = file_identity(st)

    def _is_fresh(self, digest: Digest, st: os.stat_result) -> bool:
        return self._fresh.get(digest) == file_identity(st)

    def _holds_fresh(self, digest: Digest) -> bool:
        try:
            return self._is_fresh(digest, os.stat(self._blob(digest), follow_symlinks=False))
        except FileNotFoundError:
            return False

    # ----- CAS -----------------------------------------------------------------------------
    def has_blob(self, digest: Digest) -> bool:
        try:
            st = os.stat(self._blob(digest))
        except FileNotFoundError:
            return False
        if st.st_size != digest.size:
            self._remove_corrupt(digest)
            return False
        return True

    def touch(self, digest: Digest) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.blob_path(digest))

    def get_blob(self, digest: Digest) -> bytes | None:
        """The blob's bytes, verified; None (and the blob removed) if missing or corrupt. Read through
        a bare descriptor: a directory blob or a small file costs an open, an fstat and one read."""
        try:
            fd = os.open(self._blob(digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            data = None
            if os.fstat(fd).st_size == digest.size:
                data = os.read(fd, digest.size)
                while len(data) < digest.size and (more := os.read(fd, digest.size - len(data))):
                    data += more  # a short read, rare for a regular file
        finally:
            os.close(fd)
        if data is None or digest_bytes(data) != digest:
            self._remove_corrupt(digest)
            return None
        return data

    def open_blob(self, digest: Digest):
        """A streaming reader of the blob, verified as it is read (see Store.open_blob)."""
        try:
            f = open(self._blob(digest), "rb", buffering=0)  # noqa: SIM115 - the reader closes it
        except FileNotFoundError:
            return None
        if os.fstat(f.fileno()).st_size != digest.size:
            f.close()
            self._remove_corrupt(digest)
            return None
        return VerifiedReader(f, digest, lambda: self._remove_corrupt(digest))

    def put_blob(self, data: bytes, *, fsync: bool = True) -> Digest:
        digest = digest_bytes(data)
        if self.has_blob(digest):
            return digest
        fd, tmp = self._temp(0o444)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                if fsync and not self._deferred:
                    os.fsync(f.fileno())
            self._commit_blob(tmp, digest, has_mode=_exact(0o444))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return digest

    def put_file(self, path: Path, *, move: bool = False, fsync: bool = True) -> Digest:
        """Store a file's content. With move=True the file is renamed into the CAS (same filesystem).

        fsync=False leaves durability to one flush() for a batch (a tree of thousands of files):
        the caller must flush() before recording anything that refers to these blobs."""
        if move:
            hasher, size = blake3(), 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
                    size += len(chunk)
                if fsync and not self._deferred:
                    os.fsync(f.fileno())
            digest = Digest(hasher.hexdigest(), size)
            if self.has_blob(digest):
                os.unlink(path)
                return digest
            try:
                self._commit_blob(str(path), digest)
                return digest
            except OSError:  # another filesystem: fall back to copying
                pass
        with open(path, "rb") as src:
            digest = self._copy_in(src, fsync)
        if move:
            os.unlink(path)
        return digest

    def put_at(self, dir_fd: int, name: str, *, move: bool = False, fsync: bool = True,
               known: tuple | None = None) -> Digest:
        """Store the regular file `name` of the directory dir_fd without following a link: a link or
        a special file raises RefusedPath; the content is read from the descriptor that was opened.
        With move=True that same inode is renamed into the CAS (by name relative to dir_fd, then
        checked to be the inode that was hashed), unless it has other hard links: then it is copied,
        so a file outside the directory is never moved, deleted or chmod-ed.

        known: (file_identity, Digest) of a file hb's own code wrote in this process, hashing the
        bytes as it wrote them (ActionExecution.note_written). With move=True, if the opened file
        is still that inode, unchanged, its digest is taken as it is instead of reading it again.
        A moved file whose blob this process has already stored and hashed (unchanged since) is
        deleted instead: the blob stays, and the copy is never written to disk."""
        fd, st = open_regular_file(dir_fd, name)
        with os.fdopen(fd, "rb") as src:
            if move and st.st_nlink == 1:
                if known is not None and known[0] == file_identity(st):
                    digest = known[1]
                else:
                    hasher, size = blake3(), 0
                    while chunk := src.read(CHUNK):
                        hasher.update(chunk)
                        size += len(chunk)
                    digest = Digest(hasher.hexdigest(), size)
                if digest in self._fresh and self._holds_fresh(digest):
                    # a blob this process wrote and hashed is already there, unchanged (a layer blob
                    # placed again in an image layout): drop this copy rather than replace that blob,
                    # so the copy's pages are never written to disk
                    os.unlink(name, dir_fd=dir_fd)
                    return digest
                if fsync and not self._deferred:
                    os.fsync(src.fileno())
                # no has_blob() first: a blob already there is replaced by this one, which has the
                # same content (one rename instead of a stat and an unlink, and a cold build has none)
                os.fchmod(src.fileno(), 0o444)  # the inode that was hashed (checked after the move)
                tmp = f"{self._tmp}/{store_temp_prefix()}m{next(_move_names)}"
                try:
                    os.rename(name, tmp, src_dir_fd=dir_fd)
                except OSError:  # another filesystem: copy below
                    pass
                else:
                    moved = os.stat(tmp, follow_symlinks=False)
                    if (moved.st_dev, moved.st_ino) == (st.st_dev, st.st_ino):
                        self._commit_blob(tmp, digest, src.fileno(), has_mode=True)
                        return digest
                    with contextlib.suppress(OSError):  # left for gc if it is a directory
                        os.unlink(tmp)
                    raise RefusedPath(f"{name} changed while it was being collected")
                src.seek(0)
            digest = self._copy_in(src, fsync)
        if move:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
        return digest

    def put_hashed(self, src_fd: int, digest: Digest) -> None:
        """Copy the open file src_fd into the CAS as `digest`, in the kernel, without hashing it
        again: for a file this process has just hashed through that same descriptor and that nothing
        can change any more (store_tree_in_place: the sandbox that wrote it has exited). Not fsynced:
        for use inside deferred_durability."""
        fd, tmp = self._temp(0o444)
        try:
            try:
                _copy_fd(src_fd, fd, digest.size)
                self._commit_blob(tmp, digest, fd, has_mode=_exact(0o444))  # fstat, not a second path lookup
            finally:
                os.close(fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def sha256_verified(self, digest: Digest) -> str:
        """The SHA-256 of a blob, read once for both hashes (digest.sha256_if_blob): for uploads (a
        registry or REAPI cache, a remote executor's inputs), which name a blob by its SHA-256 and must
        never send bytes that are no longer the blob (a disk error, someone writing into the cache).
        MissingBlob (and the blob removed) if it is gone or changed: its producer runs again."""
        from ..tree import MissingBlob

        sha = sha256_if_blob(self._blob(digest), digest)
        if sha is None:
            self._remove_corrupt(digest)
            raise MissingBlob(digest)
        return sha

    def _copy_in(self, src, fsync: bool) -> Digest:
        """Copy an open binary file into the CAS, hashing it on the way."""
        fd, tmp = self._temp(0o444)
        try:
            hasher, size = blake3(), 0
            with os.fdopen(fd, "wb") as dst:
                while chunk := src.read(CHUNK):
                    hasher.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
                dst.flush()
                if fsync and not self._deferred:
                    os.fsync(dst.fileno())
            digest = Digest(hasher.hexdigest(), size)
            if self.has_blob(digest):
                os.unlink(tmp)
            else:
                self._commit_blob(tmp, digest, has_mode=_exact(0o444))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return digest

    @contextlib.contextmanager
    def deferred_durability(self, *, background: bool = False):
        """Within this block nothing is fsynced as it is written (blobs, action-cache entries); one
        syncfs at its end makes all of it durable. Safe because every reader already distrusts
        what a power loss could leave behind: an entry that is lost or truncated is malformed (a
        miss, removed), a blob that is lost or short fails the size check of a cache hit, and one
        with wrong content fails verification when it is read; the action then runs again. A
        kill -9 loses nothing either way (every write is a temp file renamed into place).

        background=True: that syncfs runs on a thread of its own while the caller goes on (a build
        publishes its outputs meanwhile); wait_for_durability() waits for it, and so does the
        interpreter before it exits (not a daemon thread). Nothing is less safe for it: what the
        block wrote was already visible unsynced, and readers distrust it as above until then."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1
            if not self._deferred and self._unsynced:
                if background:
                    self._sync_in_background()
                else:
                    self._syncfs()

    def _sync_in_background(self) -> None:
        self._background_syncs.start(self._syncfs)

    def wait_for_durability(self) -> None:
        """Wait for the syncfs calls started by deferred_durability(background=True); raise the first
        error one of them met."""
        self._background_syncs.wait()

    def flush(self) -> None:
        """Make every blob written so far durable (one syncfs instead of an fsync per file); inside
        deferred_durability() the syncfs at its end does it."""
        if not self._deferred:
            self._syncfs()

    def _syncfs(self) -> None:
        self._unsynced = False
        fd = os.open(self.cas_dir, os.O_RDONLY)
        try:
            if _syncfs is None or _syncfs(fd) != 0:
                os.sync()
        finally:
            os.close(fd)

    def fetch_file(self, digest: Digest, dest: Path, *, dir_fd: int | None = None, mode: int | None = None) -> bool:
        src = self.blob_path(digest)
        try:
            fin = open(src, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return False
        with fin:
            out = NewFile(dest, dir_fd=dir_fd, mode=mode)
            try:
                if self._is_fresh(digest, os.fstat(fin.fileno())):
                    # hashed by this process as it went in, and unchanged since (same inode, size,
                    # mtime, ctime): copied in the kernel, without hashing it a second time
                    _copy_fd(fin.fileno(), out.file.fileno(), digest.size)
                    out.commit()
                    return True
                hasher, size = blake3(), 0
                while chunk := fin.read(CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                if Digest(hasher.hexdigest(), size) != digest:
                    out.discard()
                    self._remove_corrupt(digest)
                    return False
                out.commit()
            except BaseException:
                out.discard()
                raise
        return True

    def fetch_new_file(self, digest: Digest, name: str, dir_fd: int, mode: int) -> bool:
        """Write the blob as the new file `name` of the open directory dir_fd, created O_EXCL|O_NOFOLLOW
        (FileExistsError if anything is there, a link included) with permission bits `mode`. For a
        directory that is being filled and is not yet visible (a tree materialized into a temp
        directory): no temp file and rename, as fetch_file needs for a path others may read. False
        (and nothing left) if the blob is missing or corrupt."""
        if not name or "/" in name or name in (".", ".."):
            raise ValueError(f"not a single name: {name!r}")
        try:
            fin = open(self._blob(digest), "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:
            return False
        with fin:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777,
                         dir_fd=dir_fd)
            ok = False
            try:
                if not _exact(mode & 0o777):
                    os.fchmod(fd, mode & 0o777)
                if self._is_fresh(digest, os.fstat(fin.fileno())):
                    _copy_fd(fin.fileno(), fd, digest.size)  # hashed as it went in, unchanged since
                    ok = True
                else:
                    hasher, size = blake3(), 0
                    while chunk := fin.read(CHUNK):
                        hasher.update(chunk)
                        _write_all(fd, chunk)
                        size += len(chunk)
                    ok = Digest(hasher.hexdigest(), size) == digest
                    if not ok:
                        self._remove_corrupt(digest)
            finally:
                os.close(fd)
                if not ok:
                    os.unlink(name, dir_fd=dir_fd)  # the file this call created (O_EXCL)
        return ok

    def open_verified(self, digest: Digest) -> Path | None:
        """Path of a blob after checking its content; for readers that need a real file."""
        path = self.blob_path(digest)
        try:
            hasher, size = blake3(), 0
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
                    size += len(chunk)
        except FileNotFoundError:
            return None
        if Digest(hasher.hexdigest(), size) != digest:
            self._remove_corrupt(digest)
            return None
        return path

    def _remove_corrupt(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.blob_path(digest))
        self._note_eviction()
        self.corrupt_removed.append(digest)

    def remove_corrupt_blob(self, digest: Digest, why: str = "") -> None:
        """A reader found a blob's content unusable (e.g. a directory blob that is not a valid
        tree): delete it, like a blob that fails verification."""
        self._remove_corrupt(digest)

    # ----- action cache --------------------------------------------------------------------
    def get_action_result(self, key: str) -> ActionResult | None:
        path = self._ac_path(key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:  # a link, or something else that is not an entry hb wrote
            self.reject_action_result(key, f"unreadable: {exc.strerror}")
            return None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_ENTRY_BYTES:
                data = None
            else:
                data = f.read(MAX_ENTRY_BYTES + 1)
        try:
            if data is None:
                raise InvalidEntry("not a regular file of at most 1 MiB")
            result = ActionResult.decode(data)
        except InvalidEntry as exc:
            self.reject_action_result(key, str(exc))
            return None
        if time.time() - st.st_mtime > TOUCH_AFTER_S:  # `hb cache gc` evicts by mtime: mark it used
            with contextlib.suppress(OSError):
                os.utime(path)
        return result

    def reject_action_result(self, key: str, why: str) -> None:
        """An entry is malformed, or does not fit its action: delete it and count it."""
        self.remove_action_result(key)
        self.rejected_entries.append((key, why))

    def put_action_result(self, key: str, result: ActionResult, *, fsync: bool = True) -> None:
        """fsync=False for entries whose loss is only a miss (e.g. aliases, see ActionExecution)."""
        fd, tmp = self._temp(0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(result.encode())
            f.flush()
            if fsync and not self._deferred:
                os.fsync(f.fileno())
        self._commit(tmp, self._ac_path(key), 0o644, has_mode=_exact(0o644))

    def remove_action_result(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._ac_path(key))
        self._note_eviction()

    # ----- maintenance ---------------------------------------------------------------------
    def entries(self):
        """(mtime, size, path) of every CAS blob and action-cache entry."""
        for top in (self.cas_dir, self.ac_dir):
            for shard in os.scandir(top):
                if not shard.is_dir():
                    continue
                for entry in os.scandir(shard.path):
                    with contextlib.suppress(FileNotFoundError):
                        st = entry.stat()
                        yield st.st_mtime, st.st_size, entry.path

    def stats(self) -> dict:
        blobs = ac = size = 0
        for _, entry_size, path in self.entries():
            size += entry_size
            if path.startswith(str(self.cas_dir)):
                blobs += 1
            else:
                ac += 1
        return {"root": str(self.root), "blobs": blobs, "action_cache_entries": ac, "bytes": size}

    def gc(self, max_size: int) -> dict:
        """Delete least recently used entries until the store is at most max_size bytes.

        Holds the cache exclusively: a build in progress (which holds it shared) is never robbed
        of the entries it is using; gc waits for it to finish.
        """
        if not self.is_marked():
            raise UsageError(f"{self.setting} is not an hb cache (no valid {MARKER}); not deleting anything")
        with self.lock(exclusive=True):
            for leftover in os.scandir(self.tmp_dir):  # only hb's own temp names
                pid = owner_pid(leftover.name)
                if pid is None and not _LEGACY_TEMP.fullmatch(leftover.name):
                    continue
                if pid is not None and (pid == os.getpid() or pid_alive(pid)):
                    continue
                with contextlib.suppress(OSError):
                    if leftover.is_dir(follow_symlinks=False):
                        remove_tree(leftover.path)
                    else:
                        os.unlink(leftover.path)
            from ..treeviews import TreeViews

            TreeViews(self, self.root, self.tmp_dir).remove_all()  # re-made from the CAS when needed
            entries = sorted(self.entries())
            total = sum(size for _, size, _ in entries)
            removed = freed = 0
            for _, size, path in entries:
                if total <= max_size:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                total -= size
                freed += size
                removed += 1
            if removed:
                self._note_eviction()
            return {"removed": removed, "freed_bytes": freed, "remaining_bytes": total, "at": time.time()}


def _exact(mode: int) -> bool:
    """Whether a file created with `mode` gets all of it (the umask takes none of its bits)."""
    return _UMASK is not None and not mode & _UMASK


def file_identity(st: os.stat_result) -> tuple:
    """What changes when a file is replaced or written: device, inode, size, mtime, ctime (ns)."""
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy_fd(src: int, dst: int, size: int) -> None:
    """Copy `size` bytes from the start of src to dst in the kernel (copy_file_range; sendfile where
    the filesystems refuse it); the data never passes through Python."""
    offset = 0
    try:
        while offset < size:
            n = os.copy_file_range(src, dst, size - offset, offset, offset)
            if n == 0:
                break
            offset += n
    except OSError:  # e.g. EXDEV on older kernels, EINVAL on some filesystems
        os.lseek(dst, offset, os.SEEK_SET)
        while offset < size:
            n = os.sendfile(dst, src, offset, size - offset)
            if n == 0:
                break
            offset += n
    if offset != size:
        raise OSError(f"blob shorter than its digest says ({offset} of {size} bytes)")
