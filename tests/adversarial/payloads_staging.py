"""Hostile conda packages (.tar.bz2 with info/index.json, info/paths.json, info/files) and a
workspace whose conda_env adopts a hand-written lock naming them."""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import tarfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ZEROS_CHUNK = b"\0" * (1 << 20)


@dataclass(frozen=True)
class Member:
    """One tar member: a file (data), a dir, a fifo, a symlink or a hardlink (target)."""

    name: str
    kind: str = "file"
    data: bytes = b""
    target: str = ""
    size: int = -1  # for a file of zeros: its size, streamed without holding it in memory


def file(name: str, data: bytes = b"x\n") -> Member:
    return Member(name, "file", data)


def directory(name: str) -> Member:
    return Member(name, "dir")


def symlink(name: str, target: str) -> Member:
    return Member(name, "symlink", target=target)


def hardlink(name: str, target: str) -> Member:
    return Member(name, "hardlink", target=target)


def zeros(name: str, size: int) -> Member:
    return Member(name, "file", size=size)


class _Zeros(io.RawIOBase):
    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left, len(ZEROS_CHUNK))
        buffer[:n] = ZEROS_CHUNK[:n]
        self.left -= n
        return n


@dataclass(frozen=True)
class Package:
    name: str = "evil"
    version: str = "1.0"
    build: str = "0"
    members: tuple[Member, ...] = ()
    paths: tuple[dict, ...] | None = None  # info/paths.json entries; default: one per file/link member
    info_files: tuple[str, ...] | None = None  # info/files lines; default: the paths
    index: dict = field(default_factory=dict)  # fields added to info/index.json

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.tar.bz2"

    def paths_entries(self) -> list[dict]:
        if self.paths is not None:
            return list(self.paths)
        kinds = {"file": "hardlink", "hardlink": "hardlink", "symlink": "softlink"}
        return [{"_path": m.name, "path_type": kinds[m.kind]} for m in self.members if m.kind in kinds]

    def write(self, directory: Path) -> Path:
        """Write the package into directory as a .tar.bz2; returns its path."""
        index = {"name": self.name, "version": self.version, "build": self.build, "build_number": 0,
                 "depends": [], "subdir": "noarch", "noarch": "generic", **self.index}
        entries = self.paths_entries()
        lines = self.info_files if self.info_files is not None else tuple(e["_path"] for e in entries)
        info = [file("info/index.json", json.dumps(index).encode()),
                file("info/paths.json", json.dumps({"paths": entries, "paths_version": 1}).encode()),
                file("info/files", "".join(f"{line}\n" for line in lines).encode())]
        path = directory / self.filename
        with bz2.open(path, "wb", compresslevel=9) as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
            for member in (*info, *self.members):
                _add(tar, member)
        return path


def _add(tar: tarfile.TarFile, member: Member) -> None:
    info = tarfile.TarInfo(member.name)
    info.mode = 0o755 if member.kind == "dir" else 0o644
    if member.kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif member.kind == "fifo":
        info.type = tarfile.FIFOTYPE
        tar.addfile(info)
    elif member.kind in ("symlink", "hardlink"):
        info.type = tarfile.SYMTYPE if member.kind == "symlink" else tarfile.LNKTYPE
        info.linkname = member.target
        tar.addfile(info)
    elif member.size >= 0:
        info.size = member.size
        tar.addfile(info, io.BufferedReader(_Zeros(member.size), 1 << 20))
    else:
        info.size = len(member.data)
        tar.addfile(info, io.BytesIO(member.data))


