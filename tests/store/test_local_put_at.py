"""LocalStore.put_at: storing a file by name relative to a directory descriptor, never following a
link, moving only an inode that has no other name."""

from __future__ import annotations

import os
import stat

import pytest

from hermetic_build.anchored import RefusedPath
from hermetic_build.digest import digest_bytes
from hermetic_build.store.local import LocalStore
from hermetic_build.store.tiered import TieredStore


@pytest.fixture
def setup(tmp_path):
    store = LocalStore(tmp_path / "c")
    work = tmp_path / "c/tmp/sb-test"  # like a sandbox: on the CAS's filesystem
    work.mkdir()
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    yield store, work, fd
    os.close(fd)


def test_put_at_moves_the_file(setup):
    store, work, fd = setup
    (work / "f").write_bytes(b"content")
    inode = os.stat(work / "f").st_ino
    digest = store.put_at(fd, "f", move=True)
    assert digest == digest_bytes(b"content")
    assert not (work / "f").exists()
    assert os.stat(store.blob_path(digest)).st_ino == inode  # renamed, not copied
    assert stat.S_IMODE(os.stat(store.blob_path(digest)).st_mode) == 0o444


def test_put_at_copies_without_move(setup):
    store, work, fd = setup
    (work / "f").write_bytes(b"kept")
    digest = store.put_at(fd, "f")
    assert (work / "f").read_bytes() == b"kept" and store.get_blob(digest) == b"kept"


def test_put_at_refuses_a_link(setup, tmp_path):
    store, work, fd = setup
    (tmp_path / "victim").write_bytes(b"victim")
    os.symlink(tmp_path / "victim", work / "l")
    with pytest.raises(RefusedPath, match="is a symbolic link"):
        store.put_at(fd, "l", move=True)
    assert (tmp_path / "victim").read_bytes() == b"victim"
    assert not store.has_blob(digest_bytes(b"victim"))


def test_put_at_copies_a_hard_linked_file_and_leaves_its_other_name_alone(setup, tmp_path):
    store, work, fd = setup
    (tmp_path / "victim").write_bytes(b"victim")
    os.chmod(tmp_path / "victim", 0o644)
    os.link(tmp_path / "victim", work / "h")
    digest = store.put_at(fd, "h", move=True)
    assert os.stat(store.blob_path(digest)).st_ino != os.stat(tmp_path / "victim").st_ino
    assert stat.S_IMODE(os.stat(tmp_path / "victim").st_mode) == 0o644
    assert (tmp_path / "victim").read_bytes() == b"victim"
    assert not (work / "h").exists()


def test_tiered_put_at_uploads(setup, tmp_path):
    store, work, fd = setup
    remote = LocalStore(tmp_path / "remote")
    (work / "f").write_bytes(b"shared")
    digest = TieredStore(store, remote).put_at(fd, "f", move=True)
    assert remote.get_blob(digest) == b"shared" and store.get_blob(digest) == b"shared"


def _noted(path):
    from hermetic_build.store.local import file_identity

    return file_identity(os.stat(path)), digest_bytes(path.read_bytes())


def test_put_at_takes_the_known_digest_of_an_unchanged_file_without_reading_it(setup, monkeypatch):
    store, work, fd = setup
    (work / "f").write_bytes(b"written and hashed by hb")
    known = _noted(work / "f")

    def no_hashing(*_args, **_kwargs):
        raise AssertionError("the file was hashed again")

    monkeypatch.setattr("hermetic_build.store.local.blake3", no_hashing)
    digest = store.put_at(fd, "f", move=True, known=known)
    assert digest == known[1]
    assert store.blob_path(digest).read_bytes() == b"written and hashed by hb" and not (work / "f").exists()


@pytest.mark.parametrize("change", ["rewritten", "replaced"])
def test_put_at_hashes_a_file_changed_since_its_digest_was_noted(setup, change):
    store, work, fd = setup
    (work / "f").write_bytes(b"what was hashed")
    known = _noted(work / "f")
    if change == "rewritten":  # another size: the identity differs whatever the clock's granularity
        (work / "f").write_bytes(b"what is there now")
    else:  # another inode in its place
        (work / "g").write_bytes(b"what is hashed!")
        os.replace(work / "g", work / "f")
    digest = store.put_at(fd, "f", move=True, known=known)
    assert digest != known[1] and digest == digest_bytes(store.blob_path(digest).read_bytes())
    assert not store.has_blob(known[1])


def test_put_at_ignores_a_known_digest_when_copying(setup, monkeypatch):
    store, work, fd = setup
    (work / "f").write_bytes(b"kept in place")
    known = (_noted(work / "f")[0], digest_bytes(b"something else"))
    digest = store.put_at(fd, "f", known=known)  # not a move: the file is read (and stays)
    assert digest == digest_bytes(b"kept in place") and (work / "f").exists()


def test_put_at_drops_a_copy_of_a_blob_this_process_stored_and_keeps_that_blob(setup):
    store, work, fd = setup
    digest = store.put_blob(b"a layer blob", fsync=False)  # hashed by this process as it went in
    stored = os.stat(store.blob_path(digest))
    (work / "copy").write_bytes(b"a layer blob")  # e.g. the same blob placed in an image layout
    assert store.put_at(fd, "copy", move=True, known=_noted(work / "copy")) == digest
    assert not (work / "copy").exists()
    assert os.stat(store.blob_path(digest)).st_ino == stored.st_ino  # not replaced by the copy
    assert store.get_blob(digest) == b"a layer blob"


def test_put_at_replaces_a_blob_this_process_did_not_store(setup, tmp_path):
    store, work, fd = setup
    digest = store.put_blob(b"stored earlier", fsync=False)
    other = LocalStore(tmp_path / "c")  # another process's view: the blob is not fresh to it
    (work / "f").write_bytes(b"stored earlier")
    inode = os.stat(work / "f").st_ino
    assert other.put_at(fd, "f", move=True) == digest
    assert os.stat(other.blob_path(digest)).st_ino == inode  # renamed over it, as before
