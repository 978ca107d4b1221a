import gzip
import hashlib
import io
import tarfile

import pytest

from hermetic_build.api import TreeEntry, digest_bytes
from rules.oci.tarlayer import GZIP_LAYER, compressor_identity, write_layer

FILES = {"opt/env/bin/tool": (b"#!/bin/sh\necho hi\n", 0o755), "opt/env/share/data.txt": (b"x" * 5000, 0o644)}


def _opener(blobs):
    return lambda digest: io.BytesIO(blobs[digest]) if digest in blobs else None


def _entries():
    blobs = {}
    entries = [("opt", TreeEntry("opt", "dir", mode=0o755)), ("opt/env", TreeEntry("env", "dir", mode=0o755)),
               ("opt/env/bin", TreeEntry("bin", "dir", mode=0o755)), ("opt/env/share", TreeEntry("share", "dir", mode=0o755)),
               ("opt/env/bin/link", TreeEntry("link", "symlink", mode=0o777, target="tool"))]
    for path, (data, mode) in FILES.items():
        digest = digest_bytes(data)
        blobs[digest] = data
        entries.append((path, TreeEntry(path.rsplit("/", 1)[1], "file", digest, mode)))
    return entries[::-1], blobs  # given unsorted: the writer sorts


def test_layer_is_deterministic_and_hashes_match(tmp_path):
    entries, blobs = _entries()
    a = write_layer(_opener(blobs), entries, tmp_path / "a", epoch=1700000000)
    b = write_layer(_opener(blobs), list(reversed(entries)), tmp_path / "b", epoch=1700000000)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert a == b
    data = (tmp_path / "a").read_bytes()
    assert a.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert a.blake3 == digest_bytes(data)
    assert a.size == len(data) and a.media_type == GZIP_LAYER
    assert a.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data)).hexdigest()
    # gzip header: magic, deflate, no flags (no file name), mtime 0, then XFL and OS byte 255
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


def test_tar_entries_follow_the_determinism_rules(tmp_path):
    entries, blobs = _entries()
    write_layer(_opener(blobs), entries, tmp_path / "l", epoch=1234)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress((tmp_path / "l").read_bytes()))) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names)
        assert names[:2] == ["opt", "opt/env"]  # explicit parent directories
        for m in members:
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (1234, 0, 0, "", "")
        assert tar.getmember("opt/env/bin/tool").mode == 0o755
        assert tar.getmember("opt/env/bin/link").issym() and tar.getmember("opt/env/bin/link").linkname == "tool"
        assert tar.extractfile("opt/env/share/data.txt").read() == b"x" * 5000


def test_zstd_layers_are_deterministic(tmp_path):
    import zstandard

    entries, blobs = _entries()
    a = write_layer(_opener(blobs), entries, tmp_path / "a", compression="zstd", level=3)
    b = write_layer(_opener(blobs), entries, tmp_path / "b", compression="zstd", level=3)
    assert a == b and a.media_type.endswith("+zstd")
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO((tmp_path / "a").read_bytes())).read()
    assert a.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_golden_digest_pinned_with_the_compressors_versions(tmp_path):
    entries, blobs = _entries()
    layer = write_layer(_opener(blobs), entries, tmp_path / "l", epoch=0)
    # the uncompressed tar does not depend on the compressor; the compressed bytes do (a one-block
    # layer: libdeflate, whose version pyproject pins)
    assert layer.diff_id == GOLDEN_DIFF_ID
    assert compressor_identity("gzip").startswith("libdeflate:0.9.0,")
    assert layer.digest == GOLDEN_GZIP_LIBDEFLATE_0_9_0


def test_missing_blob_is_reported(tmp_path):
    from hermetic_build.api import MissingBlob

    entries, _ = _entries()
    with pytest.raises(MissingBlob):
        write_layer(lambda d: None, entries, tmp_path / "l")


@pytest.mark.parametrize("entries_of", [_entries, lambda: _big_entries(3 * (1 << 20))], ids=["small", "multi-block"])
def test_a_blob_shorter_than_its_digest_is_reported(tmp_path, entries_of):
    from hermetic_build.api import MissingBlob

    entries, blobs = entries_of()
    short = {digest: data[:-1] for digest, data in blobs.items()}
    with pytest.raises(MissingBlob, match="shorter than its digest says"):
        write_layer(_opener(short), entries, tmp_path / "l")


GOLDEN_DIFF_ID = "sha256:b96a3f07ef59eb5096727e6c319bdbfc7315872b0b71f9ad4dc651803d342464"
GOLDEN_GZIP_LIBDEFLATE_0_9_0 = "sha256:03824e832ed7ba38a78520c0ba0bb4fd7dc1dbae7b819403c53e63e3b343c279"


