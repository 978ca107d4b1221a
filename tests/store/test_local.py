import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hermetic_build.digest import digest_bytes
from hermetic_build.errors import UsageError
from hermetic_build.store.base import ActionResult, OutputEntry
from hermetic_build.store.local import CACHEDIR_TAG, MARKER, LocalStore
from hermetic_build.store.remote import Signer

sys.path.insert(0, str(Path(__file__).parent.parent / "adversarial"))
from payloads_stores import MALFORMED_NAMES, SCHEMA_VALID, malformed_results


def test_put_get_roundtrip(tmp_path):
    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"hello")
    assert d == digest_bytes(b"hello")
    assert store.has_blob(d)
    assert store.get_blob(d) == b"hello"
    assert oct(os.stat(store.blob_path(d)).st_mode & 0o777) == "0o444"


def test_corrupt_blob_is_removed_not_served(tmp_path):
    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"good content")
    path = store.blob_path(d)
    os.chmod(path, 0o644)
    path.write_bytes(b"evil content")  # same size, different bytes
    assert store.get_blob(d) is None
    assert not path.exists()
    assert d in store.corrupt_removed


@pytest.mark.parametrize("stored", [b"good content and more", b"good", b""])
def test_blob_of_another_size_is_removed_not_served(tmp_path, stored):
    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"good content")
    path = store.blob_path(d)
    os.chmod(path, 0o644)
    path.write_bytes(stored)  # longer, shorter, empty: never read as the blob, removed
    assert store.get_blob(d) is None
    assert not path.exists() and d in store.corrupt_removed
    assert store.get_blob(store.put_blob(b"")) == b""  # the empty blob itself is fine


def test_fetch_file_verifies(tmp_path):
    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"payload")
    dest = tmp_path / "out"
    assert store.fetch_file(d, dest) and dest.read_bytes() == b"payload"
    os.chmod(store.blob_path(d), 0o644)
    store.blob_path(d).write_bytes(b"paYload")
    dest2 = tmp_path / "out2"
    assert not store.fetch_file(d, dest2)
    assert not dest2.exists() and not store.blob_path(d).exists()


def test_truncated_blob_is_a_miss(tmp_path):
    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"0123456789")
    os.chmod(store.blob_path(d), 0o644)
    store.blob_path(d).write_bytes(b"01234")
    assert not store.has_blob(d)


def test_put_file_move_and_copy(tmp_path):
    store = LocalStore(tmp_path / "c")
    src = tmp_path / "f"
    src.write_bytes(b"x" * 100000)
    d = store.put_file(src)
    assert src.exists() and store.get_blob(d) == b"x" * 100000
    d2 = store.put_file(src, move=True)
    assert d2 == d and not src.exists()


def test_action_cache_roundtrip_and_garbage(tmp_path):
    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"o")
    result = ActionResult((OutputEntry("hb-out/x/y", "file", d, True),), 0, d, d, {"m": 1})
    store.put_action_result("ab" * 32, result)
    assert store.get_action_result("ab" * 32) == result
    store._ac_path("cd" * 32).parent.mkdir(parents=True, exist_ok=True)
    store._ac_path("cd" * 32).write_bytes(b"{not json")
    assert store.get_action_result("cd" * 32) is None


