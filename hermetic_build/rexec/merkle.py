"""hb trees (BLAKE3, canonical JSON directories) <-> REAPI Directory trees (SHA-256, protobuf).

An action's input root, and every directory output, crosses the wire in REAPI's Directory form so
that any REAPI engine can store and materialise it. Modes travel exactly in
`node_properties.unix_mode` (a file's and a symlink's on its node, a directory's on the Directory
message), so a tree converted to REAPI and back has the same hb digest.

Directories coming back from a server are hostile: every one is converted into hb's own form and
passed through `tree.decode_directory` (single-component names, strictly sorted so unique, known
kinds, mode bits only) before anything is written; sizes, depth and entry counts are bounded; every
file is checked against its SHA-256 as it is read and stored under its BLAKE3."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..digest import Digest, sha256_if_blob
from ..store.base import InvalidEntry
from ..tree import (MAX_TREE_DEPTH, MAX_TREE_ENTRIES, MissingBlob, TreeEntry, decode_directory, encode_directory,
                    read_directory)

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
MAX_DIRECTORY_MESSAGE = 64 << 20


class RemoteTreeError(ValueError):
    """A REAPI tree from the server that hb refuses (names, sizes, digests, depth, missing blobs)."""


def sha256_of_blob(store, digest: Digest, memo: dict) -> str:
    """The SHA-256 of a blob of the local store (memo: BLAKE3 hex -> SHA-256 hex); MissingBlob if the
    blob is no longer what its BLAKE3 says (never sent to the engine as an input)."""
    sha = memo.get(digest.hash)
    if sha is None:
        left_remote = getattr(store, "remote_sha256", None)  # an output left on the engine: known, not read
        sha = left_remote(digest) if left_remote is not None else None
        if sha is not None:
            memo[digest.hash] = sha
            return sha
        sha = sha256_if_blob(store.blob_path(digest), digest)  # the bytes that will be sent, checked
        if sha is None:
            owner = getattr(store, "local", store)  # the client's view of its local store, or that store
            remove = getattr(owner, "remove_corrupt_blob", None)
            if remove is not None:
                remove(digest, "changed since it was stored")
            raise MissingBlob(digest)
        memo[digest.hash] = sha
    return sha


def _mode_props(pb, mode: int):
    props = pb.NodeProperties()
    props.unix_mode.value = mode
    return props


@dataclass
class Upload:
    """Blobs an input root or an output needs on the server: sha256 -> (size, bytes or a path)."""

    blobs: dict = field(default_factory=dict)

    def add_message(self, message) -> tuple[str, int]:
        data = message.SerializeToString(deterministic=True)
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = (len(data), data)
        return sha, len(data)


def hb_tree_to_reapi(pb, store, digest: Digest, upload: Upload, sha_memo: dict, dir_memo: dict,
                     mode: int | None = None) -> tuple[str, int]:
    """The REAPI Directory digest (sha256 hex, size) of the hb tree `digest` of the local `store`,
    adding every Directory message and file it needs to `upload`. A directory's own mode (known
    from its parent's entry; None for a root) goes into its message. dir_memo: (hex, mode) -> digest.
    Depth is bounded by tree.MAX_TREE_DEPTH (read_directory validates every level)."""
    memo_key = (digest.hash, mode)
    if memo_key in dir_memo:
        return dir_memo[memo_key]
    message = pb.Directory()
    for e in read_directory(store, digest):
        if e.kind == "file":
            sha = sha256_of_blob(store, e.digest, sha_memo)
            upload.blobs.setdefault(sha, (e.digest.size, store.blob_path(e.digest)))
            message.files.add(name=e.name, digest=pb.Digest(hash=sha, size_bytes=e.digest.size),
                              is_executable=bool(e.mode & 0o100), node_properties=_mode_props(pb, e.mode))
        elif e.kind == "dir":
            sha, size = hb_tree_to_reapi(pb, store, e.digest, upload, sha_memo, dir_memo, e.mode)
            message.directories.add(name=e.name, digest=pb.Digest(hash=sha, size_bytes=size))
        else:
            message.symlinks.add(name=e.name, target=e.target, node_properties=_mode_props(pb, e.mode))
    if mode is not None:
        message.node_properties.CopyFrom(_mode_props(pb, mode))
    dir_memo[memo_key] = upload.add_message(message)
    return dir_memo[memo_key]


class InputRoot:
    """An action's input root being assembled: files and trees at relative paths."""

    def __init__(self, pb):
        self.pb = pb
        self.root: dict = {}
        self.upload = Upload()

    def _parent(self, path: str) -> tuple[dict, str]:
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"input path {path!r} is not a relative path of single components")
        node = self.root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"input path {path!r} lies under a file")
        return node, parts[-1]

    def add_file(self, path: str, sha: str, size: int, mode: int, source) -> None:
        node, name = self._parent(path)
        node[name] = ("file", sha, size, mode)
        self.upload.blobs.setdefault(sha, (size, source))

    def add_bytes(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add_file(path, hashlib.sha256(data).hexdigest(), len(data), mode, bytes(data))

    def add_tree(self, path: str, sha: str, size: int) -> None:
        node, name = self._parent(path)
        node[name] = ("tree", sha, size)

    def finish(self):
        """The root Directory's digest (a REAPI Digest message)."""
        pb = self.pb

        def build(node: dict):
            message = pb.Directory()
            for name in sorted(node):
                value = node[name]
                if isinstance(value, dict):
                    sha, size = build(value)
                    message.directories.add(name=name, digest=pb.Digest(hash=sha, size_bytes=size))
                elif value[0] == "tree":
                    message.directories.add(name=name, digest=pb.Digest(hash=value[1], size_bytes=value[2]))
                else:
                    _kind, sha, size, mode = value
                    message.files.add(name=name, digest=pb.Digest(hash=sha, size_bytes=size),
                                      is_executable=bool(mode & 0o100), node_properties=_mode_props(pb, mode))
            return self.upload.add_message(message)

        sha, size = build(self.root)
        return pb.Digest(hash=sha, size_bytes=size)


def _mode_of(node, default: int) -> int:
    if node.HasField("node_properties") and node.node_properties.HasField("unix_mode"):
        mode = node.node_properties.unix_mode.value
        if not 0 <= mode <= 0o7777:
            raise RemoteTreeError(f"{node.name!r}: unix_mode {mode:o} is not a permission mode")
        return mode
    return default


def _check_digest(d, what: str) -> tuple[str, int]:
    if not _HEX64.match(d.hash) or d.size_bytes < 0:
        raise RemoteTreeError(f"{what}: {d.hash[:70]!r}/{d.size_bytes} is not a SHA-256 digest")
    return d.hash, d.size_bytes


class BlobIngest:
    """Files named by SHA-256 brought into a local store (verified), remembered by SHA-256."""

    def __init__(self, cas, store, memo: dict | None = None):
        self.cas = cas  # a ReapiStore
        self.store = store
        self.memo = {} if memo is None else memo  # sha256 hex -> BLAKE3 Digest, in store

    def ingest(self, pairs) -> None:
        todo = {}
        for sha, size in pairs:
            known = self.memo.get(sha)
            if known is None or not self.store.has_blob(known):
                todo[sha] = size

        def sink(sha, data):
            self.memo[sha] = self.store.put_blob(data, fsync=False)
            todo.pop(sha, None)

        if todo:
            self.cas.read_sha_many(list(todo.items()), sink)
        for sha, size in list(todo.items()):
            if size == 0:
                sink(sha, b"") if sha == hashlib.sha256(b"").hexdigest() else None
                continue
            fd, tmp = tempfile.mkstemp(dir=self.store.tmp_dir, prefix=".rexec-")
            os.close(fd)
            os.unlink(tmp)
            if not self.cas.fetch_sha(sha, size, tmp):
                raise RemoteTreeError(f"blob {sha}/{size} is missing on the server or does not match its digest")
            self.memo[sha] = self.store.put_file(Path(tmp), move=True, fsync=False)
            todo.pop(sha)
        if todo:
            sha = next(iter(todo))
            raise RemoteTreeError(f"blob {sha}/{todo[sha]} is missing on the server or does not match its digest")

    def digest_of(self, sha: str) -> Digest:
        return self.memo[sha]


class ClaimedIngest:
    """A BlobIngest that leaves on the server every file whose BLAKE3 the worker claimed (rexec/
    outputs.py): those are recorded (`left`: sha256 -> Digest), not read; the others are ingested."""

    def __init__(self, base: BlobIngest, claims: dict[str, str]):
        self.base, self.claims = base, claims
        self.left: dict[str, Digest] = {}

    @property
    def store(self):
        return self.base.store

    def ingest(self, pairs) -> None:
        rest = []
        for sha, size in pairs:
            b3 = self.claims.get(sha)
            if b3 is None:
                rest.append((sha, size))
            else:
                self.left[sha] = Digest(b3, size)
        if rest:
            self.base.ingest(rest)

    def digest_of(self, sha: str) -> Digest:
        left = self.left.get(sha)
        return left if left is not None else self.base.digest_of(sha)


def reapi_tree_to_hb(pb, root, children: dict, ingest: BlobIngest) -> Digest:
    """The hb tree digest (in ingest.store) of the REAPI Directory `root` whose subdirectories are
    `children` (sha256 hex -> Directory). Everything is validated before it is used."""
    # collect directories reachable from root, bounded
    order, stack, files, count = [], [(root, 0, "")], set(), 0
    while stack:
        message, depth, where = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise RemoteTreeError(f"{where or '.'}: nested more than {MAX_TREE_DEPTH} directories deep")
        order.append(message)
        count += len(message.files) + len(message.directories) + len(message.symlinks)
        if count > MAX_TREE_ENTRIES:
            raise RemoteTreeError(f"more than {MAX_TREE_ENTRIES} entries")
        for f in message.files:
            files.add(_check_digest(f.digest, f"{where}{f.name}"))
        for d in message.directories:
            sha, _size = _check_digest(d.digest, f"{where}{d.name}")
            child = children.get(sha)
            if child is None:
                raise RemoteTreeError(f"{where}{d.name}: directory {sha} is missing from the tree")
            stack.append((child, depth + 1, f"{where}{d.name}/"))
    ingest.ingest(sorted(files))
    memo: dict[bytes, Digest] = {}
    store = ingest.store

    def convert(message) -> Digest:
        key = message.SerializeToString(deterministic=True)
        if key in memo:
            return memo[key]
        entries = []
        for f in message.files:
            default = 0o755 if f.is_executable else 0o644
            entries.append(TreeEntry(f.name, "file", ingest.digest_of(f.digest.hash), _mode_of(f, default)))
        for s in message.symlinks:
            entries.append(TreeEntry(s.name, "symlink", None, _mode_of(s, 0o777), s.target))
        for d in message.directories:
            child = children[d.digest.hash]
            mode = _mode_of(child, 0o755)
            entries.append(TreeEntry(d.name, "dir", convert(child), mode))
        data = encode_directory(entries)
        try:
            decode_directory(data)  # the strict checks every tree from a cache gets
        except (InvalidEntry, TypeError) as exc:
            raise RemoteTreeError(str(exc)) from None
        memo[key] = store.put_blob(data, fsync=False)
        return memo[key]

    # iterative enough: depth is bounded above; Python's recursion limit is raised for the walk
    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, MAX_TREE_DEPTH * 4 + 100))
    try:
        return convert(root)
    finally:
        sys.setrecursionlimit(limit)