def _big_entries(size: int):
    data = (b"shared object bytes " * 1000 + bytes(range(256)) * 40)[: 1 << 16] * (size // (1 << 16) + 1)
    data = data[:size]
    blobs = {}
    entries = [("opt", TreeEntry("opt", "dir", mode=0o755))]
    for i, chunk in enumerate((data, b"small\n", data[: size // 3])):
        digest = digest_bytes(chunk)
        blobs[digest] = chunk
        entries.append((f"opt/f{i}", TreeEntry(f"f{i}", "file", digest, 0o644)))
    return entries, blobs


def test_multi_block_layer_same_bytes_with_1_2_8_threads(tmp_path):
    import subprocess

    entries, blobs = _big_entries(3 * (1 << 20) + 4321)  # blocks span file boundaries
    layers = {t: write_layer(_opener(blobs), entries, tmp_path / f"l{t}", threads=t) for t in (1, 2, 8)}
    assert layers[1] == layers[2] == layers[8]
    data = (tmp_path / "l1").read_bytes()
    assert data == (tmp_path / "l2").read_bytes() == (tmp_path / "l8").read_bytes()
    subprocess.run(["gzip", "-t", str(tmp_path / "l1")], check=True)
    tar_bytes = gzip.decompress(data)
    assert layers[1].diff_id == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    # the compressed bytes decompress to exactly the tar stream tarfile reads back
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for path, entry in entries:
            if entry.kind == "file":
                assert tar.extractfile(path).read() == blobs[entry.digest]
    assert len(tar_bytes) % 512 == 0 and tar_bytes[-1024:] == bytes(1024)


def test_layer_from_a_local_store_streams_and_rejects_corrupt_blobs(tmp_path):
    from hermetic_build.api import MissingBlob
    from hermetic_build.store.local import LocalStore

    store = LocalStore(tmp_path / "cache")
    entries, blobs = _big_entries(2 * (1 << 20))
    for data in blobs.values():
        store.put_blob(data)
    from_store = write_layer(store.open_blob, entries, tmp_path / "a")
    assert from_store == write_layer(_opener(blobs), entries, tmp_path / "b")
    big = entries[1][1].digest
    path = store.blob_path(big)
    path.chmod(0o644)
    with open(path, "r+b") as f:  # same size, one byte changed
        f.seek(12345)
        f.write(b"\xff" if f.read(1) != b"\xff" else b"\x00")
    with pytest.raises(MissingBlob):
        write_layer(store.open_blob, entries, tmp_path / "c")
    assert not store.has_blob(big)  # removed as corrupt


def test_layer_from_a_local_store_rejects_a_blob_longer_than_its_digest(tmp_path):
    from hermetic_build.api import MissingBlob
    from hermetic_build.store.local import LocalStore

    store = LocalStore(tmp_path / "cache")
    entries, blobs = _entries()
    for data in blobs.values():
        store.put_blob(data)
    longer = next(e.digest for _, e in entries if e.kind == "file")
    path = store.blob_path(longer)
    path.chmod(0o644)
    with open(path, "ab") as f:  # the right bytes, then more: the store's size check at open refuses it
        f.write(b"trailing")
    with pytest.raises(MissingBlob):
        write_layer(store.open_blob, entries, tmp_path / "layer")
    assert not store.has_blob(longer)  # removed as corrupt


@pytest.mark.parametrize("path,kind,mode,size,epoch,target", [
    ("opt/env/bin/tool", "file", 0o755, 18, 0, None),
    ("opt/env/lib/libx.so.1", "file", 0o100644, 123456789, 1700000000, None),
    ("opt/env", "dir", 0o2755, 0, 0, None),
    ("opt/env/bin/link", "symlink", 0o777, 0, 5, "../lib/libx.so.1"),
    ("a" * 99, "dir", 0o755, 0, 0, None),  # 100 with the "/": still ustar
    ("a" * 100, "dir", 0o755, 0, 0, None),  # 101: a PAX path record
    ("b/" + "c" * 120, "file", 0o644, 1, 0, None),
    ("opt/naïve.txt", "file", 0o644, 3, 0, None),
    ("opt/l", "symlink", 0o777, 0, 0, "t" * 101),
    ("opt/huge", "file", 0o644, 8 ** 11, 0, None),  # size needs a PAX record
    ("opt/bad\udcff", "file", 0o644, 1, 0, None),  # undecodable name (surrogateescape)
])
def test_direct_headers_equal_tarfiles(path, kind, mode, size, epoch, target):
    from rules.oci.tarlayer import _tarfile_header, tar_header

    entry = TreeEntry(path.rsplit("/", 1)[-1], kind, digest_bytes(b"x") if kind == "file" else None, mode,
                      target=target)
    assert tar_header(path, entry, epoch, size) == _tarfile_header(path, entry, epoch, size)


def test_zstd_layer_same_bytes_with_1_2_8_threads(tmp_path):
    import zstandard

    entries, blobs = _big_entries(12 * (1 << 20))  # several zstd jobs
    layers = {t: write_layer(_opener(blobs), entries, tmp_path / f"z{t}", compression="zstd", level=3, threads=t)
              for t in (1, 2, 8)}
    assert layers[1] == layers[2] == layers[8]
    assert (tmp_path / "z1").read_bytes() == (tmp_path / "z8").read_bytes()
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO((tmp_path / "z1").read_bytes())).read()
    assert layers[1].diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