def test_concurrent_writers_of_one_blob(tmp_path):
    store = LocalStore(tmp_path / "c")
    data = os.urandom(1 << 20)
    results = []
    threads = [threading.Thread(target=lambda: results.append(store.put_blob(data))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and store.get_blob(results[0]) == data
    assert list(store.tmp_dir.iterdir()) == []


def test_gc_removes_least_recently_used(tmp_path):
    store = LocalStore(tmp_path / "c")
    digests = []
    for i in range(10):
        d = store.put_blob(bytes([i]) * 1000)
        os.utime(store.blob_path(d), (1000 + i, 1000 + i))
        digests.append(d)
    result = store.gc(max_size=5000)
    assert result["removed"] == 5
    assert [store.has_blob(d) for d in digests] == [False] * 5 + [True] * 5


# ----- malformed action-cache entries: a miss, removed and counted -----------------------------------





def _good(store):
    d = store.put_blob(b"o")
    return ActionResult((OutputEntry("hb-out/p/t/x.txt", "file", d, False),), 0, d, d, {"mnemonic": "Genrule"})


@pytest.mark.parametrize("name", sorted(set(MALFORMED_NAMES) - set(SCHEMA_VALID)))
def test_malformed_entry_is_a_miss_removed_and_counted(tmp_path, name):
    store = LocalStore(tmp_path / "c")
    good = _good(store)
    key = "ab" * 32
    store.put_action_result(key, good)
    payload = malformed_results(json.loads(good.encode()))[name]
    path = store._ac_path(key)
    os.chmod(path, 0o644)
    path.write_bytes(payload)
    assert store.get_action_result(key) is None
    assert not path.exists()
    assert [k for k, _ in store.rejected_entries] == [key]


def test_an_entry_that_is_not_a_regular_file_is_a_miss(tmp_path):
    store = LocalStore(tmp_path / "c")
    fifo, link = store._ac_path("ab" * 32), store._ac_path("cd" * 32)
    os.mkfifo(fifo)  # reading it would block forever
    os.symlink("/etc/hostname", link)
    assert store.get_action_result("ab" * 32) is None
    assert store.get_action_result("cd" * 32) is None
    assert not os.path.lexists(fifo) and not os.path.lexists(link)
    assert len(store.rejected_entries) == 2


def test_signer_rejects_malformed_envelopes_without_raising(tmp_path):
    store = LocalStore(tmp_path / "c")
    good = json.loads(_good(store).encode())
    key = "ab" * 32
    for name, payload in malformed_results(good).items():
        for data in (payload, b'{"key":"' + key.encode() + b'","result":' + payload + b"}"):
            result, why = Signer(None).open(key, data)
            if name in SCHEMA_VALID and data is not payload:
                continue
            assert result is None and why, name
    assert Signer(None).open(key, json.dumps({"key": key, "result": good}).encode())[0] is not None


# ----- the cache directory: a marker, and only what hb made is deleted --------------------------------
def test_a_new_or_empty_directory_gets_the_markers(tmp_path):
    for root in (tmp_path / "new", tmp_path / "empty"):
        if root.name == "empty":
            root.mkdir()
        LocalStore(root)
        assert json.loads((root / MARKER).read_text()) == {"layout": 1}
        assert (root / CACHEDIR_TAG).read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_a_directory_with_other_files_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    (tmp_path / "mine" / "tmp").mkdir()
    with pytest.raises(UsageError, match=r"HB_CACHE_DIR=.*mine is not an hb cache \(no hb-cache.json\); "
                                         r"point it at an empty or new directory"):
        LocalStore(tmp_path / "mine", setting=f"HB_CACHE_DIR={tmp_path / 'mine'}")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex", "tmp"]


def test_a_cache_from_before_the_marker_is_adopted(tmp_path):
    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"kept")
    (tmp_path / "c" / MARKER).unlink()
    (tmp_path / "c" / CACHEDIR_TAG).unlink()
    assert (tmp_path / "c" / ".layout-v1").exists()
    again = LocalStore(tmp_path / "c")
    assert again.get_blob(d) == b"kept" and (tmp_path / "c" / MARKER).exists()


@pytest.mark.parametrize("kind", ["file", "proc", "marker-garbage", "newer-layout"])
def test_unusable_cache_directories_are_clean_errors(tmp_path, kind):
    root = {"file": tmp_path / "f", "proc": Path("/proc/x")}.get(kind, tmp_path / "c")
    if kind == "file":
        root.write_text("x")
    elif kind == "marker-garbage":
        LocalStore(root)
        (root / MARKER).write_text("[[[[")
    elif kind == "newer-layout":
        LocalStore(root)
        (root / MARKER).write_text('{"layout": 2}')
    with pytest.raises(UsageError) as info:
        LocalStore(root, setting=f"HB_CACHE_DIR={root}")
    assert f"HB_CACHE_DIR={root}" in info.value.message


def test_expunge_deletes_only_what_hb_made(tmp_path):
    store = LocalStore(tmp_path / "c")
    store.put_blob(b"x")
    (tmp_path / "c" / "workspaces" / "w1").mkdir(parents=True)
    (tmp_path / "c" / "notes.txt").write_text("mine")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    os.rmdir(tmp_path / "c" / "tmp")
    os.symlink(outside, tmp_path / "c" / "tmp")  # a link where hb's tmp/ was: removed, not followed
    assert store.expunge() == ["notes.txt"]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["notes.txt"]
    assert (outside / "keep").read_text() == "keep"
    (tmp_path / "c" / "notes.txt").unlink()
    LocalStore(tmp_path / "c").expunge()
    assert not (tmp_path / "c").exists()


def test_gc_and_expunge_refuse_a_directory_that_lost_its_marker(tmp_path):
    store = LocalStore(tmp_path / "c")
    (tmp_path / "c" / MARKER).unlink()
    with pytest.raises(UsageError, match="not an hb cache"):
        store.gc(0)
    with pytest.raises(UsageError, match="not an hb cache"):
        store.expunge()
    assert (tmp_path / "c" / "cas").is_dir()


# ----- leftovers of killed processes ---------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_gc_and_sweep_remove_only_hb_temp_names_of_dead_processes(tmp_path):
    store = LocalStore(tmp_path / "c")
    dead, alive = _dead_pid(), os.getppid()
    tmp = store.tmp_dir
    (tmp / f"sb-{dead}-abc123").mkdir()
    (tmp / f"sb-{dead}-abc123" / "execroot").mkdir()
    (tmp / f"w-{dead}-x1y2z3").write_text("partial")
    (tmp / f"sb-{alive}-live12").mkdir()
    (tmp / "user-file").write_text("not hb's")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    os.symlink(victim, tmp / f"sb-{dead}-link12")  # a link with hb's name: unlinked, never followed
    assert store.sweep_leftovers() == 3
    assert sorted(p.name for p in tmp.iterdir()) == [f"sb-{alive}-live12", "user-file"]
    assert (victim / "keep").exists()
    (tmp / "w-oldstyle").write_text("from hb before PIDs in names")
    store.gc(1 << 30)
    assert sorted(p.name for p in tmp.iterdir()) == [f"sb-{alive}-live12", "user-file"]


def _eviction_stamps(store):
    from hermetic_build.noop import stamp

    return [stamp(p, follow=False) for p in store.eviction_signals()]


def test_deleting_entries_replaces_the_eviction_signal(tmp_path):
    """gc, a corrupt blob and a rejected entry each change what the no-op record stats (noop.py)."""
    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"x" * 100)
    store.put_action_result("ab" * 32, ActionResult((OutputEntry("o", "file", d),), 0, d, d, {}))
    before = _eviction_stamps(store)
    store.put_blob(b"another")  # writing does not signal
    assert _eviction_stamps(store) == before
    store.reject_action_result("ab" * 32, "test")
    after_reject = _eviction_stamps(store)
    assert after_reject != before
    path = store.blob_path(d)
    os.chmod(path, 0o644)
    path.write_bytes(b"y" * 100)
    assert store.get_blob(d) is None
    after_corrupt = _eviction_stamps(store)
    assert after_corrupt != after_reject
    assert store.gc(max_size=0)["removed"] >= 1
    assert _eviction_stamps(store) != after_corrupt


