"""Unpacking .deb packages into an image root, inside the sandbox.

    python3 -I deb_extract.py PARAMS.json

Run by the deb.extract action in bubblewrap: the .debs are pinned by a lock that lives in the
repository, so they may be hostile; every name and hard-link target must stay inside the root and
nothing is created or written through a link out of it, and because this runs in the sandbox a flaw
in those checks still cannot reach the host. Standalone on purpose (the standard library and
zstandard only). No maintainer scripts, no device nodes, hard links as copies.

PARAMS.json: {"sys_path": [...], "debs": [path], "out": path, "exclude": [glob], "directories": [path],
"symlinks": {path: target}}; relative paths are relative to the working directory (the execution
root). On failure it prints one line, `extract: <what went wrong>`, on stderr and exits 1.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path


class ExtractError(Exception):
    pass


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

                    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
                    return tarfile.open(fileobj=io.BytesIO(data), mode="r:")
                return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
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
    for deb in debs:
        with data_tar(deb) as tar:
            for member in tar:
                if member.name in ("", ".", "./", "/"):
                    continue
                name = relative_path(member.name, f"{deb.name}: entry")
                if any(fnmatch.fnmatch(name, pattern) for pattern in exclude):
                    continue
                dest = root / name
                if not _inside(root, dest.parent):
                    raise ExtractError(f"{deb.name}: {name} would be written through a symlink out of the root")
                dest.parent.mkdir(parents=True, exist_ok=True)
                if not _inside(root, dest.parent):  # made only of new directories: cannot have changed
                    raise ExtractError(f"{deb.name}: {name} would be written through a symlink out of the root")
                if member.isdir():
                    if dest.is_symlink():
                        continue  # a later package's directory over an earlier symlink: keep the link
                    dest.mkdir(exist_ok=True)
                    dir_modes[name] = member.mode & 0o7777
                    continue
                if os.path.islink(dest) or (os.path.lexists(dest) and not dest.is_dir()):
                    dest.unlink()  # replace a link or a file; never write through a link
                if member.issym():
                    os.symlink(member.linkname, dest)
                elif member.islnk():
                    source = root / relative_path(member.linkname, f"{deb.name}: hard link target of {name}")
                    if os.path.islink(source) or not source.is_file() or not _inside(root, source):
                        raise ExtractError(f"{deb.name}: hard link {name} -> {member.linkname!r} does not name a "
                                           "regular file already unpacked in the root")
                    with open(source, "rb") as src, open(dest, "xb") as out:
                        shutil.copyfileobj(src, out)
                    os.chmod(dest, member.mode & 0o7777)
                elif member.isfile():
                    with tar.extractfile(member) as src, open(dest, "xb") as out:
                        shutil.copyfileobj(src, out)
                    os.chmod(dest, member.mode & 0o7777)
                else:
                    notes.append(f"{deb.name}: skipped special file {name}")
    for name, mode in sorted(dir_modes.items(), reverse=True):
        os.chmod(root / name, mode)
    return notes


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
        notes = extract_debs([Path(p).absolute() for p in params["debs"]], root, params["exclude"])
        finish_root(root, params["directories"], params["symlinks"])
    except ExtractError as exc:
        print(f"extract: {exc}", file=sys.stderr, flush=True)
        return 1
    for note in notes:
        print(note, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
