"""deb_base: a .deb (pinned by a lock that lives in the repository, so possibly hostile) and the
target's own `symlinks`/`directories` cannot create, write or read anything outside the image root."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from hermetic_build.api import ActionFailed
from rules.oci.debs import extract_debs

SECRET = b"HB-DEB-SECRET-0c1d\n"


def _member(name: str, kind: str = "file", data: bytes = b"x\n", target: str = "") -> tuple:
    return name, kind, data, target


def write_deb(path: Path, members) -> Path:
    """A .deb: an ar archive with debian-binary, control.tar.gz and data.tar.gz holding `members`."""
    def tar_bytes(entries) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, kind, data, target in entries:
                info = tarfile.TarInfo(name)
                if kind == "dir":
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                elif kind in ("symlink", "hardlink"):
                    info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
                    info.linkname = target
                    tar.addfile(info)
                else:
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    parts = [("debian-binary", b"2.0\n"), ("control.tar.gz", tar_bytes([("./control", "file", b"Package: x\n", "")])),
             ("data.tar.gz", tar_bytes(members))]
    with open(path, "wb") as f:
        f.write(b"!<arch>\n")
        for name, data in parts:
            f.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode())
            f.write(data + (b"\n" if len(data) % 2 else b""))
    return path


@pytest.fixture
def host(tmp_path):
    """A directory standing for the host outside the image root, with a secret in it."""
    directory = tmp_path / "host"
    directory.mkdir()
    (directory / "secret").write_bytes(SECRET)
    return directory


def _nothing_new_in(host: Path) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["secret"], list(host.iterdir())
    assert (host / "secret").read_bytes() == SECRET


def test_member_beneath_a_link_to_the_host_creates_nothing_there(tmp_path, host):
    deb = write_deb(tmp_path / "a.deb", [_member("./usr", "dir"), _member("./usr/lib", "symlink", target=str(host)),
                                         _member("./usr/lib/evil/dir/f", data=b"pwned\n")])
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ActionFailed, match="through a symlink out of the root"):
        extract_debs([deb], root)
    _nothing_new_in(host)


def test_hard_link_to_a_host_file_is_refused(tmp_path, host):
    root = tmp_path / "root"
    root.mkdir()
    relative = os.path.relpath(host / "secret", root)
    deb = write_deb(tmp_path / "b.deb", [_member("./etc", "dir"), _member("./etc/copy", "hardlink", target=relative)])
    with pytest.raises(ActionFailed, match="not a relative path inside the root"):
        extract_debs([deb], root)
    deb = write_deb(tmp_path / "c.deb", [_member("./l", "symlink", target=str(host / "secret")),
                                         _member("./copy", "hardlink", target="./l")])
    with pytest.raises(ActionFailed, match="does not name a regular file"):
        extract_debs([deb], root)
    for path in root.rglob("*"):
        assert path.is_symlink() or not path.is_file() or SECRET not in path.read_bytes()


@pytest.mark.parametrize("name", ["/abs/file", "../escape", "./a/../../escape"])
def test_names_leaving_the_root_are_refused(tmp_path, host, name):
    root = tmp_path / "root"
    root.mkdir()
    deb = write_deb(tmp_path / "d.deb", [_member(name)])
    if name.startswith("/"):  # a leading '/' is relative to the image root, as dpkg treats it
        extract_debs([deb], root)
        assert (root / "abs/file").read_bytes() == b"x\n"
        return
    with pytest.raises(ActionFailed, match="not a relative path inside the root"):
        extract_debs([deb], root)
    assert not (tmp_path / "escape").exists()


def test_a_file_member_over_a_link_replaces_the_link(tmp_path, host):
    root = tmp_path / "root"
    root.mkdir()
    deb = write_deb(tmp_path / "e.deb", [_member("./f", "symlink", target=str(host / "secret")),
                                         _member("./f", data=b"new\n")])
    extract_debs([deb], root)
    assert not (root / "f").is_symlink() and (root / "f").read_bytes() == b"new\n"
    _nothing_new_in(host)


@pytest.mark.parametrize("attribute", ['symlinks = {"../../x": "/tmp"}', 'directories = ["../y"]',
                                       'symlinks = {"a/./b": "c"}'])
def test_build_attributes_leaving_the_root_are_analysis_errors(workspace, tmp_path, attribute):
    deb = write_deb(tmp_path / "ok.deb", [_member("./etc", "dir"), _member("./etc/ok", data=b"ok\n")])
    data = deb.read_bytes()
    workspace.write("base/debs.lock.json", json.dumps({"version": 1, "requested": ["ok"], "packages": [
        {"name": "ok", "filename": "ok.deb", "url": deb.as_uri(), "sha256": hashlib.sha256(data).hexdigest(),
         "size": len(data)}]}))
    workspace.write("base/BUILD.hermetic", f'deb_base(name = "base", packages = ["ok"], {attribute})\n')
    proc = workspace.hb("aquery", "//base:base", check=False)
    assert proc.returncode == 4, proc.stderr
    assert "is not a path inside the image root" in proc.stderr and "base/BUILD.hermetic:1" in proc.stderr
    assert not (workspace.root.parent / "x").exists() and not (workspace.root.parent / "y").exists()


def test_a_hostile_deb_fails_the_build_cleanly(workspace, tmp_path, host):
    deb = write_deb(tmp_path / "evil.deb", [_member("./usr", "dir"), _member("./usr/lib", "symlink", target=str(host)),
                                            _member("./usr/lib/planted", data=b"pwned\n")])
    data = deb.read_bytes()
    workspace.write("base/debs.lock.json", json.dumps({"version": 1, "requested": ["evil"], "packages": [
        {"name": "evil", "filename": "evil.deb", "url": deb.as_uri(), "sha256": hashlib.sha256(data).hexdigest(),
         "size": len(data)}]}))
    workspace.write("base/BUILD.hermetic", 'deb_base(name = "base", packages = ["evil"])\n')
    workspace.write("img/BUILD.hermetic", 'oci_image(name = "img", base = "//base:base")\n')
    proc = workspace.hb("build", "//img:img", check=False)
    assert proc.returncode == 5, proc.stderr
    assert "usr/lib/planted would be written through a symlink out of the root" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    _nothing_new_in(host)
