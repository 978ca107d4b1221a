"""Unpacking .deb packages (or an OCI image's layers) into an image root, inside the sandbox.

    python3 -I deb_extract.py PARAMS.json

Run by the deb.extract action in bubblewrap: the .debs are pinned by a lock that lives in the
repository, so they may be hostile; every name and hard-link target must stay inside the root and
nothing is created or written through a link out of it, and because this runs in the sandbox a flaw
in those checks still cannot reach the host. Standalone on purpose (the standard library and
zstandard only). No maintainer scripts, no device nodes, hard links as copies.

PARAMS.json: {"sys_path": [...], "debs": [path], "out": path, "exclude": [glob], "directories": [path],
"symlinks": {path: target}}, or for an image's root filesystem {"sys_path": [...], "layout": path,
"ref_name": name, "out": path, "image_out": path} (each blob checked against its sha256; image_out gets
the manifest digest and the config's Env and WorkingDir as JSON); relative paths are relative to the
working directory (the execution root). On failure it prints one line, `extract: <what went wrong>`, on stderr and exits 1.
"""

from __future__ import annotations

import errno
import fnmatch
import gzip
import io
import json
import os
import shutil
import sys
import tarfile
import zlib
from pathlib import Path


class ExtractError(Exception):
    pass


MAX_UNPACK_RATIO = 1000  # unpacked bytes (hard-link copies included) : compressed bytes, as for conda packages
UNPACK_FLOOR_BYTES = 64 << 20  # what any input may unpack to, whatever its ratio
MAX_ENTRIES = 1_000_000
MAX_HEADER_BYTES = 1 << 20  # a PAX or GNU long-name header: tarfile reads one whole into memory
_EXTENDED_HEADERS = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                     tarfile.GNUTYPE_LONGLINK)


