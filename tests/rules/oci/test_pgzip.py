import gzip
import os
import random
import subprocess
import zlib

import pytest

from rules.oci import pgzip
from rules.oci.pgzip import BLOCK, ParallelGzip, compress


def _data(size: int) -> bytes:
    """Partly compressible: random runs mixed with repeated text."""
    rng = random.Random(7)
    parts, n = [], 0
    while n < size:
        part = rng.randbytes(rng.randrange(1, 50000)) if rng.random() < 0.3 else b"lorem ipsum %d " % n * 200
        parts.append(part)
        n += len(part)
    return b"".join(parts)[:size]


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12345])
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


def test_write_calls_do_not_change_the_bytes():
    data = _data(2 * BLOCK + 777)
    pieces: list[bytes] = []
    gz = ParallelGzip(pieces.append, threads=2)
    for i in range(0, len(data), 4099):  # odd-sized writes across block boundaries
        gz.write(data[i:i + 4099])
    gz.close()
    assert b"".join(pieces) == compress(data, threads=1)


def test_gzip_tool_accepts_the_member(tmp_path):
    path = tmp_path / "x.gz"
    data = _data(2 * BLOCK + 5)
    path.write_bytes(compress(data, level=6, threads=4))
    subprocess.run(["gzip", "-t", str(path)], check=True)
    assert subprocess.run(["gzip", "-dc", str(path)], check=True, capture_output=True).stdout == data


def test_blocks_in_flight_are_bounded_and_released():
    pool = pgzip._pool(2)
    before = pool.slots._value
    data = os.urandom(12 * BLOCK)  # more blocks than slots: the writer drains its own
    assert gzip.decompress(compress(data, threads=2)) == data
    assert pool.slots._value == before


def test_level_out_of_range_is_refused():
    with pytest.raises(ValueError):
        ParallelGzip(lambda b: None, level=10)


def test_golden_multi_block_member_pinned_with_zlib_version():
    import hashlib

    out = compress(_data(3 * BLOCK + 12345), threads=2)
    if zlib.ZLIB_RUNTIME_VERSION == "1.2.13":  # the compressed bytes depend on zlib's version
        assert hashlib.sha256(out).hexdigest() == "88397f1d85e7d050b7e99c20e42da3fc950317661d43543e2c22f80eaebfbd2d"
    assert gzip.decompress(out) == _data(3 * BLOCK + 12345)
