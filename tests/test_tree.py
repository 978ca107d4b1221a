import os

from hermetic_build.store.local import LocalStore
from hermetic_build.tree import materialize_tree, store_tree, walk_tree


def _make(root):
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "tool", 0o755)
    (root / "data.txt").write_text("data")
    os.symlink("bin/tool", root / "link")
    (root / "empty").mkdir()


def test_tree_roundtrip_is_exact(tmp_path):
    store = LocalStore(tmp_path / "c")
    _make(tmp_path / "a")
    digest = store_tree(store, tmp_path / "a")
    materialize_tree(store, digest, tmp_path / "b")
    assert os.readlink(tmp_path / "b" / "link") == "bin/tool"
    assert os.stat(tmp_path / "b" / "bin" / "tool").st_mode & 0o777 == 0o755
    assert (tmp_path / "b" / "empty").is_dir()
    assert store_tree(store, tmp_path / "b") == digest
    assert [p for p, _ in walk_tree(store, digest)] == ["bin", "bin/tool", "data.txt", "empty", "link"]


def test_tree_digest_depends_on_content_and_mode(tmp_path):
    store = LocalStore(tmp_path / "c")
    _make(tmp_path / "a")
    d1 = store_tree(store, tmp_path / "a")
    os.chmod(tmp_path / "a" / "data.txt", 0o600)
    d2 = store_tree(store, tmp_path / "a")
    (tmp_path / "a" / "data.txt").write_text("other")
    d3 = store_tree(store, tmp_path / "a")
    assert len({d1, d2, d3}) == 3
