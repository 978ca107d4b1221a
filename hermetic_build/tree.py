"""Directory trees as Merkle trees in the CAS: each directory is a canonical JSON blob listing
its entries (name, kind, digest or link target, mode bits), sorted by name.

Directory blobs come from caches others can write to: they are validated (decode_directory) before
any entry is used, and trees are written without ever following a link (materialize_tree)."""

from __future__ import annotations

import itertools
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .anchored import DIR_FLAGS, RefusedPath, open_subdirectory
from .digest import Digest
from .errors import IntegrityError
from .store.base import InvalidEntry, load_json, parse_digest

TREE_VERSION = 1
MAX_DIRECTORY_BYTES = 64 << 20  # one directory blob (about 400,000 entries)
MAX_TREE_DEPTH = 4096  # deeper than any path Linux can open (PATH_MAX 4096)
MAX_TREE_ENTRIES = 1_000_000  # entries in one tree, counting a shared subtree each time it appears
# the JSON values a directory blob may make (boundedjson's count): at most 5 an entry (its object and
# four members), so MAX_TREE_ENTRIES in one directory; ~400 MiB of objects at most, where 64 MiB of
# `[[],...]` made 1.5 GiB
MAX_DIRECTORY_VALUES = 5 * MAX_TREE_ENTRIES + 16
_KINDS = ("file", "dir", "symlink")


@dataclass(frozen=True)
class TreeEntry:
    name: str
    kind: str  # "file" | "dir" | "symlink"
    digest: Digest | None = None  # file: blob, dir: directory blob
    mode: int = 0o644
    target: str | None = None  # symlink

    def to_json(self) -> dict:
        data = {"name": self.name, "kind": self.kind, "mode": self.mode}
        if self.digest is not None:
            data["digest"] = str(self.digest)
        if self.target is not None:
            data["target"] = self.target
        return data


def encode_directory(entries: list[TreeEntry]) -> bytes:
    """Canonical JSON (sorted keys, no whitespace); the values are all strings and ints."""
    body = {"v": TREE_VERSION, "entries": [e.to_json() for e in sorted(entries, key=lambda e: e.name)]}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_name(name) -> str:
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidEntry(f"entry name {str(name)[:80]!r} is not a single path component")
    if name.isascii():  # the common case: its length in bytes is its length
        if len(name) > 255:
            raise InvalidEntry(f"entry name {name[:40]!r}... is longer than 255 bytes")
        return name
    try:
        if len(name.encode()) > 255:
            raise InvalidEntry(f"entry name {name[:40]!r}... is longer than 255 bytes")
    except UnicodeEncodeError:
        raise InvalidEntry(f"entry name {name[:40]!r} is not UTF-8") from None
    return name


_FIELDS = {kind: frozenset({"name", "kind", "mode", "target" if kind == "symlink" else "digest"}) for kind in _KINDS}


def _decode_entry(e) -> TreeEntry:
    if not isinstance(e, dict):
        raise InvalidEntry("an entry is not an object")
    name = _check_name(e.get("name"))
    kind = e.get("kind")
    allowed = _FIELDS.get(kind) if type(kind) is str else None
    if allowed is None:
        raise InvalidEntry(f"{name!r}: unknown kind {str(kind)[:20]!r}")
    if e.keys() != allowed:
        unknown = e.keys() - allowed
        field = min(unknown or allowed - e.keys())
        raise InvalidEntry(f"{name!r}: field {field[:40]!r} {'not allowed' if unknown else 'missing'} for a {kind}")
    mode = e["mode"]
    if type(mode) is not int or not 0 <= mode <= 0o7777:
        raise InvalidEntry(f"{name!r}: mode is not an integer within 0..0o7777")
    if kind == "symlink":
        target = e["target"]
        if not isinstance(target, str) or not target or "\0" in target or len(target) > 4095:
            raise InvalidEntry(f"{name!r}: bad symlink target")
        return TreeEntry(name, kind, None, mode, target)
    return TreeEntry(name, kind, parse_digest(e["digest"], name), mode)