def test_action_cache_hit_refreshes_mtime_only_when_old(tmp_path):
    from hermetic_build.store.local import TOUCH_AFTER_S

    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"out")
    key = "cd" * 32
    store.put_action_result(key, ActionResult((OutputEntry("o", "file", d),), 0, d, d, {}))
    path = store.ac_dir / key[:2] / key
    recent = os.stat(path).st_mtime_ns
    assert store.get_action_result(key) is not None
    assert os.stat(path).st_mtime_ns == recent  # a fresh entry is not written to on a hit
    old = int(os.stat(path).st_mtime) - TOUCH_AFTER_S - 10
    os.utime(path, (old, old))
    assert store.get_action_result(key) is not None
    assert os.stat(path).st_mtime > old + TOUCH_AFTER_S  # an old one is marked used for gc's LRU order


def test_open_blob_streams_verified_content(tmp_path):
    from hermetic_build.api import MissingBlob

    store = LocalStore(tmp_path / "c")
    data = bytes(range(256)) * 10000
    d = store.put_blob(data)
    with store.open_blob(d) as reader:
        buf = bytearray(len(data))
        assert reader.readinto(memoryview(buf)[:1000]) == 1000
        assert reader.readinto(memoryview(buf)[1000:]) == len(data) - 1000
        assert bytes(buf) == data and reader.read(1) == b""
    assert store.open_blob(digest_bytes(b"absent")) is None
    path = store.blob_path(d)
    path.chmod(0o644)
    path.write_bytes(data[:-1] + b"\x00")  # same size, other content
    with store.open_blob(d) as reader, pytest.raises(MissingBlob):
        reader.read()
    assert not store.has_blob(d)
    e = store.put_blob(b"short")
    store.blob_path(e).chmod(0o644)
    store.blob_path(e).write_bytes(b"longer than that")
    assert store.open_blob(e) is None and not store.has_blob(e)


