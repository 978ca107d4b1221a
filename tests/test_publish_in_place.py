"""Directory outputs collected in place (tree.store_tree_in_place) and published by renaming them
into hb-out/ (Executor.publish_tree_in_place): the same tree as one materialized from the store, and
only where nothing distinguishes it from one (no hard links, special bits, xattrs, other owner)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from adversarial.payloads_sandbox import SandboxWorkspace
from support import require_tool

from hermetic_build.digest import Digest
from hermetic_build.store.local import LocalStore
from hermetic_build.tree import materialize_tree, store_tree, store_tree_in_place


def make_tree(root: Path) -> Path:
    (root / "d/e").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a" * 3000)
    (root / "d/b.txt").write_text("b")
    (root / "d/e/run").write_text("#!/bin/sh\n")
    os.chmod(root / "d/e/run", 0o755)
    os.symlink("d/b.txt", root / "link")
    return root


def in_place(store, root: Path):
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return store_tree_in_place(store, fd)
    finally:
        os.close(fd)


def listing(root: Path) -> list[tuple]:
    """(path, kind, permission bits, content or link target) of every entry, sorted."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath, name)
            st = os.lstat(path)
            body = (os.readlink(path) if stat.S_ISLNK(st.st_mode)
                    else path.read_bytes() if stat.S_ISREG(st.st_mode) else None)
            found.append((str(path.relative_to(root)), stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), body))
    return sorted(found)


def test_a_plain_tree_is_stored_and_left_in_place(tmp_path):
    store = LocalStore(tmp_path / "c")
    tree = make_tree(tmp_path / "t")
    inode = os.stat(tree / "a.txt").st_ino
    digest, why = in_place(store, tree)
    assert why is None
    assert os.stat(tree / "a.txt").st_ino == inode  # not moved
    shutil.copytree(tree, tmp_path / "copy", symlinks=True)
    assert store_tree(store, tmp_path / "copy", move=True) == digest  # the digest a move gives
    materialize_tree(store, digest, tmp_path / "back")  # every blob is in the store
    assert listing(tmp_path / "back") == listing(tree)


def test_a_blob_already_stored_is_not_written_again(tmp_path):
    store = LocalStore(tmp_path / "c")
    digest, _ = in_place(store, make_tree(tmp_path / "t"))
    blob = store.blob_path(Digest.parse(next(
        e["digest"] for e in json.loads(store.get_blob(digest))["entries"] if e["name"] == "a.txt")))
    before = os.stat(blob)
    assert in_place(store, make_tree(tmp_path / "t2"))[0] == digest
    after = os.stat(blob)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def _hard_link(root: Path) -> None:
    os.link(root / "d/b.txt", root.parent / "elsewhere")


def _setuid(root: Path) -> None:
    os.chmod(root / "d/e/run", 0o4755)


def _setgid_directory(root: Path) -> None:
    os.chmod(root / "d", 0o2755)


def _xattr(root: Path) -> None:
    try:
        os.setxattr(root / "d/b.txt", "user.note", b"x")
    except OSError as exc:
        pytest.fail(f"this filesystem takes no user xattrs ({exc}); run the tests on one that does")


def _directory_xattr(root: Path) -> None:
    os.setxattr(root / "d/e", "user.note", b"x")


@pytest.mark.parametrize(("change", "reason"), [
    (_hard_link, "d/b.txt has other hard links"),
    (_setuid, "d/e/run has setuid, setgid or sticky bits"),
    (_setgid_directory, "d has setuid, setgid or sticky bits"),
    (_xattr, "d/b.txt has extended attributes"),
    (_directory_xattr, "d/e has extended attributes"),
])
def test_what_a_materialized_tree_would_not_have_is_reported(tmp_path, change, reason):
    store = LocalStore(tmp_path / "c")
    tree = make_tree(tmp_path / "t")
    change(tree)
    digest, why = in_place(store, tree)
    assert why == reason
    materialize_tree(store, digest, tmp_path / "back")  # stored all the same
    assert (tmp_path / "back/d/b.txt").read_text() == "b"