def decode_directory(data: bytes) -> list[TreeEntry]:
    """Parse a directory blob with a strict schema; raises InvalidEntry (a ValueError) if it is not
    exactly what encode_directory writes: version, single-component names, strictly sorted (so
    unique), known kinds, a digest for files and directories, a target for links, mode bits."""
    obj = load_json(data, limit=MAX_DIRECTORY_BYTES, max_values=MAX_DIRECTORY_VALUES)
    if not isinstance(obj, dict) or obj.keys() != {"v", "entries"}:
        raise InvalidEntry("not a directory blob")
    if type(obj["v"]) is not int or obj["v"] != TREE_VERSION:
        raise InvalidEntry(f"directory blob version {str(obj['v'])[:20]}, expected {TREE_VERSION}")
    if not isinstance(obj["entries"], list):
        raise InvalidEntry("entries is not a list")
    entries = [_decode_entry(e) for e in obj["entries"]]
    for before, after in itertools.pairwise(entries):
        if not before.name < after.name:
            raise InvalidEntry(f"entries not strictly sorted by name ({before.name[:40]!r}, {after.name[:40]!r})")
    return entries


MAX_TREE_DEPTH = 256  # deeper trees are refused (with a message), not a RecursionError


def store_tree(store, root: Path | int, *, move: bool = False, known: dict | None = None) -> Digest:
    """Put every file of a directory into the store and return the digest of its root directory.

    root: a path (its last component must not be a link) or an open directory descriptor (left
    open). The tree is walked by descriptors: each entry is opened relative to its parent with
    O_NOFOLLOW, so a link is stored as a symlink entry (its target as data) and never followed,
    and an entry swapped for a link while it is read is refused (anchored.RefusedPath), as is
    anything that is not a file, directory or link.

    Files are stored without an fsync each; one flush() at the end makes them all durable.
    (Hashing on several threads was measured slower here: 9,000 small files, 1.5 s vs 2.4 s.)

    known: relative path -> (file identity, Digest) of files hb's own code wrote and hashed (see
    LocalStore.put_at): with move=True such a file, still unchanged, is not read again."""
    if isinstance(root, int):
        root_fd = os.dup(root)
    else:
        parent_fd = os.open(Path(root).parent, DIR_FLAGS & ~os.O_NOFOLLOW)
        try:
            root_fd = open_subdirectory(parent_fd, Path(root).name, str(root))
        finally:
            os.close(parent_fd)
    try:
        digest = _store_directory(store, root_fd, "", move, 0, known or {})
    finally:
        os.close(root_fd)
    store.flush()
    return digest


def store_tree_in_place(store, root_fd: int) -> tuple[Digest, str | None]:
    """Like store_tree, but every file stays where it is: each is hashed (read through the
    descriptor that was opened, never through a link) and copied into the store only if the store
    does not hold that blob yet. Returns the tree's digest and None if the tree may be published by
    renaming it as it is, else why not (the caller then materializes it from the store, which gives
    fresh files): a file with other hard links, setuid, setgid or sticky bits, extended attributes
    (an ACL included) or another owner, on a file or a directory. Those are what materialize_tree
    would not reproduce; without them, the renamed tree is exactly what materialize_tree would
    write. For a tree nothing else can change any more (the command that wrote it has exited).

    One thread: copying the missing blobs on one or two threads beside the hashing one was measured
    slower on ext4 (a 6,300-file environment into an empty CAS: 0.98-1.37 s vs 0.68-0.85 s)."""
    why = _not_plain(root_fd, os.fstat(root_fd), ".")
    problems: list[str] = [why] if why else []
    digest = _store_directory(store, root_fd, "", False, 0, {}, problems)
    store.flush()
    return digest, (problems[0] if problems else None)