def fetch_directories(cas, pb, root_sha: str, root_size: int) -> tuple[object, dict]:
    """Read an input root's Directory messages from the CAS, breadth first in batches: (root,
    sha256 -> Directory of every subdirectory)."""
    def parse(data: bytes, sha: str):
        message = pb.Directory()
        try:
            message.ParseFromString(data)
        except Exception:  # noqa: BLE001 - a malformed message from the server
            raise RemoteTreeError(f"directory {sha} is not a Directory message") from None
        return message

    data = cas.read_sha(root_sha, root_size, limit=MAX_DIRECTORY_MESSAGE)
    if data is None:
        raise RemoteTreeError(f"input root {root_sha}/{root_size} is missing or corrupt")
    root = parse(data, root_sha)
    children: dict = {}
    frontier = {(d.digest.hash, d.digest.size_bytes) for d in root.directories}
    count = 0
    while frontier:
        for sha, size in frontier:
            _check_digest(pb.Digest(hash=sha, size_bytes=size), "directory")
            if size > MAX_DIRECTORY_MESSAGE:
                raise RemoteTreeError(f"directory {sha} is larger than {MAX_DIRECTORY_MESSAGE} bytes")
        got: dict = {}
        cas.read_sha_many(sorted(frontier), lambda sha, blob: got.__setitem__(sha, blob))
        for sha, size in frontier:
            if sha not in got:
                blob = cas.read_sha(sha, size, limit=MAX_DIRECTORY_MESSAGE)
                if blob is None:
                    raise RemoteTreeError(f"directory {sha}/{size} is missing or corrupt")
                got[sha] = blob
        nxt = set()
        for sha, blob in got.items():
            children[sha] = parse(blob, sha)
            count += 1
            if count > MAX_TREE_ENTRIES:
                raise RemoteTreeError("too many directories")
            nxt.update((d.digest.hash, d.digest.size_bytes) for d in children[sha].directories)
        frontier = {p for p in nxt if p[0] not in children}
    return root, children
