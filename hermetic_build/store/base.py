"""The Store interface: small enough for local disk, an HTTP cache and an OCI registry as peers.

Everything a store hands back was written by someone else (another machine, another user of a
shared cache, an attacker with write access to a remote), so action-cache entries are parsed here
with a strict schema: anything unexpected is an InvalidEntry, which every caller treats as a miss."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from blake3 import blake3

from ..anchored import open_regular_file
from ..boundedjson import MAX_JSON_VALUES, json_values_at_most
from ..digest import Digest
from ..leftovers import temp_name_beside

MAX_ENTRY_BYTES = 1 << 20  # an action-cache entry (or a tree's directory blob) larger than this is refused
MAX_BLOB_SIZE = (1 << 63) - 1
_DIGEST_TEXT = re.compile(r"([0-9a-f]{64})/(0|[1-9][0-9]*)\Z")  # ASCII digits only, no leading zero
_EXIT_CODE_RANGE = range(-(1 << 31), 1 << 31)


class InvalidEntry(ValueError):
    """A cache entry (action result or directory blob) that does not follow its schema."""


def _reject_constant(name: str):
    raise InvalidEntry(f"{name} is not a JSON number hb writes")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidEntry(f"{text} is not a finite number")
    return value


def load_json(data: bytes, *, limit: int = MAX_ENTRY_BYTES, max_values: int = MAX_JSON_VALUES):
    """json.loads for bytes from a cache: bounded size, no NaN/Infinity, no recursion blow-up, and at
    most `max_values` values made (counted on the bytes before parsing, boundedjson: a 64 MiB directory
    blob of `[[],...]` took 1.5 GiB and 10 s to parse before its schema refused it).
    Raises InvalidEntry for every way it can fail."""
    if not isinstance(data, (bytes, bytearray)):
        raise InvalidEntry("not bytes")
    if len(data) > limit:
        raise InvalidEntry(f"{len(data)} bytes, more than the {limit} an entry may have")
    if (values := json_values_at_most(data)) > max_values:
        raise InvalidEntry(f"up to {values:,} JSON values, more than the {max_values:,} such an entry may have")
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise InvalidEntry("nested too deeply") from None
    except InvalidEntry:
        raise
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise InvalidEntry(f"not valid JSON: {str(exc)[:100]}") from None


def parse_digest(value, what: str) -> Digest:
    """A digest string from a cache entry: '<64 lowercase hex>/<size>', size within 0..2**63-1."""
    if not isinstance(value, str) or len(value) > 64 + 1 + 19:
        raise InvalidEntry(f"{what}: not a digest")
    match = _DIGEST_TEXT.match(value)
    if match is None:
        raise InvalidEntry(f"{what}: not a digest: {value[:80]!r}")
    digest = Digest(match[1], int(match[2]))
    if digest.size > MAX_BLOB_SIZE:
        raise InvalidEntry(f"{what}: size out of range")
    return digest


def check_relative_path(path, what: str) -> str:
    """A normalized relative path ('a/b/c'): no '', '.', '..' component, no leading '/', no NUL."""
    if not isinstance(path, str) or not path or len(path) > 4096:
        raise InvalidEntry(f"{what}: not a relative path")
    for part in path.split("/"):
        if part in ("", ".", "..") or "\0" in part:
            raise InvalidEntry(f"{what}: {path[:200]!r} is not a normalized relative path")
    return path


def _check_keys(obj, what: str, required: set, optional: set = frozenset()) -> dict:
    if not isinstance(obj, dict):
        raise InvalidEntry(f"{what}: not an object")
    missing = required - obj.keys()
    if missing:
        raise InvalidEntry(f"{what}: missing {', '.join(sorted(missing))}")
    unknown = obj.keys() - required - optional
    if unknown:
        raise InvalidEntry(f"{what}: unknown field {min(unknown)[:40]!r}")
    return obj


@dataclass(frozen=True)
class OutputEntry:
    """One output of an action: a file (blob digest) or a directory (root digest of its tree)."""

    path: str
    kind: str  # "file" | "dir"
    digest: Digest
    executable: bool = False

    def to_json(self) -> dict:
        return {"path": self.path, "kind": self.kind, "digest": str(self.digest), "executable": self.executable}

    @staticmethod
    def from_json(data) -> OutputEntry:
        """Strict: raises InvalidEntry unless data is exactly what to_json writes."""
        _check_keys(data, "output", {"path", "kind", "digest"}, {"executable"})
        path = check_relative_path(data["path"], "output path")
        if data["kind"] not in ("file", "dir"):
            raise InvalidEntry(f"output {path}: unknown kind {str(data['kind'])[:20]!r}")
        executable = data.get("executable", False)
        if not isinstance(executable, bool):
            raise InvalidEntry(f"output {path}: executable is not a boolean")
        return OutputEntry(path, data["kind"], parse_digest(data["digest"], f"output {path}"), executable)


def _check_metadata(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEntry("metadata: not an object")
    for k, v in value.items():
        if not isinstance(v, (str, int, float, bool, type(None))):
            raise InvalidEntry(f"metadata {k[:40]!r}: not a string, number or boolean")
    return value


@dataclass(frozen=True)
class ActionResult:
    """What an action produced: its outputs by digest, exit code and captured output."""

    outputs: tuple[OutputEntry, ...]
    exit_code: int = 0
    stdout: Digest | None = None
    stderr: Digest | None = None
    metadata: dict = field(default_factory=dict, compare=False)  # duration, worker: not part of identity

    def to_json(self) -> dict:
        return {
            "outputs": [o.to_json() for o in self.outputs],
            "exit_code": self.exit_code,
            "stdout": str(self.stdout) if self.stdout else None,
            "stderr": str(self.stderr) if self.stderr else None,
            "metadata": self.metadata,
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":")).encode()

    @staticmethod
    def decode(data: bytes) -> "ActionResult":
        """Parse an entry read from a cache; raises InvalidEntry (a ValueError) if it is malformed."""
        return ActionResult.from_json(load_json(data))

    @staticmethod
    def from_json(obj) -> "ActionResult":
        _check_keys(obj, "action result", {"outputs", "exit_code"}, {"stdout", "stderr", "metadata"})
        if not isinstance(obj["outputs"], list):
            raise InvalidEntry("outputs: not a list")
        outputs = tuple(OutputEntry.from_json(o) for o in obj["outputs"])
        if len({o.path for o in outputs}) != len(outputs):
            raise InvalidEntry("outputs: a path is listed twice")
        exit_code = obj["exit_code"]
        if type(exit_code) is not int or exit_code not in _EXIT_CODE_RANGE:
            raise InvalidEntry("exit_code: not a 32-bit integer")
        streams = {}
        for name in ("stdout", "stderr"):
            value = obj.get(name)
            streams[name] = None if value is None else parse_digest(value, name)
        return ActionResult(outputs, exit_code, streams["stdout"], streams["stderr"],
                            _check_metadata(obj.get("metadata")))


class Store(ABC):
    """CAS (blobs by BLAKE3 digest) + action cache (action key -> ActionResult).

    Every method that returns content verifies it against its digest first: a store never hands out
    bytes that do not hash to what was asked for; corrupt content is reported as missing.
    """

    @abstractmethod
    def has_blob(self, digest: Digest) -> bool: ...

    @abstractmethod
    def get_blob(self, digest: Digest) -> bytes | None: ...

    def open_blob(self, digest: Digest):
        """A binary reader (read/readinto, a context manager) of the blob, or None if missing. It
        is verified as it is read: reading up to digest.size raises MissingBlob if the content
        does not match (the blob is then removed, like any corrupt one). This default reads the
        blob whole; stores that keep blobs on disk stream it."""
        data = self.get_blob(digest)
        return None if data is None else io.BytesIO(data)

    @abstractmethod
    def put_blob(self, data: bytes, *, fsync: bool = True) -> Digest: ...

    @abstractmethod
    def put_file(self, path: Path, *, move: bool = False, fsync: bool = True) -> Digest: ...

    def put_at(self, dir_fd: int, name: str, *, move: bool = False, fsync: bool = True,
               known: tuple | None = None) -> Digest:
        """Store the regular file `name` of the directory dir_fd, never following a link (a link
        or special file raises anchored.RefusedPath). This default reads it into memory; stores
        that keep blobs on disk stream it, and move it with move=True (taking the digest `known`
        says, where the file is still the one it describes: see LocalStore.put_at)."""
        fd, _ = open_regular_file(dir_fd, name)
        with open(fd, "rb") as src:
            return self.put_blob(src.read(), fsync=fsync)

    @abstractmethod
    def fetch_file(self, digest: Digest, dest: Path, *, dir_fd: int | None = None, mode: int | None = None) -> bool:
        """Write the blob to dest (atomically, verified). False if missing or corrupt.

        With dir_fd, dest is one name in that open directory (no path is resolved again). The
        content goes to a new temp file beside dest (created O_EXCL|O_NOFOLLOW, never through a
        link), which is renamed over dest; mode, if given, is set on it before the rename."""

    @abstractmethod
    def get_action_result(self, key: str) -> ActionResult | None: ...

    @abstractmethod
    def put_action_result(self, key: str, result: ActionResult) -> None: ...

    def flush(self) -> None:
        """Make blobs written with fsync=False durable. Stores that write through need nothing."""

    def find_missing(self, digests) -> list[Digest]:
        return [d for d in digests if not self.has_blob(d)]


class NewFile:
    """A new temp file beside `dest`, renamed over it by commit(): how stores write a file that
    must appear whole or not at all. The temp name carries this process's PID (see leftovers)."""

    def __init__(self, dest, *, dir_fd: int | None = None, mode: int | None = None):
        dest = os.fspath(dest)
        self.dir_fd = dir_fd
        if dir_fd is not None:
            if not dest or "/" in dest or dest in (".", ".."):
                raise ValueError(f"not a single name: {dest!r}")
            directory, name = "", dest
        else:
            directory, name = os.path.split(dest)
        self.dest = dest
        self.tmp = os.path.join(directory, temp_name_beside(name))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.tmp, flags, 0o600 if mode is not None else 0o666, dir_fd=dir_fd)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            self.file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self.discard()
            raise

    def write(self, data) -> None:
        self.file.write(data)

    def commit(self) -> None:
        self.file.close()
        os.replace(self.tmp, self.dest, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)

    def discard(self) -> None:
        with contextlib.suppress(AttributeError, OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp, dir_fd=self.dir_fd)


class VerifiedReader:
    """A blob file read in a stream, hashed on the way: the read that reaches digest.size checks
    the BLAKE3 and raises MissingBlob (after on_corrupt()) on a mismatch, before returning."""

    def __init__(self, file, digest: Digest, on_corrupt):
        self._file = file
        self._digest = digest
        self._on_corrupt = on_corrupt
        self._hasher = blake3()
        self._left = digest.size
        if self._left == 0:
            self._check()

    def _check(self) -> None:
        if self._hasher.hexdigest() != self._digest.hash:
            from ..tree import MissingBlob

            self._on_corrupt()
            raise MissingBlob(self._digest)

    def _seen(self, data) -> None:
        if len(data) > self._left:
            from ..tree import MissingBlob

            self._on_corrupt()
            raise MissingBlob(self._digest, f"blob {self._digest} is longer than its digest says")
        if len(data):
            self._hasher.update(data)
            self._left -= len(data)
            if self._left == 0:
                self._check()

    def readinto(self, buffer) -> int:
        n = self._file.readinto(buffer)
        with memoryview(buffer) as view:
            self._seen(view[:n])
        return n

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        self._seen(data)
        return data

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