def _not_plain(fd: int, st: os.stat_result, shown: str) -> str | None:
    """Why an entry of a tree published in place would differ from a materialized one, or None."""
    if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:
        return f"{shown} has other hard links"
    if stat.S_IMODE(st.st_mode) & 0o7000:
        return f"{shown} has setuid, setgid or sticky bits"
    if st.st_uid != os.getuid():
        return f"{shown} belongs to another user"
    if os.listxattr(fd):
        return f"{shown} has extended attributes"
    return None


def _put_in_place(store, dir_fd: int, name: str, shown: str, problems: list, scanned: os.stat_result) -> Digest:
    """Hash a file without moving it; copied into the store only if the blob is not there (a local
    store's put_hashed: the file cannot change, its sandbox has exited). `scanned`: the file's lstat
    from the directory listing; what is opened must be that file (open_scanned_file). A file of up to
    CHUNK bytes is read with one call (most files of an environment: a descriptor and a read, no file
    object, see digest_fd), a larger one in chunks."""
    from .anchored import open_scanned_file
    from .digest import digest_fd

    fd, st = open_scanned_file(dir_fd, name, scanned, shown)
    try:
        if not problems:
            why = _not_plain(fd, st, shown)
            if why:
                problems.append(why)
        digest = digest_fd(fd, st.st_size)
        if not store.has_blob(digest):  # copied from the descriptor just hashed: not read and hashed twice
            store.put_hashed(fd, digest)
    finally:
        os.close(fd)
    return digest


def _store_directory(store, fd: int, prefix: str, move: bool, depth: int, known: dict,
                     in_place: list | None = None) -> Digest:
    """in_place: None, or a list that collects why the tree cannot be published in place
    (store_tree_in_place); then files are hashed where they are, not moved."""
    if depth > MAX_TREE_DEPTH:
        raise RefusedPath(f"{prefix or '.'} is nested more than {MAX_TREE_DEPTH} directories deep")
    entries = []
    with os.scandir(fd) as it:
        children = [(child.name, child.stat(follow_symlinks=False)) for child in it]
    for name, st in children:
        shown = f"{prefix}{name}"
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            entries.append(TreeEntry(name, "symlink", mode=0o777, target=os.readlink(name, dir_fd=fd)))
        elif stat.S_ISDIR(st.st_mode):
            sub = open_subdirectory(fd, name, shown)
            try:
                if in_place is not None and not in_place:
                    why = _not_plain(sub, os.fstat(sub), shown)
                    if why:
                        in_place.append(why)
                entries.append(TreeEntry(name, "dir", _store_directory(store, sub, shown + "/", move, depth + 1, known,
                                                                       in_place), mode))
            finally:
                os.close(sub)
        elif stat.S_ISREG(st.st_mode):
            try:
                if in_place is not None:
                    digest = _put_in_place(store, fd, name, shown, in_place, st)
                elif shown in known:
                    digest = store.put_at(fd, name, move=move, fsync=False, known=known[shown])
                else:
                    digest = store.put_at(fd, name, move=move, fsync=False)
            except RefusedPath as exc:
                raise RefusedPath(f"{prefix}{exc}") from None
            entries.append(TreeEntry(name, "file", digest, mode))
        else:
            raise RefusedPath(f"{shown}: only files, directories and symlinks can be stored "
                              f"(this is {stat.filemode(st.st_mode)})")
    return store.put_blob(encode_directory(entries), fsync=False)


class MissingBlob(Exception):
    """A blob a tree refers to is missing or failed verification (and was removed)."""

    def __init__(self, digest: Digest, message: str | None = None):
        super().__init__(message or f"blob {digest} is missing or corrupt")
        self.digest = digest


