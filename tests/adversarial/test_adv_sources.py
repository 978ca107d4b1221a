"""A checked-out repository cannot make hb read files from elsewhere on the machine: a source file
that is (or lies under) a symbolic link resolving outside the workspace is refused before anything
reads it; links that stay inside the workspace keep working."""

from __future__ import annotations

import os

import pytest

SECRET = "HB-SOURCE-LINK-SECRET-51c2\n"


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "outside" / "secret.txt"
    path.parent.mkdir()
    path.write_text(SECRET)
    return path


def _genrule(workspace, src: str):
    workspace.write("p/BUILD.hermetic", f'genrule(name = "x", srcs = ["{src}"], outs = ["o.txt"], '
                                        'cmd = "cat $(SRCS) > $(OUTS)")\n')


def _refused(workspace, src: str, where: str):
    proc = workspace.hb("build", "//p:x", check=False)
    assert proc.returncode == 4, proc.stderr
    assert f"source file p/{src} resolves to" in proc.stderr and where in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workspace.root / "hb-out/p/x/o.txt").exists()
    for root in (workspace.root, workspace.cache):
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    with open(path, "rb") as f:
                        assert SECRET.encode() not in f.read(), path


def test_a_source_linking_outside_the_workspace_is_refused(workspace, secret):
    _genrule(workspace, "in.txt")
    os.symlink(secret, workspace.root / "p" / "in.txt")
    _refused(workspace, "in.txt", "outside the workspace")


def test_a_source_under_a_linked_directory_is_refused(workspace, secret):
    _genrule(workspace, "d/secret.txt")
    (workspace.root / "p").mkdir(exist_ok=True)
    os.symlink(secret.parent, workspace.root / "p" / "d")
    _refused(workspace, "d/secret.txt", "outside the workspace")


def test_a_glob_matching_a_link_outside_is_refused(workspace, secret):
    workspace.write("p/BUILD.hermetic", 'genrule(name = "x", srcs = glob(["*.txt"]), outs = ["o.txt"], '
                                        'cmd = "cat $(SRCS) > $(OUTS)")\n')
    os.symlink(secret, workspace.root / "p" / "in.txt")
    _refused(workspace, "in.txt", "outside the workspace")


def test_a_source_linking_into_hb_out_is_refused(workspace):
    workspace.write("hb-out/p/x/planted.txt", SECRET)
    _genrule(workspace, "in.txt")
    os.symlink("../hb-out/p/x/planted.txt", workspace.root / "p" / "in.txt")
    proc = workspace.hb("build", "//p:x", check=False)
    assert proc.returncode == 4 and "into hb-out/" in proc.stderr, proc.stderr


def test_links_inside_the_workspace_are_followed(workspace):
    workspace.write("shared/data.txt", "inside\n")
    _genrule(workspace, "in.txt")
    os.symlink("../shared/data.txt", workspace.root / "p" / "in.txt")
    workspace.hb("build", "//p:x")
    assert (workspace.root / "hb-out/p/x/o.txt").read_text() == "inside\n"


def test_an_hb_out_link_shipped_by_a_repository_is_refused(workspace, tmp_path):
    """A repository that commits `hb-out` as a link would make hb write and delete wherever it
    points: publishing and `hb clean` refuse it and leave the target untouched."""
    victim = tmp_path / "victim"
    (victim / "p" / "x").mkdir(parents=True)
    (victim / "p" / "x" / "o.txt").write_text("precious\n")
    os.symlink(victim, workspace.root / "hb-out")
    workspace.write("p/BUILD.hermetic", 'genrule(name = "x", outs = ["o.txt"], cmd = "echo new > $(OUTS)")\n')
    for args in (("build", "//p:x"), ("clean",)):
        proc = workspace.hb(*args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "is a symbolic link" in proc.stderr and "rm " in proc.stderr, proc.stderr
    assert (victim / "p" / "x" / "o.txt").read_text() == "precious\n"
    assert sorted(p.name for p in victim.iterdir()) == ["p"]
