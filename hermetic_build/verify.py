"""`hb verify`: reproducibility as a number. Every action needed by the requested targets is run
again from nothing, in a fresh temporary cache (no local or remote cache, so no result and no blob is
reused) in another temporary directory, and each output digest is compared with the one the last
build recorded. R = identical actions / total; the first difference is described down to the file
(inside a directory output, inside a tar or tar.gz blob) and the first differing bytes."""

from __future__ import annotations

import io
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .filecache import FileDigestCache
from .store.base import OutputEntry
from .store.local import LocalStore
from .tree import walk_tree

CONTEXT_BYTES = 16
MAX_COMPARED_BYTES = 256 << 20  # an uncompressed layer compared member by member, at most
MAX_COMPARED_MEMBERS = 1_000_000


@dataclass(frozen=True)
class ActionVerdict:
    description: str
    owner: str
    identical: bool
    outputs: tuple[tuple[str, str, str], ...]  # (output path, recorded digest, rebuilt digest)


@dataclass(frozen=True)
class TargetVerdict:
    label: str
    identical: bool
    # (output path, recorded, rebuilt) of what the target stands for; for an OCI image layout the
    # manifest digests read from index.json (a published, standard file) are added
    outputs: tuple[tuple[str, str, str], ...]
    manifests: tuple[tuple[str, str], ...] = ()  # (recorded, rebuilt) manifest digests, for image layouts


@dataclass(frozen=True)
class Verification:
    actions: tuple[ActionVerdict, ...]
    targets: tuple[TargetVerdict, ...]
    first_difference: str = ""
    seconds: float = 0.0

    @property
    def identical(self) -> int:
        return sum(1 for a in self.actions if a.identical)

    @property
    def ratio(self) -> float:
        return self.identical / len(self.actions) if self.actions else 1.0

    def to_json(self) -> dict:
        return {
            "R": self.ratio, "identical": self.identical, "total": len(self.actions),
            "first_difference": self.first_difference or None, "seconds": round(self.seconds, 3),
            "actions": [{"action": a.description, "target": a.owner, "identical": a.identical,
                         "outputs": [{"path": p, "recorded": r, "rebuilt": n} for p, r, n in a.outputs]}
                        for a in self.actions],
            "targets": {t.label: {"identical": t.identical,
                                  "outputs": [{"path": p, "recorded": r, "rebuilt": n} for p, r, n in t.outputs],
                                  **({"manifests": [{"recorded": r, "rebuilt": n} for r, n in t.manifests]}
                                     if t.manifests else {})}
                        for t in self.targets},
        }


@dataclass
class _Recorded:
    results: dict[int, object] = field(default_factory=dict)  # action index -> ActionResult
    missing: list[str] = field(default_factory=list)


def verify(session, patterns: list[str], current_package: str = "") -> Verification:
    """Rebuild what `patterns` need from nothing and compare with the last build's outputs."""
    import time

    from .executor import Executor
    from .report import Reporter

    started = time.monotonic()
    analysis = session.analyze(patterns, current_package)
    wanted = [f for label in analysis.requested for f in analysis.targets[label].files]
    recorded_executor = session.executor(analysis)
    indices = recorded_executor.closure(wanted)
    recorded = _recorded_results(session, analysis, indices)
    if recorded.missing:
        shown = ", ".join(recorded.missing[:3]) + (f" and {len(recorded.missing) - 3} more"
                                                    if len(recorded.missing) > 3 else "")
        raise UsageError(f"hb verify compares a rebuild with the last build, but the last build did not "
                         f"produce {shown} (or its result is no longer in the cache)",
                         hint=f"run `hb build {' '.join(patterns)}` first")
    with tempfile.TemporaryDirectory(prefix="hb-verify-") as tmp:
        fresh = LocalStore(Path(tmp) / "cache")
        reporter = session.reporter if isinstance(session.reporter, Reporter) else Reporter()
        executor = Executor(session.workspace, fresh, analysis.actions,
                            FileDigestCache(Path(tmp) / "file-digests.pickle"), jobs=session.jobs,
                            reporter=reporter, load_kinds=session.rules, env=None)
        try:
            executor.run(indices)
            rebuilt = {i: executor.stats.records[i].result for i in indices}
            verdicts, first = [], ""
            for i in indices:
                action = analysis.actions[i]
                old = {o.path: o for o in recorded.results[i].outputs}
                new = {o.path: o for o in rebuilt[i].outputs}
                outputs = tuple((p, _shown(old.get(p)), _shown(new.get(p))) for p in sorted(old.keys() | new.keys()))
                same = all(r == n for _p, r, n in outputs)
                verdicts.append(ActionVerdict(action.description, str(action.owner), same, outputs))
                if not same and not first:
                    path = next(p for p, r, n in outputs if r != n)
                    detail = first_difference(session.store, fresh, old.get(path), new.get(path), path)
                    first = f"{action.description}: {detail}"
            targets = _target_verdicts(session.store, fresh, analysis, recorded.results, rebuilt, indices)
        finally:
            executor.close()
            recorded_executor.close()
    return Verification(tuple(verdicts), tuple(targets), first, time.monotonic() - started)


