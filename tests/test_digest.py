import hashlib
import json
import os

import pytest

from support import SHARED_DATA
from hermetic_build.digest import Digest, DualHasher, canonical_json, digest_bytes, digest_file


def _vectors():
    data = json.loads((SHARED_DATA / "blake3-test-vectors.json").read_text())
    return data["cases"]


def _input(length: int) -> bytes:
    return bytes(i % 251 for i in range(length))


@pytest.mark.parametrize("case", _vectors(), ids=lambda c: str(c["input_len"]))
def test_official_blake3_vectors(case, tmp_path):
    data = _input(case["input_len"])
    expected = case["hash"][:64]
    assert digest_bytes(data) == Digest(expected, len(data))
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert digest_file(path).hash == expected
    dual = DualHasher()
    dual.update(data)
    assert dual.digest.hash == expected
    assert dual.sha256 == hashlib.sha256(data).hexdigest()


def test_large_file_uses_same_hash(tmp_path):
    data = _input(40 << 20)
    path = tmp_path / "big"
    path.write_bytes(data)
    assert digest_file(path) == digest_bytes(data)


def test_digest_parse_roundtrip():
    d = digest_bytes(b"abc")
    assert Digest.parse(str(d)) == d
    with pytest.raises(ValueError):
        Digest.parse("nothex/3")


def test_canonical_json_is_order_independent_and_rejects_floats():
    assert canonical_json({"b": 1, "a": [1, "x"]}) == canonical_json({"a": [1, "x"], "b": 1}) == b'{"a":[1,"x"],"b":1}'
    with pytest.raises(TypeError):
        canonical_json({"a": 1.5})


def test_file_just_over_one_chunk(tmp_path):
    from hermetic_build.digest import CHUNK

    data = _input(CHUNK + 1)
    path = tmp_path / "over"
    path.write_bytes(data)
    assert digest_file(path) == digest_bytes(data)
    (tmp_path / "empty").write_bytes(b"")
    assert digest_file(tmp_path / "empty") == digest_bytes(b"")


@pytest.mark.parametrize("content, size", [(b"", 0), (b"abc", 3), (b"grown since", 4), (b"x" * (3 << 20), 3 << 20)])
def test_digest_fd_hashes_to_the_end_whatever_size_says(tmp_path, content, size):
    from hermetic_build.digest import digest_fd

    path = tmp_path / "f"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert digest_fd(fd, size) == digest_bytes(content)
    finally:
        os.close(fd)