OLD = 978307200  # 2001-01-01: a time the command gives its files, which a copy would not keep


def tree_build(cmd: str) -> str:
    return f'tree_out(name = "t", cmd = """{cmd}""")\n'


@pytest.fixture
def sandboxed(tmp_path):
    require_tool("bwrap")
    root = tmp_path / "ws"
    root.mkdir()
    return SandboxWorkspace(root, tmp_path / "cache", bwrap=True)


def published_tree_matches_store(workspace) -> None:
    manifest = json.loads((workspace.root / "hb-out/.hb-manifest.json").read_text())
    digest = Digest.parse(manifest["hb-out/p/t/tree"][0])
    back = workspace.root.parent / "back"
    shutil.rmtree(back, ignore_errors=True)
    materialize_tree(LocalStore(workspace.cache), digest, back)
    assert listing(back) == listing(workspace.root / "hb-out/p/t/tree")


MAKE = ("mkdir -p $(OUT)/d/e && printf b > $(OUT)/d/b.txt && printf '#!/bin/sh\\n' > $(OUT)/d/e/run && "
        "chmod 755 $(OUT)/d/e/run && ln -s d/b.txt $(OUT)/link && chmod 750 $(OUT)/d && "
        "touch -h -d @978307200 $(OUT)/d/b.txt")


def _start_hb(workspace, *args: str):
    """`hb ARGS` started in the workspace, its output piped (text)."""
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "hermetic_build.cli", *args], cwd=workspace.root,
                            env=workspace.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_sandboxed_tree_is_published_by_rename(sandboxed):
    sandboxed.write("p/BUILD.hermetic", tree_build(MAKE))
    sandboxed.hb("build", "//p:t")
    published = sandboxed.root / "hb-out/p/t/tree"
    assert os.stat(published / "d/b.txt").st_mtime == OLD  # the command's own file, renamed
    assert stat.S_IMODE(os.stat(published).st_mode) == 0o755
    published_tree_matches_store(sandboxed)
    assert not [p for p in (sandboxed.cache / "tmp").iterdir() if p.name.startswith("sb-")]
    # a changed command replaces the published tree, again by rename
    sandboxed.write("p/BUILD.hermetic", tree_build(MAKE + " && printf c > $(OUT)/c.txt"))
    sandboxed.hb("build", "//p:t")
    assert (published / "c.txt").read_text() == "c"
    assert os.stat(published / "d/b.txt").st_mtime == OLD
    published_tree_matches_store(sandboxed)


def test_a_tree_with_xattrs_is_published_from_the_store(sandboxed):
    setxattr = "python3 -c 'import os, sys; os.setxattr(sys.argv[1], \"user.note\", b\"x\")' $(OUT)/d/b.txt"
    sandboxed.write("p/BUILD.hermetic", tree_build(f"{MAKE} && {setxattr}"))
    sandboxed.hb("build", "//p:t")
    published = sandboxed.root / "hb-out/p/t/tree"
    assert os.listxattr(published / "d/b.txt") == []  # a fresh copy, not the command's file
    assert os.stat(published / "d/b.txt").st_mtime != OLD
    published_tree_matches_store(sandboxed)
    assert not [p for p in (sandboxed.cache / "tmp").iterdir() if p.name.startswith("sb-")]


def test_a_tree_with_a_hard_link_is_published_from_the_store(sandboxed):
    sandboxed.write("p/BUILD.hermetic", tree_build(f"{MAKE} && ln $(OUT)/d/b.txt $(OUT)/twin"))
    sandboxed.hb("build", "//p:t")
    published = sandboxed.root / "hb-out/p/t/tree"
    assert os.stat(published / "twin").st_nlink == 1 and os.stat(published / "d/b.txt").st_nlink == 1
    assert (published / "twin").read_text() == "b"
    published_tree_matches_store(sandboxed)


