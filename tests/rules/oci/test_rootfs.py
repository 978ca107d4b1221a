"""Unpacking image layers for env_run(image = ...): order, OCI whiteouts, and the checks that keep a hostile
layer inside the root (deb_extract.extract_layers); the root filesystem's entries as bubblewrap arguments."""

import io
import os
import tarfile

import pytest

from hermetic_build.sandbox import root_arguments
from rules.oci.deb_extract import ExtractError, extract_layers


def _tar(*members) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, value in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, value
                tar.addfile(info)
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
                tar.addfile(info)
            else:
                info.size, info.mode = len(value), 0o644
                tar.addfile(info, io.BytesIO(value))
    buf.seek(0)
    return tarfile.open(fileobj=buf, mode="r")


def test_layers_apply_in_order_with_whiteouts(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    notes = extract_layers([
        ("base", _tar(("a", "dir", None), ("a/x", "file", b"x"), ("a/keep", "file", b"k"), ("b", "file", b"b"),
                      ("c", "dir", None), ("c/old", "file", b"o"), ("bin", "sym", "usr/bin"), ("fifo", "fifo", None))),
        ("top", _tar(("a/.wh.x", "file", b""), (".wh.b", "file", b""), ("c/.wh..wh..opq", "file", b""),
                     ("c/new", "file", b"n"), ("a/keep", "file", b"K"))),
    ], root)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["a", "a/keep", "bin", "c", "c/new"]
    assert (root / "a/keep").read_bytes() == b"K" and os.readlink(root / "bin") == "usr/bin"
    assert notes == ["base: skipped special file fifo"]


def test_a_layer_cannot_write_through_a_link_or_leave_the_root(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ExtractError, match="through a symlink out of the root"):
        extract_layers([("one", _tar(("etc", "sym", str(outside)))), ("two", _tar(("etc/passwd", "file", b"x")))],
                       root)
    assert list(outside.iterdir()) == []
    with pytest.raises(ExtractError, match="not a relative path inside the root"):
        extract_layers([("evil", _tar(("../escape", "file", b"x")))], root)
    with pytest.raises(ExtractError, match="not a relative path inside the root"):
        extract_layers([("evil", _tar(("a/.wh...", "file", b"")))], root)
    assert not (tmp_path / "escape").exists()
    # a file over an earlier link replaces the link, never writes through it
    (outside / "target").write_text("keep")
    root2 = tmp_path / "root2"
    root2.mkdir()
    extract_layers([("one", _tar(("f", "sym", str(outside / "target")))), ("two", _tar(("f", "file", b"new")))], root2)
    assert (outside / "target").read_text() == "keep" and (root2 / "f").read_bytes() == b"new"


def test_root_arguments_bind_entries_and_recreate_links(tmp_path):
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "proc").mkdir()
    os.symlink("usr/bin", tmp_path / "bin")
    os.symlink("/etc/shadow", tmp_path / "hb")  # the sandbox's own directory is never the image's
    args = root_arguments(tmp_path)
    assert args == ["--symlink", "usr/bin", "/bin", "--ro-bind", str(tmp_path / "etc"), "/etc",
                    "--ro-bind", str(tmp_path / "usr"), "/usr"]