def _recorded_results(session, analysis, indices) -> _Recorded:
    """The result of each action as the last build recorded it (its key in actions.json)."""
    records = session.previous_records()
    out = _Recorded()
    for i in indices:
        action = analysis.actions[i]
        key = (records.get(action.id) or {}).get("key")
        result = session.store.get_action_result(key) if key else None
        if result is None or result.exit_code != 0:
            out.missing.append(action.description)
            continue
        out.results[i] = result
    return out


def _target_verdicts(store, fresh, analysis, recorded: dict, rebuilt: dict, indices) -> list[TargetVerdict]:
    """Per requested target: are the outputs it stands for identical (and an image's manifests)?"""
    old_by_path = {o.path: o for i in indices for o in recorded[i].outputs}
    new_by_path = {o.path: o for i in indices for o in rebuilt[i].outputs}
    verdicts = []
    for label in analysis.requested:
        outputs, manifests = [], []
        for f in analysis.targets[label].files:
            if f.path not in new_by_path:
                continue  # a source file
            old, new = old_by_path.get(f.path), new_by_path[f.path]
            outputs.append((f.path, _shown(old), _shown(new)))
            if old is not None and old.kind == "dir" and new.kind == "dir":
                manifests += list(zip(_manifests(store, old), _manifests(fresh, new), strict=False))
        verdicts.append(TargetVerdict(str(label), all(r == n for _p, r, n in outputs), tuple(outputs),
                                      tuple(manifests)))
    return verdicts


def _manifests(store, entry: OutputEntry) -> list[str]:
    """The manifest digests of an OCI image layout (its index.json), or [] for any other directory."""
    import json

    for path, e in walk_tree(store, entry.digest):
        if path == "index.json" and e.kind == "file":
            try:
                if e.digest.size > MAX_COMPARED_BYTES:  # an index.json: kilobytes, unless a cache lies
                    return []
                index = json.loads(store.get_blob(e.digest) or b"")
                return [str(m.get("digest")) for m in index.get("manifests", []) if isinstance(m, dict)]
            except (ValueError, AttributeError):
                return []
        if "/" not in path and path > "index.json":
            break
    return []


def _shown(entry: OutputEntry | None) -> str:
    return "(absent)" if entry is None else f"{entry.kind}:{entry.digest}"


# ----- describing a difference -------------------------------------------------------------------------


def first_difference(old_store, new_store, old: OutputEntry | None, new: OutputEntry | None, path: str) -> str:
    if old is None or new is None:
        return f"{path} was {'absent' if old is None else 'present'} and is now {'absent' if new is None else 'present'}"
    if old.kind != new.kind:
        return f"{path} was a {old.kind} and is now a {new.kind}"
    if old.kind == "file":
        return _file_difference_of(old_store, new_store, old.digest, new.digest, path)
    before, after = dict(walk_tree(old_store, old.digest)), dict(walk_tree(new_store, new.digest))
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name), after.get(name)
        if a == b:
            continue
        where = f"{path}/{name}"
        if a is None or b is None:
            return f"{where} is {'new' if a is None else 'gone'} in the rebuild"
        if a.kind != b.kind:
            return f"{where} was a {a.kind} and is now a {b.kind}"
        if a.mode != b.mode:
            return f"{where}: mode {oct(a.mode)} became {oct(b.mode)}"
        if a.kind == "symlink":
            return f"{where}: link target {a.target!r} became {b.target!r}"
        if a.kind == "file":
            return _file_difference_of(old_store, new_store, a.digest, b.digest, where)
    return f"{path}: the directories differ in their encoding only"


