"""store_tree walks by descriptors: links are entries, never followed; special files are refused."""

from __future__ import annotations

import os

import pytest

from hermetic_build.anchored import RefusedPath
from hermetic_build.store.local import LocalStore
from hermetic_build.tree import MAX_TREE_DEPTH, materialize_tree, store_tree, walk_tree


def test_links_to_outside_are_stored_as_links(tmp_path):
    store = LocalStore(tmp_path / "c")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_bytes(b"outside-secret")
    tree = tmp_path / "t"
    (tree / "d").mkdir(parents=True)
    (tree / "d/f").write_text("f")
    os.symlink(tmp_path / "outside", tree / "dirlink")
    os.symlink(tmp_path / "outside/secret", tree / "d/filelink")
    digest = store_tree(store, tree, move=True)
    entries = dict(walk_tree(store, digest))
    assert entries["dirlink"].kind == "symlink" and entries["dirlink"].target == str(tmp_path / "outside")
    assert entries["d/filelink"].kind == "symlink"
    assert "dirlink/secret" not in entries
    assert (tmp_path / "outside/secret").read_bytes() == b"outside-secret"
    assert not (tree / "d/f").exists()  # moved
    for shard in (tmp_path / "c/cas").iterdir():
        for blob in shard.iterdir():
            assert blob.read_bytes() != b"outside-secret"
    materialize_tree(store, digest, tmp_path / "back")
    assert os.readlink(tmp_path / "back/dirlink") == str(tmp_path / "outside")


def test_store_tree_from_a_descriptor(tmp_path):
    store = LocalStore(tmp_path / "c")
    (tmp_path / "t/x").mkdir(parents=True)
    (tmp_path / "t/x/y").write_text("y")
    by_path = store_tree(store, tmp_path / "t")
    fd = os.open(tmp_path / "t", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert store_tree(store, fd) == by_path
        os.fstat(fd)  # left open for the caller
    finally:
        os.close(fd)


def test_root_that_is_a_link_is_refused(tmp_path):
    store = LocalStore(tmp_path / "c")
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(RefusedPath, match="is a symbolic link"):
        store_tree(store, tmp_path / "link")


def test_special_files_are_refused_without_blocking(tmp_path):
    store = LocalStore(tmp_path / "c")
    (tmp_path / "t/sub").mkdir(parents=True)
    os.mkfifo(tmp_path / "t/sub/pipe")
    with pytest.raises(RefusedPath, match="sub/pipe: only files, directories and symlinks"):
        store_tree(store, tmp_path / "t")


def test_too_deep_a_tree_is_refused_cleanly(tmp_path):
    store = LocalStore(tmp_path / "c")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    os.mkdir("t", dir_fd=fd)
    current = os.open("t", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    os.close(fd)
    for _ in range(MAX_TREE_DEPTH + 2):  # deeper than PATH_MAX allows by path
        os.mkdir("dddddddddddddddddddd", dir_fd=current)
        nxt = os.open("dddddddddddddddddddd", os.O_RDONLY | os.O_DIRECTORY, dir_fd=current)
        os.close(current)
        current = nxt
    os.close(current)
    with pytest.raises(RefusedPath, match=f"nested more than {MAX_TREE_DEPTH} directories deep"):
        store_tree(store, tmp_path / "t")
