"""ReapiStore against a real BuildGrid server (REAPI v2 cache services only), and hb end to end."""

import hashlib
import json
import os
import threading

import pytest

pytest.importorskip("grpc")
pytest.importorskip("buildgrid._protos.build.bazel.remote.execution.v2.remote_execution_pb2")

from support import BuildGridCache, Workspace, free_port, genrule_workspace

from hermetic_build.digest import digest_bytes
from hermetic_build.store.base import ActionResult, OutputEntry
from hermetic_build.store.reapi import ReapiStore, parse_url
from hermetic_build.store.remote import RemoteUnavailable, Signer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = BuildGridCache(tmp_path_factory.mktemp("bgd"), instance="main")
    yield s
    s.stop()


def _store(server, key=b"team-key", **kw) -> ReapiStore:
    return ReapiStore(server.url, signer=Signer(key), timeout=10, **kw)


def test_url_forms():
    assert parse_url("grpc://127.0.0.1:8980") == ("127.0.0.1:8980", False, "")
    assert parse_url("grpcs://cache.example:443/team/hb") == ("cache.example:443", True, "team/hb")
    assert parse_url("grpc://h:1", "from-setting") == ("h:1", False, "from-setting")
    assert parse_url("grpc://h:1/url-wins", "setting") == ("h:1", False, "url-wins")
    with pytest.raises(ValueError):
        parse_url("grpc://h:1/a/blobs/b")


def test_capabilities_and_small_blob_roundtrip(server):
    store = _store(server)
    d = store.put_blob(b"hello")
    assert store.batch_limit > 1 << 20  # BuildGrid's max batch total size, less room for the request
    assert store.has_blob(d) and store.get_blob(d) == b"hello"
    assert store.stats.blobs_up == 1 and store.stats.blobs_down == 1
    # a reader that never saw the blob has no SHA-256 for it: a miss, not a wrong answer
    assert not _store(server).has_blob(d)
    assert not store.has_blob(digest_bytes(b"never stored"))


def test_large_blob_goes_through_bytestream(server, tmp_path):
    store = _store(server)
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * (12 * 4096 + 7))  # ~12 MiB: more than a batch
    d = store.put_file(big)
    assert d.size > store.batch_limit
    assert store.has_blob(d)
    assert store.fetch_file(d, tmp_path / "copy") and (tmp_path / "copy").read_bytes() == big.read_bytes()
    assert store.get_blob(d) == big.read_bytes()
    # it is on the server under its sha256, through ByteStream
    sha = hashlib.sha256(big.read_bytes()).hexdigest()
    assert server.blob_path(sha).read_bytes() == big.read_bytes()
    # uploading again costs nothing
    before = store.stats.bytes_up
    store.put_file(big)
    assert store.stats.bytes_up == before


def test_find_missing(server):
    store = _store(server)
    present = [store.put_blob(f"blob {i}".encode()) for i in range(5)]
    absent_known = digest_bytes(b"absent but mapped")
    store._sha256[absent_known.hash] = hashlib.sha256(b"absent but mapped").hexdigest()
    unknown = digest_bytes(b"unknown")
    assert store.find_missing(present + [absent_known, unknown]) == [absent_known, unknown]


def test_action_result_roundtrip_teaches_the_mapping(server, tmp_path):
    writer = _store(server)
    d = writer.put_blob(b"output bytes")
    out = writer.put_blob(b"stdout text")
    result = ActionResult((OutputEntry("o", "file", d, True),), 0, out, None)
    writer.put_action_result("ab" * 32, result)
    reader = _store(server)
    assert reader.get_action_result("cd" * 32) is None
    assert reader.get_action_result("ab" * 32) == result
    # the entry told the reader where the outputs are
    assert reader.get_blob(d) == b"output bytes" and reader.get_blob(out) == b"stdout text"
    assert reader.stats.ac_hits == 1 and reader.stats.ac_misses == 1


