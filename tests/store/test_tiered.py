"""The tiered store, with another local directory standing in as the remote peer."""

import os

from hermetic_build.digest import digest_bytes
from hermetic_build.store.base import ActionResult, OutputEntry
from hermetic_build.store.local import LocalStore
from hermetic_build.store.tiered import TieredStore


def _stores(tmp_path, upload=True):
    local, remote = LocalStore(tmp_path / "local"), LocalStore(tmp_path / "remote")
    return local, remote, TieredStore(local, remote, upload=upload)


def test_writes_go_to_both_when_uploading(tmp_path):
    local, remote, tiered = _stores(tmp_path)
    d = tiered.put_blob(b"x")
    f = tmp_path / "f"
    f.write_bytes(b"file content")
    d2 = tiered.put_file(f)
    result = ActionResult((OutputEntry("o", "file", d),))
    tiered.put_action_result("ab" * 32, result)
    for store in (local, remote):
        assert store.get_blob(d) == b"x" and store.get_blob(d2) == b"file content"
        assert store.get_action_result("ab" * 32) == result


def test_read_only_remote_is_not_written(tmp_path):
    local, remote, tiered = _stores(tmp_path, upload=False)
    d = tiered.put_blob(b"x")
    assert local.has_blob(d) and not remote.has_blob(d)


def test_remote_hits_are_written_locally(tmp_path):
    local, remote, tiered = _stores(tmp_path)
    d = remote.put_blob(b"from remote")
    result = ActionResult((OutputEntry("o", "file", d),))
    remote.put_action_result("cd" * 32, result)
    assert tiered.get_action_result("cd" * 32) == result
    assert local.get_action_result("cd" * 32) == result
    dest = tmp_path / "dest"
    assert tiered.fetch_file(d, dest) and dest.read_bytes() == b"from remote"
    assert local.get_blob(d) == b"from remote"


def test_corrupt_remote_blob_is_a_miss(tmp_path):
    local, remote, tiered = _stores(tmp_path)
    d = remote.put_blob(b"good")
    os.chmod(remote.blob_path(d), 0o644)
    remote.blob_path(d).write_bytes(b"evil")
    assert tiered.get_blob(d) is None and not local.has_blob(d)
    assert not tiered.fetch_file(d, tmp_path / "dest")
    assert not local.has_blob(digest_bytes(b"evil"))


def test_open_blob_brings_a_remote_blob_local_and_refuses_a_corrupt_one(tmp_path):
    local, remote, tiered = _stores(tmp_path)
    d = remote.put_blob(b"streamed from remote")
    with tiered.open_blob(d) as reader:
        assert reader.read() == b"streamed from remote"
    assert local.get_blob(d) == b"streamed from remote"
    bad = remote.put_blob(b"good")
    os.chmod(remote.blob_path(bad), 0o644)
    remote.blob_path(bad).write_bytes(b"evil")
    assert tiered.open_blob(bad) is None and not local.has_blob(bad)
    assert tiered.open_blob(digest_bytes(b"nowhere")) is None


def test_a_new_file_is_written_from_a_remote_blob(tmp_path):
    local, remote, tiered = _stores(tmp_path)
    d = remote.put_blob(b"only the remote has it")
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert tiered.fetch_new_file(d, "f", fd, 0o644)
        assert not tiered.fetch_new_file(digest_bytes(b"nowhere"), "g", fd, 0o644)
    finally:
        os.close(fd)
    assert (out / "f").read_bytes() == b"only the remote has it" and local.has_blob(d)
    assert sorted(os.listdir(out)) == ["f"]