def small_blob(store, digest: Digest, limit: int, what: str) -> bytes:
    """The bytes of a blob a rule reads whole into memory (a JSON record, a manifest, a METADATA
    file of a tree), refused before anything is read if its digest claims more than `limit` bytes:
    the tree may come from a remote cache, whose digests claim any size. ActionFailed names `what`;
    MissingBlob if the blob is missing or corrupt (its producer runs again)."""
    from .errors import ActionFailed

    if digest.size > limit:
        raise ActionFailed(f"{what} is {digest.size:,} bytes, more than the {limit >> 20} MiB hb reads of such a "
                           "file: it is not what it should be (a hostile package, or a cache entry changed)")
    data = store.get_blob(digest)
    if data is None:
        raise MissingBlob(digest)
    return data


class InvalidTree(MissingBlob):
    """A directory blob that is not a valid tree (or a tree beyond the limits): treated like a
    corrupt blob. It has been removed from the local store; whoever produced it runs again."""

    def __init__(self, digest: Digest, why: str):
        super().__init__(digest, f"directory blob {digest} is not a valid tree: {why}")
        self.why = why


def _discard(store, digest: Digest, why: str) -> None:
    remove = getattr(store, "remove_corrupt_blob", None)
    if remove is not None:
        remove(digest, f"not a valid tree: {why}")


def read_directory(store, digest: Digest) -> list[TreeEntry]:
    """The validated entries of one directory blob. MissingBlob if it is missing or corrupt,
    InvalidTree (a MissingBlob) if it does not follow the schema (it is then removed). The size a
    digest claims is checked before anything is read: an action result of a remote cache may name
    a "directory" of any size, which get_blob would read whole into memory (a 1.5 GiB one took hb
    3.1 GB and 13 s before it was refused)."""
    if digest.size > MAX_DIRECTORY_BYTES:
        _discard(store, digest, "larger than a directory may be")
        raise InvalidTree(digest, f"it claims {digest.size:,} bytes, more than the {MAX_DIRECTORY_BYTES >> 20} MiB "
                                  "a directory may take")
    data = store.get_blob(digest)
    if data is None:
        raise MissingBlob(digest)
    try:
        return decode_directory(data)
    except InvalidEntry as exc:
        _discard(store, digest, str(exc))
        raise InvalidTree(digest, str(exc)) from None


def _walk(store, digest: Digest, prefix: str, cache: dict | None):
    """Parents before children, in name order, without recursion; bounded in depth and size."""
    def entries_of(d: Digest) -> list[TreeEntry]:
        if cache is None:
            return read_directory(store, d)
        if d not in cache:
            cache[d] = read_directory(store, d)
        return cache[d]

    stack = [(prefix, iter(entries_of(digest)))]
    count = 0
    while stack:
        base, it = stack[-1]
        entry = next(it, None)
        if entry is None:
            stack.pop()
            continue
        count += 1
        if count > MAX_TREE_ENTRIES:
            _discard(store, digest, "too many entries")
            raise InvalidTree(digest, f"more than {MAX_TREE_ENTRIES} entries")
        path = base + entry.name
        yield path, entry, len(stack)
        if entry.kind == "dir":
            if len(stack) >= MAX_TREE_DEPTH:
                _discard(store, digest, "too deep")
                raise InvalidTree(digest, f"deeper than {MAX_TREE_DEPTH} levels")
            stack.append((path + "/", iter(entries_of(entry.digest))))


def lookup_tree(store, digest: Digest, path: str) -> TreeEntry | None:
    """The entry at the relative `path` ("a/b/c") of a tree, or None; directories on the way are
    validated as they are read, and a symlink on the way is not followed (None)."""
    entry = None
    for i, name in enumerate(path.split("/")):
        if i and (entry is None or entry.kind != "dir"):
            return None
        entries = read_directory(store, digest if entry is None else entry.digest)
        entry = next((e for e in entries if e.name == name), None)
        if entry is None:
            return None
    return entry


def walk_tree(store, digest: Digest, prefix: str = ""):
    """Yield (relative path, TreeEntry) for every entry, parents before children, sorted.
    Every directory blob is validated as it is read (InvalidTree / MissingBlob otherwise)."""
    for path, entry, _depth in _walk(store, digest, prefix, None):
        yield path, entry