def _file_difference_of(old_store, new_store, old, new, where: str) -> str:
    """The first difference of two files: explained member by member where both fit in memory,
    else found by reading both side by side (a real image's layer is gigabytes, and the recorded
    one may come from a remote cache, whose digests claim any size)."""
    if old.size <= MAX_COMPARED_BYTES and new.size <= MAX_COMPARED_BYTES:
        return _file_difference(_blob(old_store, old), _blob(new_store, new), where)
    a, b = old_store.open_blob(old), new_store.open_blob(new)
    if a is None or b is None:
        missing = old if a is None else new
        raise UsageError(f"blob {missing} is no longer in the cache; run `hb build` and `hb verify` again")
    with a, b:
        offset = 0
        while True:
            x, y = _read_full(a), _read_full(b)
            if x != y:
                n = min(len(x), len(y))
                i = next((k for k in range(n) if x[k] != y[k]), n)
                start = max(0, i - CONTEXT_BYTES // 2)
                return (f"{where}: first difference at byte {offset + i} (sizes {old.size} and {new.size}): "
                        f"recorded {x[start:i + CONTEXT_BYTES]!r}, rebuilt {y[start:i + CONTEXT_BYTES]!r}")
            if not x:
                return f"{where}: identical bytes"
            offset += len(x)


def _read_full(reader, size: int = 1 << 20) -> bytes:
    """`size` bytes of `reader`, fewer only at its end (a read may return less)."""
    parts, got = [], 0
    while got < size:
        piece = reader.read(size - got)
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _blob(store, digest) -> bytes:
    data = store.get_blob(digest)
    if data is None:
        raise UsageError(f"blob {digest} is no longer in the cache; run `hb build` and `hb verify` again")
    return data


def _file_difference(a: bytes, b: bytes, where: str) -> str:
    inner = _tar_difference(a, b, where)
    if inner:
        return inner
    return f"{where}: {bytes_difference(a, b)}"


def bytes_difference(a: bytes, b: bytes) -> str:
    """Where two byte strings first differ, with a little context of each."""
    n = min(len(a), len(b))
    offset = next((i for i in range(n) if a[i] != b[i]), n)
    if offset == n and len(a) == len(b):
        return "identical bytes"
    start = max(0, offset - CONTEXT_BYTES // 2)
    return (f"first difference at byte {offset} (sizes {len(a)} and {len(b)}): "
            f"recorded {a[start:offset + CONTEXT_BYTES]!r}, rebuilt {b[start:offset + CONTEXT_BYTES]!r}")


def _tar_members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]] | None:
    """The members of a tar or gzip'd tar (a layer), or None if the bytes are neither."""
    raw = data
    if data[:2] == b"\x1f\x8b":
        # the recorded bytes come from a bundle: a gzip bomb must not be inflated whole to explain a difference
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            raw = inflate.decompress(data, MAX_COMPARED_BYTES)
        except zlib.error:
            return None
        if inflate.unconsumed_tail or not inflate.eof:
            return None  # too large (or not one whole member) to compare member by member
    if len(raw) < 512 or raw[257:262] != b"ustar":
        return None
    members = []
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for info in tar:
                content = tar.extractfile(info).read() if info.isreg() else b""
                members.append((info, content))
                if len(members) > MAX_COMPARED_MEMBERS:
                    return None
    except tarfile.TarError:
        return None
    return members


def _tar_difference(a: bytes, b: bytes, where: str) -> str:
    left, right = _tar_members(a), _tar_members(b)
    if left is None or right is None:
        return ""
    for i in range(max(len(left), len(right))):
        if i >= len(left) or i >= len(right):
            extra = (right if i >= len(left) else left)[i][0].name
            return f"{where}: member {extra} is only in the {'rebuilt' if i >= len(left) else 'recorded'} archive"
        (x, xd), (y, yd) = left[i], right[i]
        if x.name != y.name:
            return f"{where}: member {i} is {x.name} in the recorded archive and {y.name} in the rebuilt one"
        for attr in ("type", "mode", "uid", "gid", "uname", "gname", "mtime", "linkname", "size"):
            if getattr(x, attr) != getattr(y, attr):
                return f"{where}: member {x.name}: {attr} {getattr(x, attr)!r} became {getattr(y, attr)!r}"
        if xd != yd:
            return f"{where}: member {x.name}: {bytes_difference(xd, yd)}"
        if x.pax_headers != y.pax_headers:
            return f"{where}: member {x.name}: pax headers {x.pax_headers!r} became {y.pax_headers!r}"
    return f"{where}: the archives hold the same members; {bytes_difference(a, b)} (compression or padding)"

