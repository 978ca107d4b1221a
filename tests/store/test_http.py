"""HttpStore against a real nginx with WebDAV (Bazel's HTTP cache layout)."""

import pytest

from hermetic_build.digest import digest_bytes
from hermetic_build.store.base import ActionResult, OutputEntry
from hermetic_build.store.http import HttpStore
from hermetic_build.store.remote import RemoteAuthError, RemoteUnavailable, Signer
from support import NginxCache, free_port


@pytest.fixture
def cache_server(tmp_path):
    server = NginxCache(tmp_path / "nginx")
    yield server
    server.stop()


def test_blob_and_action_cache_roundtrip(cache_server, tmp_path):
    store = HttpStore(cache_server.url, signer=Signer(b"team-key"))
    d = store.put_blob(b"hello")
    assert store.has_blob(d) and store.get_blob(d) == b"hello"
    assert not store.has_blob(digest_bytes(b"other"))
    f = tmp_path / "big"
    f.write_bytes(b"x" * 3_000_000)
    d2 = store.put_file(f)
    assert store.fetch_file(d2, tmp_path / "copy") and (tmp_path / "copy").read_bytes() == f.read_bytes()
    result = ActionResult((OutputEntry("o", "file", d),), 0, d, d)
    store.put_action_result("ab" * 32, result)
    assert store.get_action_result("ab" * 32) == result
    assert store.get_action_result("cd" * 32) is None
    assert store.stats.bytes_up >= 3_000_005 and store.stats.ac_hits == 1


def test_server_side_corruption_is_rejected(cache_server, tmp_path):
    store = HttpStore(cache_server.url, signer=Signer(None))
    d = store.put_blob(b"genuine")
    (cache_server.root / "cas" / d.hash).write_bytes(b"forgery")
    assert store.get_blob(d) is None
    assert not store.fetch_file(d, tmp_path / "x") and not (tmp_path / "x").exists()
    assert store.stats.rejected_blobs == 2


def test_signatures(cache_server):
    d = digest_bytes(b"o")
    result = ActionResult((OutputEntry("o", "file", d),))
    unsigned = HttpStore(cache_server.url, signer=Signer(None))
    signed = HttpStore(cache_server.url, signer=Signer(b"team-key"))
    other_key = HttpStore(cache_server.url, signer=Signer(b"not-the-key"))
    unsigned.put_action_result("11" * 32, result)
    other_key.put_action_result("22" * 32, result)
    signed.put_action_result("33" * 32, result)
    assert signed.get_action_result("11" * 32) is None
    assert signed.get_action_result("22" * 32) is None
    assert signed.get_action_result("33" * 32) == result
    assert signed.stats.rejected_entries == 2
    # a signed entry copied under another key is not accepted either
    data = (cache_server.root / "ac" / ("33" * 32)).read_bytes()
    (cache_server.root / "ac" / ("44" * 32)).write_bytes(data)
    assert signed.get_action_result("44" * 32) is None


def test_unreachable_and_forbidden(tmp_path):
    with pytest.raises(RemoteUnavailable):
        HttpStore(f"http://127.0.0.1:{free_port()}", signer=Signer(None), timeout=2).has_blob(digest_bytes(b"x"))
    ro = NginxCache(tmp_path / "ro", mode="ro")
    try:
        with pytest.raises(RemoteAuthError, match="403"):
            HttpStore(ro.url, signer=Signer(None)).put_blob(b"x")
    finally:
        ro.stop()
    auth = NginxCache(tmp_path / "auth", mode="auth")
    try:
        with pytest.raises(RemoteAuthError, match="401"):
            HttpStore(auth.url, signer=Signer(None), user="hb", password="wrong").put_blob(b"x")
        ok = HttpStore(auth.url, signer=Signer(None), user=NginxCache.USER, password=NginxCache.PASSWORD)
        assert ok.get_blob(ok.put_blob(b"x")) == b"x"
    finally:
        auth.stop()
