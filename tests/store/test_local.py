import os
import threading

from hermetic_build.digest import digest_bytes
from hermetic_build.store.base import ActionResult, OutputEntry
from hermetic_build.store.local import LocalStore


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
