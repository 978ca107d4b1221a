"""The Store interface: small enough for local disk, an HTTP cache and an OCI registry as peers."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from ..anchored import open_regular_file
from ..digest import Digest


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
    def from_json(data: dict) -> "OutputEntry":
        return OutputEntry(data["path"], data["kind"], Digest.parse(data["digest"]), bool(data.get("executable")))


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
        obj = json.loads(data)
        return ActionResult(
            outputs=tuple(OutputEntry.from_json(o) for o in obj["outputs"]),
            exit_code=int(obj["exit_code"]),
            stdout=Digest.parse(obj["stdout"]) if obj.get("stdout") else None,
            stderr=Digest.parse(obj["stderr"]) if obj.get("stderr") else None,
            metadata=obj.get("metadata") or {},
        )


class Store(ABC):
    """CAS (blobs by BLAKE3 digest) + action cache (action key -> ActionResult).

    Every method that returns content verifies it against its digest first: a store never hands out
    bytes that do not hash to what was asked for; corrupt content is reported as missing.
    """

    @abstractmethod
    def has_blob(self, digest: Digest) -> bool: ...

    @abstractmethod
    def get_blob(self, digest: Digest) -> bytes | None: ...

    @abstractmethod
    def put_blob(self, data: bytes, *, fsync: bool = True) -> Digest: ...

    @abstractmethod
    def put_file(self, path: Path, *, move: bool = False, fsync: bool = True) -> Digest: ...

    def put_at(self, dir_fd: int, name: str, *, move: bool = False, fsync: bool = True) -> Digest:
        """Store the regular file `name` of the directory dir_fd, never following a link (a link
        or special file raises anchored.RefusedPath). This default reads it into memory; stores
        that keep blobs on disk stream it, and move it with move=True."""
        fd, _ = open_regular_file(dir_fd, name)
        with open(fd, "rb") as src:
            return self.put_blob(src.read(), fsync=fsync)

    @abstractmethod
    def fetch_file(self, digest: Digest, dest: Path) -> bool:
        """Write the blob to dest (atomically, verified). False if missing or corrupt."""

    @abstractmethod
    def get_action_result(self, key: str) -> ActionResult | None: ...

    @abstractmethod
    def put_action_result(self, key: str, result: ActionResult) -> None: ...

    def flush(self) -> None:
        """Make blobs written with fsync=False durable. Stores that write through need nothing."""

    def find_missing(self, digests) -> list[Digest]:
        return [d for d in digests if not self.has_blob(d)]