def test_a_local_blob_that_changed_is_not_uploaded_as_a_result(server, tmp_path):
    """An action result names blobs of the local CAS that this process did not upload: each is read
    and checked against its BLAKE3 as it is sent; a changed one is removed, reported missing (its
    producer runs again) and no result naming it is written."""
    from hermetic_build.store.local import LocalStore
    from hermetic_build.tree import MissingBlob

    local = LocalStore(tmp_path / "c")
    d = local.put_blob(b"output bytes 2")
    os.chmod(local.blob_path(d), 0o644)
    with open(local.blob_path(d), "r+b") as f:
        f.write(b"OUTPUT")
    writer = _store(server, local=LocalStore(tmp_path / "c"))
    with pytest.raises(MissingBlob):
        writer.put_action_result("ef" * 32, ActionResult((OutputEntry("o", "file", d, False),), 0, None, None))
    assert not local.blob_path(d).exists()
    assert _store(server).get_action_result("ef" * 32) is None


def test_signatures(server):
    d = digest_bytes(b"o")
    result = ActionResult((OutputEntry("o", "file", d),))
    unsigned, other, signed = _store(server, None), _store(server, b"not-the-key"), _store(server)
    for store in (unsigned, other, signed):
        store.put_blob(b"o")
    unsigned.put_action_result("11" * 32, result)
    other.put_action_result("22" * 32, result)
    signed.put_action_result("33" * 32, result)
    reader = _store(server)
    assert reader.get_action_result("11" * 32) is None
    assert reader.get_action_result("22" * 32) is None
    assert reader.get_action_result("33" * 32) == result
    assert reader.stats.rejected_entries == 2 and reader.stats.unsigned_entries == 2


