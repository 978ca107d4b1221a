"""Read-only tree views (hermetic_build/treeviews.py): a tree materialised once in the cache and bound
read-only into the sandboxes of the actions that read it (env_run's environment, an image's root
filesystem), instead of a copy per run. Made once and reused; any change to a view is noticed and the view
made again; actions cannot write into one; gc and expunge remove them, whatever their directory modes."""

from __future__ import annotations

import os

import pytest
from support import require_tool

from hermetic_build.action import Action, File, make_params_json
from hermetic_build.errors import ActionFailed
from hermetic_build.label import Label
from hermetic_build.sandbox import ActionExecution, prepare_sandbox
from hermetic_build.store.local import LocalStore
from hermetic_build.tree import store_tree
from hermetic_build.treeviews import VIEWS, TreeViews, identity
from hermetic_build.workspace import Settings


@pytest.fixture
def stored(tmp_path):
    """(store, digest of a small tree with a file, an executable, a link and a read-only directory)."""
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "lib/ro").mkdir(parents=True)
    (src / "lib/data.txt").write_text("data\n")
    (src / "bin/tool").write_text("#!/bin/sh\necho tool\n")
    os.chmod(src / "bin/tool", 0o755)
    os.symlink("../lib/data.txt", src / "bin/data")
    (src / "lib/ro/f").write_text("f")
    os.chmod(src / "lib/ro", 0o555)
    store = LocalStore(tmp_path / "cache")
    return store, store_tree(store, src)


def _views(store):
    return TreeViews(store, store.root, store.tmp_dir)


def test_a_view_is_made_once_and_reused(stored):
    store, digest = stored
    views = _views(store)
    first = views.view(digest)
    assert (first / "lib/data.txt").read_text() == "data\n"
    assert os.readlink(first / "bin/data") == "../lib/data.txt"
    assert os.stat(first / "bin/tool").st_mode & 0o777 == 0o755
    assert os.stat(first / "lib/ro").st_mode & 0o777 == 0o555
    inode = os.stat(first / "lib/data.txt").st_ino
    again = _views(store).view(digest)  # another build: the same files, not a new copy
    assert again == first and os.stat(again / "lib/data.txt").st_ino == inode
    assert os.listdir(store.root / VIEWS) == [f"{digest.hash}-{digest.size}"]
    assert [n for n in os.listdir(store.tmp_dir)] == []  # nothing left behind


@pytest.mark.parametrize("change", ["write", "add", "remove", "chmod", "replace_with_link"])
def test_a_changed_view_is_noticed_and_made_again(stored, change):
    store, digest = stored
    views = _views(store)
    view = views.view(digest)
    stamp = identity(view)
    target = view / "lib/data.txt"
    if change == "write":
        with open(target, "r+") as f:  # same size, same inode: only mtime/ctime tell
            f.write("DATA")
    elif change == "add":
        (view / "lib/extra").write_text("x")
    elif change == "remove":
        target.unlink()
    elif change == "chmod":
        os.chmod(target, 0o666)
    else:
        target.unlink()
        os.symlink("/etc/passwd", target)
    assert identity(view) != stamp
    fresh = views.view(digest)
    assert fresh == view  # the same place, a new tree
    assert not os.path.islink(fresh / "lib/data.txt") and (fresh / "lib/data.txt").read_text() == "data\n"
    assert not (fresh / "lib/extra").exists()
    assert identity(fresh) == (fresh.parent / "identity").read_text()
    assert os.listdir(store.tmp_dir) == []  # the damaged view was removed, not left in tmp/


def test_a_view_made_by_another_build_meanwhile_is_used(stored, monkeypatch):
    store, digest = stored
    first = _views(store)
    made = first.view(digest)
    second = _views(store)
    # as if `second` found no view, then lost the race to rename its own into place
    final = made.parent
    assert second._make(digest, final) == made
    assert os.listdir(store.tmp_dir) == []


def test_gc_and_expunge_remove_views_with_read_only_directories(stored):
    store, digest = stored
    view = _views(store).view(digest)
    (store.root / VIEWS / "not-a-view").mkdir()  # not a view's name: not hb's to delete
    store.gc(max_size=10**12)
    assert not view.exists() and os.listdir(store.root / VIEWS) == ["not-a-view"]
    os.rmdir(store.root / VIEWS / "not-a-view")
    _views(store).view(digest)
    left = store.expunge()
    assert left == [] and not store.root.exists()


def test_an_action_reads_a_view_at_its_execroot_path_and_mount_point_but_cannot_write_it(stored, tmp_path):
    require_tool("bwrap")
    store, digest = stored
    view = _views(store).view(digest)
    owner = Label("p", "t")
    action = Action(owner, "Test", "test.none", "1", (), (File("hb-out/p/o", owner),), make_params_json({}),
                    "linux-64")
    sandbox, execroot = prepare_sandbox(store.tmp_dir)
    execution = ActionExecution(action, sandbox, execroot, {}, store, Settings(cache_dir=tmp_path / "cache"),
                                bytearray(), bytearray(), {}, {})
    (execroot / "in/tree").mkdir(parents=True)
    execution.tree_views["in/tree"] = view
    assert execution.tree_path("in/tree") == view
    with pytest.raises(ActionFailed):  # not a declared input: params never name a host directory
        execution.tree_path("/home")
    script = ("cat in/tree/lib/data.txt /opt/env/bin/data; /opt/env/bin/tool; "
              "for p in in/tree/lib/new in/tree/lib/data.txt /opt/env/lib/new; do "
              "  if echo x > $p; then echo WROTE $p; fi; done; "
              "rm -f in/tree/lib/data.txt && echo REMOVED; chmod 777 in/tree/lib && echo CHMOD; true")
    code = execution.run_command(["/bin/sh", "-c", script], mounts=(("in/tree", "/opt/env"),))
    out = bytes(execution.stdout).decode()
    assert code == 0, bytes(execution.stderr).decode()
    assert out == "data\ndata\ntool\n", out  # nothing written, removed or re-moded
    assert "Read-only file system" in bytes(execution.stderr).decode()
    assert sorted(os.listdir(view / "lib")) == ["data.txt", "ro"] and os.listdir(execroot / "in/tree") == []
    assert identity(view) == (view.parent / "identity").read_text()