def test_a_blob_this_process_stored_is_copied_out_without_a_second_hash(tmp_path, monkeypatch):
    """A blob hashed on its way in and unchanged since (same inode, size, mtime, ctime) is copied in
    the kernel; verification is not repeated for it."""
    import hermetic_build.store.local as local

    store = LocalStore(tmp_path / "c")
    data = os.urandom(3 << 20)
    d = store.put_blob(data)
    hashed = []
    real = local.blake3
    monkeypatch.setattr(local, "blake3", lambda *a, **k: hashed.append(1) or real(*a, **k))
    assert store.fetch_file(d, tmp_path / "out", mode=0o640)
    assert (tmp_path / "out").read_bytes() == data
    assert oct((tmp_path / "out").stat().st_mode & 0o777) == "0o640"
    assert hashed == []
    # another store object (another process) has not hashed it: it verifies
    assert LocalStore(tmp_path / "c").fetch_file(d, tmp_path / "out2")
    assert hashed == [1]


def test_a_fresh_blob_changed_in_place_is_verified_and_removed(tmp_path):
    """Changing a blob's bytes after it was stored (its mtime/ctime change) ends the trust: the read
    verifies, finds the change and removes the blob, as for any corrupt blob."""
    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"good content")
    path = store.blob_path(d)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"evil")
    assert not store.fetch_file(d, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not path.exists()
    assert d in store.corrupt_removed


def test_an_upload_gets_the_sha256_of_the_blob_never_of_changed_bytes(tmp_path):
    """sha256_verified (what the registry and REAPI caches and remote execution upload by): the blob's
    SHA-256, read once for both hashes; a blob whose bytes changed is removed and reported missing."""
    import hashlib

    from hermetic_build.tree import MissingBlob

    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"good content")
    assert store.sha256_verified(d) == hashlib.sha256(b"good content").hexdigest()
    os.chmod(store.blob_path(d), 0o644)
    with open(store.blob_path(d), "r+b") as f:
        f.write(b"evil")
    with pytest.raises(MissingBlob):
        LocalStore(tmp_path / "c").sha256_verified(d)
    assert not store.blob_path(d).exists()
    with pytest.raises(MissingBlob):  # and gone
        store.sha256_verified(d)


def test_deferred_durability_writes_without_fsync_and_syncs_once(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "c")
    fsyncs, syncs = [], []
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))
    real_syncfs = store._syncfs
    monkeypatch.setattr(store, "_syncfs", lambda: syncs.append(1) or real_syncfs())
    with store.deferred_durability():
        pass
    assert syncs == []  # nothing written: no syncfs (a no-op build stays cheap)
    with store.deferred_durability():
        d = store.put_blob(b"out")
        (tmp_path / "f").write_bytes(b"file")
        store.put_file(tmp_path / "f")
        store.put_action_result("ab" * 32, ActionResult((OutputEntry("o", "file", d),)))
        store.flush()  # a tree stored inside the block: its syncfs is the block's
        assert fsyncs == [] and syncs == []
    assert fsyncs == [] and syncs == [1]
    assert store.get_action_result("ab" * 32).outputs[0].digest == d
    store.put_blob(b"outside")  # outside the block every write is fsynced, as before
    assert len(fsyncs) == 1