def test_the_old_tree_is_removed_before_its_action_runs_again(sandboxed):
    """As Bazel does: an action that runs replaces its outputs, so the tree published before is
    deleted while it runs; a failing run leaves no old tree behind and no temporary directory."""
    sandboxed.write("p/BUILD.hermetic", tree_build(MAKE))
    sandboxed.hb("build", "//p:t")
    sandboxed.write("p/BUILD.hermetic", tree_build(MAKE + " && exit 3"))
    proc = sandboxed.hb("build", "//p:t", check=False)
    assert proc.returncode != 0 and "exited with status 3" in proc.stderr, proc.stderr
    assert os.listdir(sandboxed.root / "hb-out/p/t") == []  # nor a .hb-tmp-<pid>-... left
    sandboxed.write("p/BUILD.hermetic", tree_build(MAKE))
    sandboxed.hb("build", "//p:t")  # cached: published from the store again
    published_tree_matches_store(sandboxed)


MANY = "mkdir -p $(OUT) && seq 400 | while read i; do echo $i > $(OUT)/f$i; done"


def test_a_build_waits_while_another_publishes_into_hb_out(sandboxed):
    """Builds of one workspace take turns publishing into hb-out/: one renamed its tree onto the
    directory another had just published there and failed with a traceback ("OSError: [Errno 39]
    Directory not empty"), in 1 of 4 cold builds of the example run three at a time."""
    import fcntl
    import time

    sandboxed.write("p/BUILD.hermetic", tree_build(MANY))
    sandboxed.hb("build", "//p:t")
    tree = sandboxed.root / "hb-out/p/t/tree"
    shutil.rmtree(tree)
    fd = os.open(sandboxed.root / "hb-out", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another build, publishing
        build = _start_hb(sandboxed, "build", "//p:t")
        time.sleep(3)
        assert build.poll() is None, "the build published while another build held hb-out/"
        tree.mkdir()
        (tree / "f1").write_text("the other build's\n")  # what that build published meanwhile
    finally:
        os.close(fd)
    _out, err = build.communicate(timeout=60)
    assert build.returncode == 0, err
    assert sorted(p.name for p in tree.iterdir()) == sorted(f"f{i}" for i in range(1, 401))
    assert (tree / "f1").read_text() == "1\n"


@pytest.mark.slow
def test_builds_of_one_workspace_at_once_all_publish(sandboxed):
    sandboxed.write("p/BUILD.hermetic", tree_build(MANY))
    sandboxed.hb("build", "//p:t")
    for _ in range(8):
        shutil.rmtree(sandboxed.root / "hb-out")
        procs = [_start_hb(sandboxed, "build", "//p:t") for _ in range(3)]
        for p in procs:
            _out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        assert len(os.listdir(sandboxed.root / "hb-out/p/t/tree")) == 400


def test_hb_clean_waits_for_a_build_publishing_and_a_build_waiting_publishes_into_the_new_hb_out(sandboxed):
    """hb clean deletes hb-out/ only while no build publishes into it (the same flock); a build that
    waited meanwhile locks the hb-out/ made again, where before it published into the deleted
    directory and its outputs were nowhere."""
    import fcntl
    import time

    sandboxed.write("p/BUILD.hermetic", tree_build(MANY))
    sandboxed.hb("build", "//p:t")
    hb_out = sandboxed.root / "hb-out"
    fd = os.open(hb_out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a build, publishing
        clean = _start_hb(sandboxed, "clean")
        time.sleep(3)
        assert clean.poll() is None and hb_out.is_dir(), "hb clean deleted hb-out/ while a build published into it"
    finally:
        os.close(fd)
    _out, err = clean.communicate(timeout=60)
    assert clean.returncode == 0 and not hb_out.exists(), err

    sandboxed.hb("build", "//p:t")
    shutil.rmtree(hb_out / "p/t/tree")
    fd = os.open(hb_out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # hb clean, deleting
        build = _start_hb(sandboxed, "build", "//p:t")
        time.sleep(3)
        assert build.poll() is None
        os.rename(hb_out, sandboxed.root / "deleted")  # as rmtree leaves it: gone from the workspace
    finally:
        os.close(fd)
    _out, err = build.communicate(timeout=60)
    assert build.returncode == 0, err
    assert len(os.listdir(hb_out / "p/t/tree")) == 400