def test_server_side_corruption_is_rejected(server, tmp_path):
    store = _store(server)
    small = store.put_blob(b"genuine content")
    big_data = b"L" * (6 << 20)
    big = store.put_blob(big_data)
    for data in (b"genuine content", big_data):
        path = server.blob_path(hashlib.sha256(data).hexdigest())
        forged = bytearray(path.read_bytes())
        forged[len(forged) // 2] ^= 1
        path.write_bytes(bytes(forged))
    reader = _store(server)
    reader._sha256.update(store._sha256)
    assert reader.get_blob(small) is None and reader.get_blob(big) is None
    assert not reader.fetch_file(small, tmp_path / "x") and not (tmp_path / "x").exists()
    assert not reader.fetch_file(big, tmp_path / "y") and not (tmp_path / "y").exists()
    got = []
    reader.prefetch([small], lambda d, data: got.append(d))  # batched reads are verified too
    assert got == [] and reader.stats.rejected_blobs == 5


def test_unreachable():
    store = ReapiStore(f"grpc://127.0.0.1:{free_port()}", signer=Signer(None), timeout=2)
    with pytest.raises(RemoteUnavailable):
        store.has_blob(digest_bytes(b"x"))


# ----- end to end: hb with --remote-cache grpc://... --------------------------------------------

BUILD = """\
genrule(name = "one", srcs = ["in.txt"], outs = ["one.txt"], cmd = "tr a-z A-Z < $(SRCS) > $(OUTS)")
genrule(name = "two", srcs = [":one"], outs = ["two.txt"], cmd = "rev < $(SRCS) > $(OUTS)")
genrule(name = "tree", srcs = [":two"], outs = ["t.txt"], cmd = "cat $(SRCS) $(SRCS) > $(OUTS)")
"""


def _workspace(root, cache, build=BUILD) -> Workspace:
    return genrule_workspace(root, cache, build)


def _build(ws, url, *extra, check=True):
    return ws.hb("build", "--json", "--remote-cache", url, *extra, "//p:tree", check=check)


def test_second_machine_downloads_instead_of_building(tmp_path, server):
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache")
    first = json.loads(_build(a, server.url, "--remote-upload").stdout)
    assert first["actions"] == {"executed": 3, "cached": 0}
    b = _workspace(tmp_path / "b" / "elsewhere", tmp_path / "b" / "cache")
    second = json.loads(_build(b, server.url).stdout)
    assert second["actions"] == {"executed": 0, "cached": 3}
    assert second["targets"] == first["targets"]
    assert (b.root / "hb-out/p/tree/t.txt").read_bytes() == (a.root / "hb-out/p/tree/t.txt").read_bytes()
    stats = json.loads(b.hb("cache", "stats", "--json").stdout)["last_build"]
    assert stats["remote"]["ac_hits"] == 3 and stats["remote"]["bytes_down"] > 0 and stats["local_hits"] == 0
    assert stats["remote"]["blobs_up"] == 0  # read-only by default
    # the instance can come from hermetic.toml instead of the URL
    c = _workspace(tmp_path / "c" / "ws", tmp_path / "c" / "cache")
    (c.root / "hermetic.toml").write_text(f'remote_instance_name = "{server.instance}"\n')
    third = json.loads(_build(c, f"grpc://127.0.0.1:{server.port}").stdout)
    assert third["actions"] == {"executed": 0, "cached": 3}


def test_altered_blob_is_rejected_and_rebuilt_locally(tmp_path, server):
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache", BUILD.replace("hello", "altered"))
    first = json.loads(_build(a, server.url, "--remote-upload").stdout)
    content = (a.root / "hb-out/p/tree/t.txt").read_bytes()
    path = server.blob_path(hashlib.sha256(content).hexdigest())
    path.write_bytes(b"X" * len(content))
    b = _workspace(tmp_path / "b" / "ws", tmp_path / "b" / "cache", BUILD.replace("hello", "altered"))
    proc = _build(b, server.url)
    assert json.loads(proc.stdout)["actions"]["executed"] >= 1
    assert json.loads(proc.stdout)["targets"] == first["targets"]
    assert (b.root / "hb-out/p/tree/t.txt").read_bytes() == content
    assert "rejected 1 blobs whose content did not match" in proc.stderr


def test_server_killed_mid_build_finishes_locally(tmp_path):
    server = BuildGridCache(tmp_path / "bgd")
    a = _workspace(tmp_path / "a" / "ws", tmp_path / "a" / "cache", BUILD.replace('"tr a-z A-Z', '"sleep 1.5; tr a-z A-Z'))
    killer = threading.Timer(0.8, server.kill)
    killer.start()
    try:
        proc = _build(a, server.url, "--remote-upload", "--remote-timeout", "3")
    finally:
        killer.join()
        server.stop()
    assert json.loads(proc.stdout)["actions"]["executed"] == 3
    assert (a.root / "hb-out/p/tree/t.txt").exists()
    assert proc.stderr.count("warning: remote cache") == 1, proc.stderr
    # required: an error before any work
    proc = _build(a, server.url, "--remote-required", "--remote-timeout", "2", check=False)
    assert proc.returncode == 7 and "is unavailable" in proc.stderr


def test_tree_through_tiered_stores_is_read_in_batches(server, tmp_path):
    from hermetic_build.store.local import LocalStore
    from hermetic_build.store.remote import GuardedRemote
    from hermetic_build.store.tiered import TieredStore
    from hermetic_build.tree import materialize_tree, store_tree

    src = tmp_path / "src"
    for i in range(60):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 3}" / f"f{i}").write_bytes(f"file {i}\n".encode() * (i + 1))
    (src / "big").write_bytes(b"B" * (5 << 20))
    warnings = []

    def tiered(name, upload):
        local = LocalStore(tmp_path / name)
        remote = GuardedRemote(_store(server, local=local), required=True, warn=warnings.append, url=server.url)
        return TieredStore(local, remote, upload=upload), remote.remote

    writer, _ = tiered("writer", True)
    root = store_tree(writer, src)
    result = ActionResult((OutputEntry("out", "dir", root),))
    writer.put_action_result("ee" * 32, result)
    reader, reapi = tiered("reader", False)
    assert reader.get_action_result("ee" * 32) == result
    singles = []
    original = reapi._read_small
    reapi._read_small = lambda sha, size: singles.append(sha) or original(sha, size)
    materialize_tree(reader, root, tmp_path / "out")
    for f in src.rglob("*"):
        if f.is_file():
            assert (tmp_path / "out" / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert len(singles) <= 4  # the directory blobs; the 60 files came in a batch, the big one streamed
    assert reapi.stats.blobs_down >= 61 and not warnings


def test_grpcs_with_a_private_ca(tmp_path):
    import subprocess

    from support import require_tool

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([require_tool("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    server = BuildGridCache(tmp_path / "bgd", tls=(cert, key))
    try:
        assert server.url.startswith("grpcs://")
        store = ReapiStore(server.url, signer=Signer(None), timeout=5, cafile=str(cert))
        d = store.put_blob(b"over tls")
        assert store.get_blob(d) == b"over tls"
        # without the CA the server's certificate is not trusted: unavailable, not a silent downgrade
        with pytest.raises(RemoteUnavailable):
            ReapiStore(server.url, signer=Signer(None), timeout=3).has_blob(d)
    finally:
        server.stop()