def ustar(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "", size: int | None = None) -> bytes:
    """One raw ustar member: its header (claiming `size`, by default the data's length) and its data."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if size is None else size
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info.tobuf(tarfile.USTAR_FORMAT) + data + b"\0" * (-len(data) % 512)


@dataclass(frozen=True)
class RawPackage(Package):
    """A package written as raw tar blocks: its info/index.json, then `body`, then the end marker."""

    body: bytes = b""

    def write(self, directory: Path) -> Path:
        index = {"name": self.name, "version": self.version, "build": self.build, "build_number": 0, "depends": [],
                 "subdir": "noarch", "noarch": "generic"}
        path = directory / self.filename
        path.write_bytes(bz2.compress(ustar("info/index.json", json.dumps(index).encode()) + self.body + b"\0" * 1024))
        return path


def paths_json(*paths: str) -> bytes:
    return json.dumps({"paths": [{"_path": p, "path_type": "hardlink"} for p in paths], "paths_version": 1}).encode()


def adopt_lock(ws, archives: list[Path], *, attrs: str = "", name: str = "env") -> None:
    """//env:<name>, a conda_env of a conda-lock.yml that pins these archives by file:// URL."""
    packages = ""
    for archive in archives:
        data = archive.read_bytes()
        stem = archive.name.rsplit("-", 2)
        packages += textwrap.indent(textwrap.dedent(f"""\
            - name: {stem[0]}
              version: '{stem[1]}'
              manager: conda
              platform: linux-64
              dependencies: {{}}
              url: {archive.as_uri()}
              hash: {{md5: {hashlib.md5(data).hexdigest()}, sha256: {hashlib.sha256(data).hexdigest()}}}
              category: main
              optional: false
        """), "")
    ws.write("env/conda-lock.yml", textwrap.dedent("""\
        version: 1
        metadata:
          content_hash: {linux-64: x}
          channels: []
          platforms: [linux-64]
          sources: [environment.yml]
        package:
        """) + packages)
    ws.write("env/BUILD.hermetic", f'conda_env(name = "{name}", lock = "conda-lock.yml"{attrs})\n')


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Every regular file under root whose bytes contain needle (links are not followed)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            found.append(path)
    return found


def python_package(**index) -> Package:
    """A `python` 3.11 package (no interpreter: rattler runs nothing) whose info/index.json has `index`
    besides, e.g. python_site_packages_path (CEP 17)."""
    return Package(name="python", version="3.11.0", members=(file("lib/python3.11/site-packages/README.txt"),),
                   index={"subdir": "linux-64", "noarch": None, **index})


def noarch_python(name: str = "evil", entry_points: tuple[str, ...] = (), members: tuple[Member, ...] = ()) -> Package:
    """A `noarch: python` package: its site-packages/ and python-scripts/ files are installed where the
    python package says, and rattler writes a bin/<command> script per entry point of info/link.json."""
    link = {"noarch": {"type": "python", "entry_points": list(entry_points)}, "package_metadata_version": 1}
    kinds = {"file": "hardlink", "hardlink": "hardlink", "symlink": "softlink"}
    return Package(name=name, members=(*members, file("info/link.json", json.dumps(link).encode())),
                   paths=tuple({"_path": m.name, "path_type": kinds[m.kind]} for m in members if m.kind in kinds),
                   index={"noarch": "python"})


def stage_directly(tmp_path: Path, package: Package | tuple[Package, ...]):
    """Run the conda.stage action kind directly on archives (one package or several) that never went
    through the fetch's check, in a real sandbox directory; returns (the ActionFailed it raised or
    None, the output prefix, the execution)."""
    import rules  # noqa: F401 - registers the action kinds
    from hermetic_build.action import Action, File, get_action_kind, make_params_json
    from hermetic_build.api import ActionFailed
    from hermetic_build.label import Label
    from hermetic_build.sandbox import ActionExecution, prepare_sandbox
    from hermetic_build.workspace import Settings

    owner = Label("env", "env")
    packages = package if isinstance(package, tuple) else (package,)
    archives = tuple(File(f"hb-out/env/env/pkgs/{p.filename}", owner) for p in packages)
    out = File("hb-out/env/env/env", owner, True)
    (tmp_path / "sandboxes").mkdir()
    sandbox, execroot = prepare_sandbox(tmp_path / "sandboxes")
    (execroot / archives[0].path).parent.mkdir(parents=True)
    written = [p.write((execroot / archives[0].path).parent) for p in packages]
    # pinned as a lock would pin it: the stage checks the archive's sha256 before installing
    params = {"prefix": "/opt/env", "platform": "linux-64",
              "packages": [{"filename": p.filename, "url": "file:///nowhere",
                            "sha256": hashlib.sha256(w.read_bytes()).hexdigest(), "name": p.name}
                           for p, w in zip(packages, written)]}
    action = Action(owner, "CondaStage", "conda.stage", "3", archives, (out,), make_params_json(params), "linux-64")
    execution = ActionExecution(action, sandbox, execroot, {}, None, Settings(cache_dir=tmp_path / "cache"),
                                bytearray(), bytearray())
    try:
        get_action_kind("conda.stage").run(execution)
    except ActionFailed as exc:
        return exc, execroot / out.path, execution
    return None, execroot / out.path, execution