_HARMLESS_GLOBAL_RECORDS = {"comment"}  # `git archive`'s global header: no member field comes from it


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses an extended header larger than MAX_HEADER_BYTES before tarfile reads it into memory."""

    def _proc_member(self, tarfile_):
        if self.type in _EXTENDED_HEADERS and self.size > MAX_HEADER_BYTES:
            raise ExtractError(f"an extended tar header of {self.size:,} bytes (at most {MAX_HEADER_BYTES:,})")
        member = super()._proc_member(tarfile_)
        applied = set(tarfile_.pax_headers) - _HARMLESS_GLOBAL_RECORDS
        if applied:
            # tarfile applies a global header's records (path, linkpath, size, uid, mtime...) to every
            # member after it; Go's archive/tar, so containerd and docker, ignore global headers, and
            # so do dpkg and rattler: what hb unpacked would not be what the image or package holds
            raise ExtractError(f"a global PAX header sets {', '.join(sorted(applied))[:200]} for the members "
                               "after it, which container runtimes ignore; refusing a tar that readers see differently")
        return member


class Budget:
    """What one extraction may write: bytes (hard links are written as copies, so each counts again)
    and entries, against max(UNPACK_FLOOR_BYTES, MAX_UNPACK_RATIO x the compressed input)."""

    def __init__(self, compressed: int):
        self.limit = max(UNPACK_FLOOR_BYTES, MAX_UNPACK_RATIO * compressed)
        self.written = 0
        self.entries = 0

    def take(self, label: str, size: int) -> None:
        self.written += max(size, 0)
        self.entries += 1
        if self.written > self.limit:
            raise ExtractError(f"{label}: refusing to unpack more than {self.limit:,} bytes ({MAX_UNPACK_RATIO}:1 "
                               "of the compressed input, hard-link copies included)")
        if self.entries > MAX_ENTRIES:
            raise ExtractError(f"{label}: refusing to unpack more than {MAX_ENTRIES:,} entries")


def data_tar(path: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an ar archive), opened for reading."""
    with open(path, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ExtractError(f"{path.name} is not a Debian package")
        while header := f.read(60):
            name = header[:16].strip().rstrip(b"/").decode()
            size = int(header[48:58])
            if name.startswith("data.tar"):
                data = f.read(size)
                if name.endswith(".zst"):
                    import zstandard

                    limit = max(UNPACK_FLOOR_BYTES, MAX_UNPACK_RATIO * size)
                    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read(limit + 1)
                    if len(data) > limit:
                        raise ExtractError(f"{path.name}: its data.tar.zst unpacks to more than {limit:,} bytes")
                    return tarfile.open(fileobj=io.BytesIO(data), mode="r:", tarinfo=_BoundedTarInfo)
                return tarfile.open(fileobj=io.BytesIO(data), mode="r:*", tarinfo=_BoundedTarInfo)
            f.seek(size + (size % 2), 1)
    raise ExtractError(f"{path.name} has no data.tar member")


def _inside(root: Path, path: Path) -> bool:
    """Whether `path` (which exists, or whose nearest existing ancestor is checked) resolves inside root,
    links included: nothing is created or written through a link that leads out of the root."""
    while not os.path.lexists(path) and path != root:
        path = path.parent
    real = os.path.realpath(path)
    return real == str(root) or real.startswith(str(root) + os.sep)


def relative_path(text: str, what: str) -> str:
    """`text` as a path relative to the image root (a leading './' or '/' is dropped); refuses empty,
    '.', '..' components and NUL, so no name from a package or a BUILD file can leave the root."""
    name = text.removeprefix("./").lstrip("/")
    parts = name.split("/")
    if not name or "\0" in name or any(part in ("", ".", "..") for part in parts):
        raise ExtractError(f"{what} {text!r} is not a relative path inside the root (empty, '.', '..' or NUL)")
    return name


def extract_debs(debs: list[Path], root: Path, exclude=()) -> list[str]:
    """Unpack debs in order into root; returns notes about skipped entries. Every name and hard-link
    target must stay inside the root, and nothing is created or written through a link that leads
    out of it (checked before anything is made, on the nearest existing ancestor)."""
    root = Path(os.path.realpath(root))
    notes, dir_modes = [], {}
    budget = Budget(sum(deb.stat().st_size for deb in debs))
    for deb in debs:
        with data_tar(deb) as tar:
            _unpack(tar, deb.name, root, exclude, dir_modes, notes, budget=budget)
    for name, mode in sorted(dir_modes.items(), reverse=True):
        os.chmod(root / name, mode)
    return notes


WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


def extract_layers(layers: list[tuple[str, tarfile.TarFile]], root: Path) -> list[str]:
    """Apply OCI image layers in order (each a tar stream) to root, with the image spec's whiteouts
    (`.wh.NAME` removes NAME of the layers below, `.wh..wh..opq` empties its directory), under the
    same checks as extract_debs."""
    root = Path(os.path.realpath(root))
    notes, dir_modes = [], {}
    for label, tar in layers:
        _unpack(tar, label, root, (), dir_modes, notes, whiteouts=True)
    _apply_modes(root, dir_modes)
    return notes


def _apply_modes(root: Path, dir_modes: dict) -> None:
    """Directory modes last (a read-only directory would refuse what later entries put in it); only
    on what is still a directory, never through a link."""
    for name, mode in sorted(dir_modes.items(), reverse=True):
        if os.path.isdir(root / name) and not os.path.islink(root / name) and _inside(root, root / name):
            os.chmod(root / name, mode)


def _remove(path: Path) -> None:
    if os.path.islink(path) or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _unpack(tar: tarfile.TarFile, label: str, root: Path, exclude, dir_modes: dict, notes: list,
            whiteouts: bool = False, budget: Budget | None = None) -> None:
    for member in tar:
        if member.name in ("", ".", "./", "/"):
            continue
        if budget is not None:
            budget.take(label, member.size if member.isfile() else _linked_size(root, member) if member.islnk() else 0)
        name = relative_path(member.name, f"{label}: entry")
        if any(fnmatch.fnmatch(name, pattern) for pattern in exclude):
            continue
        dest = root / name
        if not _inside(root, dest.parent):
            raise ExtractError(f"{label}: {name} would be written through a symlink out of the root")
        base = dest.name
        if whiteouts and base.startswith(WHITEOUT):
            if base == OPAQUE:
                if dest.parent.is_dir() and not dest.parent.is_symlink():
                    for child in list(dest.parent.iterdir()):
                        _remove(child)
            else:
                hidden = dest.with_name(relative_path(base[len(WHITEOUT):], f"{label}: whiteout"))
                if os.path.lexists(hidden):
                    _remove(hidden)
            continue
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:  # a link that leads nowhere, in a loop, or to a file
            where = os.path.relpath(exc.filename, root) if exc.filename else os.path.dirname(name)
            raise ExtractError(f"{label}: {name} cannot be written: {where} is not a directory (a file, or a "
                               "symlink that does not lead to a directory, such as a loop of links)") from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise ExtractError(f"{label}: {name} cannot be written: its directory is a loop of symlinks") from None
        if not _inside(root, dest.parent):  # made only of new directories: cannot have changed
            raise ExtractError(f"{label}: {name} would be written through a symlink out of the root")
        if member.isdir():
            if dest.is_symlink():
                continue  # a later package's directory over an earlier symlink: keep the link
            if os.path.lexists(dest) and not dest.is_dir():
                dest.unlink()
            dest.mkdir(exist_ok=True)
            dir_modes[name] = member.mode & 0o7777
            continue
        if os.path.islink(dest) or os.path.lexists(dest):
            _remove(dest)  # replace a link, a file or (a layer's file over a directory) a tree; never write through a link
        if member.issym():
            os.symlink(member.linkname, dest)
        elif member.islnk():
            source = root / relative_path(member.linkname, f"{label}: hard link target of {name}")
            if os.path.islink(source) or not source.is_file() or not _inside(root, source):
                raise ExtractError(f"{label}: hard link {name} -> {member.linkname!r} does not name a "
                                   "regular file already unpacked in the root")
            with open(source, "rb") as src, open(dest, "xb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(dest, member.mode & 0o7777)
        elif member.isfile():
            with tar.extractfile(member) as src, open(dest, "xb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(dest, member.mode & 0o7777)
        else:
            notes.append(f"{label}: skipped special file {name}")


def _linked_size(root: Path, member: tarfile.TarInfo) -> int:
    """The size a hard link's copy will have (0 when its target is not a regular file: refused later)."""
    try:
        source = root / relative_path(member.linkname, "hard link target")
        return source.stat().st_size if source.is_file() and not source.is_symlink() else 0
    except (ExtractError, OSError):
        return 0


def finish_root(root: Path, directories, symlinks: dict) -> None:
    """The target's own directories and symlinks, checked like package members."""
    root = Path(os.path.realpath(root))
    for directory in directories:
        path = root / relative_path(directory, "directory")
        if not _inside(root, path):
            raise ExtractError(f"directory {directory!r} would be created through a symlink out of the root")
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o1777 if directory.strip("/") == "tmp" else 0o755)
    for link, target in symlinks.items():
        path = root / relative_path(link, "symlink")
        if not _inside(root, path.parent):
            raise ExtractError(f"symlink {link!r} would be created through a symlink out of the root")
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            path.unlink()
        os.symlink(target, path)


def _checked_blob(layout: Path, digest: str) -> Path:
    """The path of a layout blob whose content is its sha256 digest (hashed here, never trusted)."""
    import hashlib

    algorithm, _, hexdigest = str(digest).partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64 or not all(c in "0123456789abcdef" for c in hexdigest):
        raise ExtractError(f"{digest!r} is not a sha256 digest")
    path = layout / "blobs" / "sha256" / hexdigest
    if os.path.islink(path) or not path.is_file():
        raise ExtractError(f"the image layout has no blob {digest}")
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
    if hasher.hexdigest() != hexdigest:
        raise ExtractError(f"blob {digest} of the image layout does not match its digest")
    return path


def _json_blob(layout: Path, digest: str) -> dict:
    try:
        return json.loads(_checked_blob(layout, digest).read_bytes())
    except ValueError as exc:
        raise ExtractError(f"blob {digest} is not JSON: {exc}") from None


def unpack_image(layout: Path, ref_name: str, root: Path) -> tuple[dict, list[str]]:
    """Apply the layers of the image `ref_name` of an OCI layout to root; (what the image says about
    how to run in it, notes)."""
    try:
        index = json.loads((layout / "index.json").read_bytes())
        found = [m for m in index["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref_name]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ExtractError(f"the image layout's index.json is unusable: {exc}") from None
    if len(found) != 1:
        raise ExtractError(f"the image layout names {len(found)} images {ref_name!r}")
    manifest = _json_blob(layout, found[0]["digest"])
    try:
        config = _json_blob(layout, manifest["config"]["digest"]).get("config") or {}
        layers = [(d["digest"], d["mediaType"]) for d in manifest["layers"]]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ExtractError(f"the image manifest is unusable: {exc}") from None
    if not isinstance(config, dict) or not all(isinstance(d, str) and isinstance(m, str) for d, m in layers):
        raise ExtractError("the image manifest or config is unusable: wrong types")
    notes, dir_modes = [], {}
    root = Path(os.path.realpath(root))
    paths = [_checked_blob(layout, digest) for digest, _ in layers]
    budget = Budget(sum(path.stat().st_size for path in paths))
    for i, ((digest, media_type), path) in enumerate(zip(layers, paths)):
        with open(path, "rb") as f:
            if media_type.endswith("+zstd"):
                import zstandard

                stream = zstandard.ZstdDecompressor().stream_reader(f)
                mode = "r|"
            elif media_type.endswith("+gzip") or media_type.endswith(".gzip"):
                stream, mode = f, "r|gz"
            elif media_type.endswith(".tar") or media_type.endswith("tar"):
                stream, mode = f, "r|"
            else:
                raise ExtractError(f"layer {digest} has media type {media_type!r}, not a tar layer")
            try:
                with tarfile.open(fileobj=stream, mode=mode, tarinfo=_BoundedTarInfo) as tar:
                    _unpack(tar, f"layer {i} ({digest[:19]})", root, (), dir_modes, notes, whiteouts=True,
                            budget=budget)
            except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
                raise ExtractError(f"layer {digest} is not a readable tar stream: {exc}") from None
    _apply_modes(root, dir_modes)
    env = config.get("Env") or []
    facts = {"manifest": found[0]["digest"], "env": [e for e in env if isinstance(e, str)],
             "workdir": config.get("WorkingDir") or ""}
    return facts, notes


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: deb_extract.py PARAMS.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        params = json.load(f)
    sys.path[:0] = [p for p in params.get("sys_path", []) if p not in sys.path]
    root = Path(params["out"]).absolute()
    try:
        root.mkdir(parents=True, exist_ok=True)
        if "layout" in params:
            facts, notes = unpack_image(Path(params["layout"]).absolute(), params["ref_name"], root)
            Path(params["image_out"]).write_text(json.dumps(facts, sort_keys=True))
            for note in notes:
                print(note, flush=True)
            return 0
        notes = extract_debs([Path(p).absolute() for p in params["debs"]], root, params["exclude"])
        finish_root(root, params["directories"], params["symlinks"])
    except ExtractError as exc:
        print(f"extract: {exc}", file=sys.stderr, flush=True)
        return 1
    except (OSError, RecursionError, MemoryError) as exc:  # a path deeper than the system allows, a full disk
        print(f"extract: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    for note in notes:
        print(note, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
