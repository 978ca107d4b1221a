import gzip
import os
import random
import subprocess
import zlib

import pytest

from rules.oci import pgzip
from rules.oci.pgzip import BLOCK, WHOLE_MAX, ParallelGzip, compress


def _data(size: int) -> bytes:
    """Partly compressible: random runs mixed with repeated text."""
    rng = random.Random(7)
    parts, n = [], 0
    while n < size:
        part = rng.randbytes(rng.randrange(1, 50000)) if rng.random() < 0.3 else b"lorem ipsum %d " % n * 200
        parts.append(part)
        n += len(part)
    return b"".join(parts)[:size]


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12345, WHOLE_MAX, WHOLE_MAX + 1,
                                  WHOLE_MAX + BLOCK, WHOLE_MAX + 2 * BLOCK + 12345])
def test_same_bytes_with_1_2_8_threads_and_decompresses_to_the_input(size):
    data = _data(size)
    outs = {threads: compress(data, threads=threads) for threads in (1, 2, 8)}
    assert outs[1] == outs[2] == outs[8]
    out = outs[1]
    assert gzip.decompress(out) == data
    # one member: a raw inflate of the body ends exactly before the 8-byte trailer
    d = zlib.decompressobj(-15)
    assert d.decompress(out[10:]) == data and d.eof and d.unused_data == out[-8:]
    assert out[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


@pytest.mark.parametrize("size", [2 * BLOCK + 777, WHOLE_MAX + BLOCK + 777])
def test_write_calls_do_not_change_the_bytes(size):
    data = _data(size)
    pieces: list[bytes] = []
    gz = ParallelGzip(pieces.append, threads=2)
    for i in range(0, len(data), 4099):  # odd-sized writes across block boundaries
        gz.write(data[i:i + 4099])
    gz.close()
    assert b"".join(pieces) == compress(data, threads=1)


def test_gzip_tool_accepts_the_member(tmp_path):
    path = tmp_path / "x.gz"
    data = _data(WHOLE_MAX + 2 * BLOCK + 5)
    path.write_bytes(compress(data, level=6, threads=4))
    subprocess.run(["gzip", "-t", str(path)], check=True)
    assert subprocess.run(["gzip", "-dc", str(path)], check=True, capture_output=True).stdout == data


def test_blocks_in_flight_are_bounded_and_released():
    pool = pgzip._pool(2)
    before, whole_before = pool.slots._value, pool.whole_slots._value
    data = os.urandom(WHOLE_MAX + 4 * BLOCK)  # more blocks than slots: the writer drains its own
    assert gzip.decompress(compress(data, threads=2)) == data
    assert gzip.decompress(compress(data[:WHOLE_MAX], threads=2)) == data[:WHOLE_MAX]
    assert (pool.slots._value, pool.whole_slots._value) == (before, whole_before)


def test_an_aborted_writer_gives_its_slots_back():
    pool = pgzip._pool(2)
    whole_before = pool.whole_slots._value
    gz = ParallelGzip(lambda b: None, threads=2)
    gz.write(_data(3 * BLOCK))  # held for libdeflate: one writer slot taken
    assert pool.whole_slots._value == whole_before - 1
    gz.abort()
    assert pool.whole_slots._value == whole_before


def test_level_out_of_range_is_refused():
    with pytest.raises(ValueError):
        ParallelGzip(lambda b: None, level=10)


def test_golden_multi_block_member_pinned_with_zlib_version():
    import hashlib

    size = WHOLE_MAX + BLOCK + 12345  # longer than one libdeflate call: zlib blocks (the same bytes as before it)
    out = compress(_data(size), threads=2)
    if zlib.ZLIB_RUNTIME_VERSION == "1.2.13":  # the compressed bytes depend on zlib's version
        assert hashlib.sha256(out).hexdigest() == "339220371e092ea4a8e316ecdcf18be6a824ef08460d413d1439d6ba0cce3fe6"
    assert gzip.decompress(out) == _data(size)


@pytest.mark.parametrize("size", [0, 1, 70000, BLOCK - 1, BLOCK, 3 * BLOCK + 5, WHOLE_MAX])
def test_an_input_of_at_most_whole_max_is_one_libdeflate_call(size):
    import struct

    import deflate

    data = _data(size)
    out = compress(data, level=6, threads=2)
    body = bytes(deflate.deflate_compress(data, 6))
    assert out == pgzip.HEADER + body + struct.pack("<II", zlib.crc32(data), size)
    assert gzip.decompress(out) == data


def test_libdeflate_is_smaller_than_zlib_on_text_and_the_identity_names_both():
    data = _data(3 * BLOCK)
    assert len(compress(data)) < len(zlib.compress(data, 6))
    identity = pgzip.compressor_identity()
    assert identity.startswith("libdeflate:") and f"zlib:{zlib.ZLIB_RUNTIME_VERSION}" in identity