def materialize_tree(store, digest: Digest, dest: Path, threads: int = 1) -> None:
    """Recreate a tree from the store under dest (verified blob by blob).

    The whole tree is read and validated before anything is written. Then every entry is created
    new, relative to the open directory that holds it: directories with mkdir (which fails on
    anything already there, a link included) and opened O_NOFOLLOW; files created O_EXCL|O_NOFOLLOW
    in place where the store can (fetch_new_file: dest is a directory being filled, not yet
    visible; a build killed mid-way leaves the partial tree under its temp name), else as new temp
    files renamed into place; links only where nothing exists. So nothing is ever written through a
    link, whatever the tree says. Only permission bits (0o777) are applied: never setuid, setgid
    or sticky bits from a cache.

    threads > 1: files are copied by that many threads (on a busy disk each create waits on the
    journal; the waits overlap), each into the directory this thread opened and checked; a
    directory's mode is set, and its descriptor closed, once its files are written."""
    cache: dict[Digest, list[TreeEntry]] = {}
    for _ in _walk(store, digest, "", cache):  # validate everything (and the limits) first
        pass
    prefetch = getattr(store, "prefetch", None)  # a tiered store: fetch remote blobs in batches
    if prefetch is not None:
        prefetch([e.digest for entries in cache.values() for e in entries if e.kind == "file"])
    Path(dest).mkdir(parents=True, exist_ok=True)
    pool = None
    if threads > 1:
        import concurrent.futures

        pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="materialize")
    new_file = getattr(store, "fetch_new_file", None)  # stores that can write a new file in place
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    # (dir fd, entries left, mode to set when done, copies of its files still running)
    stack = [(root_fd, iter(cache[digest]), None, [])]
    try:
        while stack:
            fd, it, _mode, copies = stack[-1]
            entry = next(it, None)
            if entry is None:
                for copy in copies:
                    copy.result()
                stack.pop()
                try:
                    if _mode is not None:
                        os.fchmod(fd, _mode)
                finally:
                    os.close(fd)
                continue
            mode = entry.mode & 0o777
            if entry.kind == "dir":
                os.mkdir(entry.name, 0o700, dir_fd=fd)
                child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                stack.append((child, iter(cache[entry.digest]), mode, []))
            elif entry.kind == "file":
                if new_file is None:  # else created O_EXCL: FileExistsError if anything is there
                    _check_absent(fd, entry.name)
                if pool is not None:
                    copies.append(pool.submit(_fetch_into, store, new_file, entry, fd, mode))
                else:
                    _fetch_into(store, new_file, entry, fd, mode)
            else:
                _check_absent(fd, entry.name)
                os.symlink(entry.target, entry.name, dir_fd=fd)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # no copy may outlive the descriptors below
        for fd, _it, _mode, _copies in stack:
            os.close(fd)


def _fetch_into(store, new_file, entry: TreeEntry, dir_fd: int, mode: int) -> None:
    if new_file is not None:
        found = new_file(entry.digest, entry.name, dir_fd, mode)
    else:
        found = store.fetch_file(entry.digest, entry.name, dir_fd=dir_fd, mode=mode)
    if not found:
        raise MissingBlob(entry.digest)


def restore_special_bits(store, digest: Digest, dest: Path) -> None:
    """After materialize_tree: give the entries whose tree mode has setuid, setgid or sticky bits those
    bits too (materialize_tree applies permission bits only). For a tree that is about to be read back
    as the same tree (a remote worker's input root or output), in a directory only its user can enter."""
    for path, entry in walk_tree(store, digest):
        if entry.kind != "symlink" and entry.mode & 0o7000:
            os.chmod(Path(dest) / path, entry.mode, follow_symlinks=False)


def _check_absent(dir_fd: int, name: str) -> None:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    raise FileExistsError(f"{name} already exists where a tree is being written")
