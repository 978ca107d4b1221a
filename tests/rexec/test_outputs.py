"""Outputs left on the engine (rexec/outputs.py): the worker's claims, the index of where blobs are, and
LazyOutputs fetching a blob on first read, verified against both digests (a real BuildGrid CAS)."""

import hashlib

import pytest

from hermetic_build.digest import Digest, digest_bytes
from hermetic_build.rexec.outputs import RemoteBlobIndex, decode_claims, encode_claims
from hermetic_build.store.base import InvalidEntry
from hermetic_build.store.local import LocalStore

SHA = "a" * 64
B3 = "b" * 64


def test_claims_round_trip_and_refuse_anything_else():
    assert decode_claims(encode_claims({SHA: B3})) == {SHA: B3}
    for bad in (b'{"v":1,"blake3":{"x":"y"}}', b'{"v":2,"blake3":{}}', b'{"v":1}', b"[]",
                b'{"v":1,"blake3":{"' + SHA.encode() + b'":"../../etc"}}',
                b'{"v":1,"blake3":{},"more":1}', b"not json"):
        with pytest.raises(InvalidEntry):
            decode_claims(bad)


def test_index_remembers_pairs_and_skips_lines_it_cannot_read(tmp_path):
    index = RemoteBlobIndex(tmp_path, "127.0.0.1:1/main")
    d = Digest(B3, 12)
    index.add([(d, SHA)])
    index.add([(d, SHA)])  # known: not written twice
    with open(index.path, "ab") as f:
        f.write(b"garbage line\n" + b"c" * 64 + b" 5 ")  # a torn last line
    again = RemoteBlobIndex(tmp_path, "127.0.0.1:1/main")
    assert again.sha256(d) == SHA and again.sha256(Digest("c" * 64, 5)) is None
    assert index.path.read_bytes().count(SHA.encode()) == 1
    assert RemoteBlobIndex(tmp_path, "127.0.0.1:1/other").sha256(d) is None  # one index per endpoint


@pytest.mark.slow
def test_a_blob_left_on_the_engine_is_fetched_once_and_checked_against_both_digests(tmp_path):
    pytest.importorskip("grpc")
    from support import BuildGridCache

    from hermetic_build.rexec.outputs import LazyOutputs
    from hermetic_build.store.reapi import ReapiStore
    from hermetic_build.store.remote import Signer

    server = BuildGridCache(tmp_path / "bgd", instance="main")
    try:
        data = b"an output left on the engine\n" * 100
        sha = hashlib.sha256(data).hexdigest()
        ReapiStore(server.url, signer=Signer(None)).upload_sha({sha: (len(data), data)})
        local = LocalStore(tmp_path / "cache")
        cas = ReapiStore(server.url, signer=Signer(None))
        index = RemoteBlobIndex(tmp_path / "cache", cas.endpoint)
        lazy = LazyOutputs(local, local, cas, index)
        right = digest_bytes(data)
        liar = Digest(digest_bytes(b"other bytes").hash, len(data))  # a BLAKE3 that is not of these bytes
        index.add([(right, sha), (liar, sha)])
        assert lazy.has_blob(right) and not local.has_blob(right)  # known remote, not downloaded
        assert lazy.remote_sha256(right) == sha

        assert not lazy.fetch_file(liar, tmp_path / "bad")  # SHA-256 matches, BLAKE3 does not: refused
        assert not (tmp_path / "bad").exists() and not local.has_blob(liar)
        assert cas.stats.rejected_blobs == 1

        assert lazy.fetch_file(right, tmp_path / "good") and (tmp_path / "good").read_bytes() == data
        assert local.has_blob(right) and lazy.remote_sha256(right) is None  # now held here
        assert lazy.get_blob(right) == data and cas.stats.blobs_down == 1  # read once
    finally:
        server.stop()
