"""A checked-out repository cannot make hb read files from elsewhere on the machine: a source file
that is (or lies under) a symbolic link resolving outside the workspace is refused before anything
reads it; links that stay inside the workspace keep working."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


# ----- what hb publishes into hb-out/ and reads of the checkout (helper D's red team) ------------------
_OUT_RULE = 'genrule(name = "x", outs = ["o.txt"], cmd = "echo new > $(OUTS)")\n'


def test_a_linked_directory_inside_hb_out_leads_nothing_outside(workspace, tmp_path):
    """`hb-out/p` committed as a link: the walk that clears what stands in a published output's way
    looked at `hb-out/p/x` through it, deleted the file `x` it led to outside the workspace, made a
    directory there and published `o.txt` into it."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "x").write_text("precious\n")
    dead = f".o.txt.hb-tmp-{2 ** 22 + 12345}-abc"  # named like a publish leftover of a dead process
    (workspace.root / "hb-out").mkdir()
    os.symlink(victim, workspace.root / "hb-out" / "p")
    workspace.write("p/BUILD.hermetic", _OUT_RULE)
    workspace.hb("build", "//p:x")
    assert (workspace.root / "hb-out/p/x/o.txt").read_text() == "new\n"
    assert not os.path.islink(workspace.root / "hb-out/p")
    assert sorted(p.name for p in victim.iterdir()) == ["x"] and (victim / "x").read_text() == "precious\n"
    # the sweep of publish leftovers does not list a directory reached through a link either
    (victim / "x").unlink()
    (victim / "x").mkdir()
    (victim / "x" / dead).write_text("not hb's\n")
    workspace.hb("clean")
    (workspace.root / "hb-out").mkdir()
    os.symlink(victim, workspace.root / "hb-out" / "p")
    workspace.hb("build", "//p:x")
    assert (victim / "x" / dead).read_text() == "not hb's\n"


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_publish_record_shipped_as_a_device_or_fifo_is_not_read(workspace, kind):
    """hb-out/.hb-manifest.json linked to /dev/zero took hb's memory (MemoryError traceback); a FIFO
    hung the build."""
    record = workspace.root / "hb-out" / ".hb-manifest.json"
    record.parent.mkdir()
    if kind == "fifo":
        os.mkfifo(record)
    else:
        os.symlink("/dev/zero", record)
    workspace.write("p/BUILD.hermetic", _OUT_RULE)
    proc = workspace.hb("build", "//p:x", check=False, timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert (workspace.root / "hb-out/p/x/o.txt").read_text() == "new\n"
    assert not record.is_symlink() and record.is_file()


def test_a_shipped_publish_record_cannot_vouch_for_content_hb_did_not_write(workspace, tmp_path):
    """A checkout that ships hb-out/.hb-manifest.json naming an output's digest beside the size and
    mtime of what it put at the output's place (a link to a host file with a known stamp, or a file of
    a tarball, whose mtime it sets) had hb skip publishing and report that digest over other content."""
    workspace.write("p/BUILD.hermetic", _OUT_RULE)
    digest = workspace.build_json("//p:x")["targets"]["//p:x"][0]["digest"]
    planted = tmp_path / "planted.txt"
    planted.write_text("not what hb built\n")
    st = os.stat(planted)
    workspace.hb("clean")
    out = workspace.root / "hb-out/p/x/o.txt"
    out.parent.mkdir(parents=True)
    os.symlink(planted, out)
    stamps = [[st.st_size, st.st_mtime_ns],  # the old record's stamp
              [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, 0o100000]]
    for stamp in stamps:
        (workspace.root / "hb-out/.hb-manifest.json").write_text(json.dumps({"hb-out/p/x/o.txt": [digest, stamp]}))
        workspace.hb("build", "//p:x")
        assert not out.is_symlink() and out.read_text() == "new\n"
        os.unlink(out)
        os.symlink(planted, out)


@pytest.mark.parametrize("rel", ["p/BUILD.hermetic", "p/defs.bzl", "hermetic.toml"])
def test_build_files_and_settings_linked_outside_are_not_read(workspace, tmp_path, rel):
    """A BUILD.hermetic linked to /proc/self/environ had its first line, every variable of hb's
    environment, shown in the parse error (a public CI log); .bzl files and hermetic.toml were read
    through links as well. They are source files of the checkout like any other."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text(SECRET)
    workspace.write("p/BUILD.hermetic", 'load("//p:defs.bzl", "x")\n')
    workspace.write("p/defs.bzl", "x = 1\n")
    (workspace.root / rel).unlink()
    os.symlink(outside / "f", workspace.root / rel)
    proc = workspace.hb("query", "//p:all", check=False)
    assert proc.returncode in (2, 3), proc.stderr
    assert f"source file {rel} resolves to" in proc.stderr and "outside the workspace" in proc.stderr, proc.stderr
    assert SECRET.strip() not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_a_build_file_linked_to_the_process_environment_shows_none_of_it(workspace):
    workspace.write("p/x.txt", "")
    os.symlink("/proc/self/environ", workspace.root / "p" / "BUILD.hermetic")
    env = {**workspace.env(), "HB_RED_TEAM_TOKEN": "hunter2-8d1f"}
    proc = subprocess.run([sys.executable, "-m", "hermetic_build.cli", "query", "//p:all"], cwd=workspace.root,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3 and "hunter2-8d1f" not in proc.stderr + proc.stdout, proc.stderr
