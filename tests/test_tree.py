import json
import os
import sys
from pathlib import Path

import pytest

from hermetic_build.digest import digest_bytes
from hermetic_build.store.base import InvalidEntry
from hermetic_build.store.local import LocalStore
from hermetic_build.tree import (
    MAX_TREE_DEPTH,
    InvalidTree,
    decode_directory,
    encode_directory,
    materialize_tree,
    read_directory,
    store_tree,
    walk_tree,
)

sys.path.insert(0, str(Path(__file__).parent / "adversarial"))
from payloads_stores import CONTENT, deep_chain, hostile_trees, wide_dag


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


# ----- hostile directory blobs: validated before anything is written ---------------------------------





def _plant(store, blobs):
    """Put blobs into the store byte for byte (bypassing every encoder); the root digest."""
    for blob in blobs:
        store.put_blob(blob)
    return digest_bytes(blobs[-1])


def test_encoded_directories_decode_to_the_same_entries(tmp_path):
    store = LocalStore(tmp_path / "c")
    _make(tmp_path / "a")
    digest = store_tree(store, tmp_path / "a")
    entries = decode_directory(store.get_blob(digest))
    assert decode_directory(encode_directory(entries)) == entries


@pytest.mark.parametrize("name", sorted(hostile_trees("/victim")))
def test_hostile_tree_is_refused_and_removed_before_anything_is_written(tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    store = LocalStore(tmp_path / "c")
    store.put_blob(CONTENT)
    blobs = hostile_trees(str(victim))[name]
    root = _plant(store, blobs)
    dest = tmp_path / "out" / "tree"
    with pytest.raises(InvalidTree):
        materialize_tree(store, root, dest)
    assert list(victim.iterdir()) == []
    assert not dest.exists() or list(dest.iterdir()) == []
    assert not (tmp_path / "out" / "pwned").exists()
    bad = {digest_bytes(b) for b in blobs} & set(store.corrupt_removed)
    assert len(bad) == 1 and not store.has_blob(bad.pop())
    with pytest.raises(InvalidTree):
        list(walk_tree(store, _plant(store, blobs)))


def test_decode_directory_raises_only_invalid_entry():
    for blobs in hostile_trees("/victim").values():
        with pytest.raises(InvalidEntry):
            for blob in blobs:
                decode_directory(blob)


def test_a_tree_deeper_than_the_limit_is_refused_without_recursion(tmp_path):
    """5,000 levels: beyond the limit and beyond Python's recursion limit (the 100,000-deep tree
    planted through a cache is in tests/adversarial/test_adv_stores.py)."""
    store = LocalStore(tmp_path / "c")
    blobs = deep_chain(5000)
    for blob in blobs:
        store.put_blob(blob, fsync=False)
    root = digest_bytes(blobs[-1])
    with pytest.raises(InvalidTree, match=f"deeper than {MAX_TREE_DEPTH}"):
        materialize_tree(store, root, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # validated first: nothing written
    assert not store.has_blob(root)  # the root of the refused tree is removed
    with pytest.raises(InvalidTree):
        list(walk_tree(store, _plant(store, blobs[-1:])))


def test_a_tree_at_the_depth_limit_is_written(tmp_path):
    store = LocalStore(tmp_path / "c")
    blobs = deep_chain(200)
    root = _plant(store, blobs)
    materialize_tree(store, root, tmp_path / "out")
    assert (tmp_path / "out" / "/".join(["d"] * 200)).is_dir()


def test_shared_subtrees_are_counted_each_time(tmp_path):
    store = LocalStore(tmp_path / "c")
    store.put_blob(CONTENT)
    root = _plant(store, wide_dag(21))  # 2**21 paths from 22 blobs
    with pytest.raises(InvalidTree, match="more than"):
        materialize_tree(store, root, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_only_permission_bits_are_materialized(tmp_path):
    store = LocalStore(tmp_path / "c")
    f = store.put_blob(CONTENT)
    sub = store.put_blob(json.dumps({"v": 1, "entries": []}).encode())
    root = store.put_blob(json.dumps({"v": 1, "entries": [
        {"name": "d", "kind": "dir", "digest": str(sub), "mode": 0o3777},
        {"name": "tool", "kind": "file", "digest": str(f), "mode": 0o6755},
    ]}).encode())
    materialize_tree(store, root, tmp_path / "out")
    assert os.stat(tmp_path / "out" / "tool").st_mode & 0o7777 == 0o755
    assert os.stat(tmp_path / "out" / "d").st_mode & 0o7777 == 0o777


def test_nothing_is_written_through_a_link_already_in_the_destination(tmp_path):
    store = LocalStore(tmp_path / "c")
    _make(tmp_path / "a")
    digest = store_tree(store, tmp_path / "a")
    victim = tmp_path / "victim"
    victim.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    os.symlink(victim, dest / "bin")  # a directory the tree has, planted as a link
    os.symlink(victim / "data.txt", dest / "data.txt")
    with pytest.raises(FileExistsError):
        materialize_tree(store, digest, dest)
    assert list(victim.iterdir()) == []


def test_read_directory_of_a_valid_blob(tmp_path):
    store = LocalStore(tmp_path / "c")
    _make(tmp_path / "a")
    digest = store_tree(store, tmp_path / "a")
    assert [e.name for e in read_directory(store, digest)] == ["bin", "data.txt", "empty", "link"]


def test_threads_write_the_same_tree_and_a_missing_blob_still_fails(tmp_path):
    """threads > 1 (publishing into hb-out/): files copied by a pool, each into the directory the
    walk opened; read-only directories get their mode after their files are in."""
    from hermetic_build.tree import MissingBlob

    src = tmp_path / "a"
    _make(src)
    for d in range(5):
        (src / f"d{d}" / "sub").mkdir(parents=True)
        for i in range(40):
            (src / f"d{d}" / f"f{i}").write_bytes(os.urandom(100 + i))
            (src / f"d{d}" / "sub" / f"g{i}").write_bytes(b"g" * i)
    os.chmod(src / "d3" / "sub", 0o555)
    store = LocalStore(tmp_path / "c")
    digest = store_tree(store, src)
    for threads in (1, 8):
        materialize_tree(store, digest, tmp_path / f"t{threads}", threads=threads)
        assert store_tree(store, tmp_path / f"t{threads}") == digest
    assert os.stat(tmp_path / "t8" / "d3" / "sub").st_mode & 0o777 == 0o555
    blob = next(e.digest for p, e in walk_tree(store, digest) if p == "d2/f7")
    os.chmod(store.blob_path(blob), 0o644)
    os.unlink(store.blob_path(blob))
    with pytest.raises(MissingBlob):
        materialize_tree(store, digest, tmp_path / "missing", threads=8)


_PARSE_DIRECTORY = r"""
import resource, sys, tempfile
from hermetic_build.store.local import LocalStore
from hermetic_build.tree import InvalidTree, read_directory
store = LocalStore(tempfile.mkdtemp(dir=sys.argv[1]))
digest = store.put_blob(b"[" + b"[]," * ((64 << 20) // 3 - 2) + b"[]]")  # just under MAX_DIRECTORY_BYTES
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
try:
    read_directory(store, digest)
except InvalidTree as exc:
    print(exc.why)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10) - before)
"""


def test_a_directory_blob_of_empty_lists_is_refused_before_it_is_parsed(tmp_path):
    """A directory blob within MAX_DIRECTORY_BYTES (a remote cache's result may name one) of `[[],...]`:
    json.loads made 22 million lists, 1.5 GiB of hb's memory and 10 s, before the schema refused it. Its
    values are counted on the bytes first (load_json, boundedjson) and it is refused unparsed (memory
    measured in a fresh process)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _PARSE_DIRECTORY, str(tmp_path)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    why, grown_mib = done.stdout.strip().splitlines()
    assert why.startswith("up to 44,739,") and "JSON values, more than the 5,000,016" in why
    assert int(grown_mib) < 100


def test_a_directory_of_as_many_entries_as_a_tree_may_have_decodes():
    """The bound on a directory's values leaves room for MAX_TREE_ENTRIES entries in one directory (links:
    file entries, with their digests, reach MAX_DIRECTORY_BYTES first)."""
    from hermetic_build.tree import MAX_TREE_ENTRIES, TreeEntry

    entries = [TreeEntry(f"{i:07d}", "symlink", None, 0o777, "t") for i in range(MAX_TREE_ENTRIES)]
    entries[-1] = TreeEntry(entries[-1].name, "file", digest_bytes(b""), 0o644)
    assert len(decode_directory(encode_directory(entries))) == MAX_TREE_ENTRIES
    with pytest.raises(InvalidEntry, match="JSON values"):
        decode_directory(encode_directory([*entries, TreeEntry("x,,,,,,,,,,,,,,,,,", "symlink", None, 0o777, "t")]))