def test_entries_get_their_modes_under_any_umask(tmp_path):
    """Files are created with their final mode where the umask keeps it (no chmod), else chmod-ed:
    blobs 0444 and action-cache entries 0644 either way."""
    import hermetic_build.store.local as local

    for umask in (0o022, 0o077):
        old = os.umask(umask)
        saved = local._UMASK
        local._UMASK = umask
        try:
            store = LocalStore(tmp_path / f"c{umask:o}")
            blob = store.put_blob(b"blob under umask %o" % umask)
            copied = store.put_file(_write(tmp_path / f"f{umask:o}", b"copied under umask %o" % umask))
            key = "ab" * 32
            store.put_action_result(key, ActionResult((OutputEntry("o", "file", blob),)))
        finally:
            local._UMASK = saved
            os.umask(old)
        assert os.stat(store.blob_path(blob)).st_mode & 0o777 == 0o444
        assert os.stat(store.blob_path(copied)).st_mode & 0o777 == 0o444
        assert os.stat(store._ac_path(key)).st_mode & 0o777 == 0o644
        assert store.get_action_result(key).outputs[0].digest == blob
        assert not [n for n in os.listdir(store.tmp_dir)], "no temp file is left behind"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_fetch_new_file_creates_only_new_files(tmp_path):
    store = LocalStore(tmp_path / "c")
    d = store.put_blob(b"new file content")
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert store.fetch_new_file(d, "a", fd, 0o755)
        assert (out / "a").read_bytes() == b"new file content"
        assert os.stat(out / "a").st_mode & 0o7777 == 0o755
        with pytest.raises(FileExistsError):  # never replaces, never writes through a link
            store.fetch_new_file(d, "a", fd, 0o644)
        victim = tmp_path / "victim"
        victim.write_bytes(b"keep")
        os.symlink(victim, out / "link")
        with pytest.raises(FileExistsError):
            store.fetch_new_file(d, "link", fd, 0o644)
        assert victim.read_bytes() == b"keep"
        with pytest.raises(ValueError):
            store.fetch_new_file(d, "../escape", fd, 0o644)
        # a blob this process did not hash (another process's) is verified as it is copied
        other = LocalStore(tmp_path / "c")
        assert other.fetch_new_file(d, "b", fd, 0o644) and (out / "b").read_bytes() == b"new file content"
        os.chmod(store.blob_path(d), 0o644)
        store.blob_path(d).write_bytes(b"NEW file content")
        third = LocalStore(tmp_path / "c")
        assert not third.fetch_new_file(d, "c", fd, 0o644)
        assert not (out / "c").exists() and not store.blob_path(d).exists(), "a corrupt blob leaves no file"
        missing = digest_bytes(b"never stored")
        assert not store.fetch_new_file(missing, "d", fd, 0o644) and not (out / "d").exists()
    finally:
        os.close(fd)


def test_deferred_durability_in_background_syncs_on_another_thread_and_is_waited_for(tmp_path, monkeypatch):
    import threading

    store = LocalStore(tmp_path / "c")
    release, syncs = threading.Event(), []

    def slow_syncfs():
        assert release.wait(10)
        syncs.append(threading.current_thread().name)

    monkeypatch.setattr(store, "_syncfs", slow_syncfs)
    with store.deferred_durability(background=True):
        store.put_blob(b"out")
    assert syncs == []  # the block ended without waiting for its syncfs
    release.set()
    store.wait_for_durability()
    assert syncs == ["hb-syncfs"]
    store.wait_for_durability()  # nothing left to wait for
    assert syncs == ["hb-syncfs"]


def test_a_failed_background_syncfs_is_raised_by_wait_for_durability(tmp_path, monkeypatch):
    store = LocalStore(tmp_path / "c")

    def failing_syncfs():
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store, "_syncfs", failing_syncfs)
    with store.deferred_durability(background=True):
        store.put_blob(b"out")
    with pytest.raises(OSError, match="Input/output error"):
        store.wait_for_durability()


def test_put_hashed_copies_an_open_file_in_as_the_digest_it_was_hashed_to(tmp_path):
    """store_tree_in_place hashes a file once and copies it in from the same descriptor: the blob has
    the bytes (checked by a store of another process, which trusts nothing it did not hash itself)."""
    src = tmp_path / "f"
    src.write_bytes(b"hashed once" * 10_000)
    digest = digest_bytes(src.read_bytes())
    store = LocalStore(tmp_path / "c")
    with open(src, "rb") as f:
        store.put_hashed(f.fileno(), digest)
    assert os.stat(store.blob_path(digest)).st_mode & 0o777 == 0o444
    assert LocalStore(tmp_path / "c").get_blob(digest) == src.read_bytes()
    assert os.listdir(store.tmp_dir) == []


def test_a_cache_another_process_claims_meanwhile_is_taken(tmp_path, monkeypatch):
    """Jobs starting at once on a new cache: one sees no marker, and before it lists the directory
    another has written the marker and made cas/, ac/, tmp/. That is an hb cache, not someone's files
    (3 of 400 processes, started four at a time on a new directory, failed with "is not an hb cache")."""
    import hermetic_build.store.local as local

    root = tmp_path / "c"
    d = LocalStore(root).put_blob(b"theirs")  # the other process: marker written, making the shards
    (root / ".layout-v1").unlink()  # (written once all 512 shards exist)
    lexists = os.path.lexists
    monkeypatch.setattr(local.os.path, "lexists",
                        lambda p: False if Path(p) == root / MARKER else lexists(p))  # as it was when we looked
    assert LocalStore(root).get_blob(d) == b"theirs"
