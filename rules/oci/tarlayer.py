"""Deterministic tar layers streamed from trees in the CAS.

Rules (../shared/DESIGN.md): entries sorted by path, explicit directory entries, mtime =
SOURCE_DATE_EPOCH, uid/gid 0 with empty user and group names (the CAS tree records no owners), no
xattrs or device nodes, PAX headers only where a name needs one; gzip with mtime 0, no file name, a
fixed OS byte and level (or zstd with fixed parameters). One streaming pass yields the diff_id
(sha256 of the tar), and the sha256 and BLAKE3 of the compressed blob: file contents are read
straight into fixed 1 MiB blocks of the tar stream (blocks span file boundaries), which are
compressed on every core (pgzip.py), so memory does not grow with file size and the bytes do not
depend on the number of threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tarfile
from dataclasses import dataclass

from hermetic_build.api import Digest, DualHasher, MissingBlob, TreeEntry

from .pgzip import BLOCK, ParallelGzip, cores
from .pgzip import compressor_identity as gzip_identity

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPES = {"gzip": GZIP_LAYER, "zstd": ZSTD_LAYER}
FORMAT_VERSION = 3  # bump when the bytes of a layer for the same entries change (2: parallel gzip; 3: libdeflate for one-block layers)
_BLOCK = 512


@dataclass(frozen=True)
class LayerBlob:
    """A written layer: what an OCI manifest and config need, and the blob's CAS digest."""

    diff_id: str  # sha256:<hex> of the uncompressed tar
    digest: str  # sha256:<hex> of the compressed blob
    size: int
    media_type: str
    blake3: Digest

    def to_json(self) -> dict:
        return {"diff_id": self.diff_id, "digest": self.digest, "size": self.size, "mediaType": self.media_type,
                "blake3": str(self.blake3)}

    @staticmethod
    def from_json(data: dict) -> LayerBlob:
        return LayerBlob(data["diff_id"], data["digest"], int(data["size"]), data["mediaType"],
                         Digest.parse(data["blake3"]))


def tar_header(path: str, entry: TreeEntry, epoch: int, size: int = 0) -> bytes:
    """The header block(s) of one entry: what tarfile writes in PAX format, built directly when
    a plain ustar header says it all (ASCII names that fit, numbers in range), else by tarfile."""
    if entry.kind == "dir":
        name, kind, mode, link, size = path + "/", b"5", entry.mode, "", 0
    elif entry.kind == "symlink":
        name, kind, mode, link, size = path, b"2", 0o777, entry.target, 0
    else:
        name, kind, mode, link = path, b"0", entry.mode, ""
    if (len(name) <= 100 and len(link) <= 100 and name.isascii() and link.isascii()
            and 0 <= size < _MAX_USTAR_NUMBER and 0 <= epoch < _MAX_USTAR_NUMBER):
        return _ustar_header(name.encode(), kind, mode & 0o7777, size, epoch, link.encode())
    return _tarfile_header(path, entry, epoch, size)


_MAX_USTAR_NUMBER = 8 ** 11


def _ustar_header(name: bytes, kind: bytes, mode: int, size: int, epoch: int, link: bytes) -> bytes:
    mode_field, size_field, mtime_field = b"%07o\0" % mode, b"%011o\0" % size, b"%011o\0" % epoch
    # the checksum is the sum of the header's bytes with its own field as spaces: the constant
    # parts are summed once (below), NUL padding adds nothing, so only the short variable parts here
    checksum = (_CONSTANT_SUM + sum(name) + sum(mode_field) + sum(size_field) + sum(mtime_field) + kind[0]
                + sum(link))
    return b"".join((name.ljust(100, b"\0"), mode_field, b"0000000\0", b"0000000\0", size_field, mtime_field,
                     b"%06o\0 " % checksum, kind, link.ljust(100, b"\0"), _USTAR_TAIL))


# magic "ustar\0" version "00", empty uname and gname, empty devmajor/devminor, empty prefix, padding
_USTAR_TAIL = (b"ustar\x0000" + bytes(32) + bytes(32) + bytes(8) + bytes(8) + bytes(155)).ljust(512 - 257, b"\0")
_CONSTANT_SUM = 2 * sum(b"0000000\0") + sum(b" " * 8) + sum(_USTAR_TAIL)  # uid, gid, checksum field, tail


def _tarfile_header(path: str, entry: TreeEntry, epoch: int, size: int) -> bytes:
    info = tarfile.TarInfo(path)
    info.mtime = epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = entry.mode
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif entry.kind == "symlink":
        info.type = tarfile.SYMTYPE
        info.linkname = entry.target
        info.mode = 0o777
    else:
        info.type = tarfile.REGTYPE
        info.size = size
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class _Blocks:
    """The tar stream as fixed BLOCK-sized buffers, each handed on whole (and given up) when full.

    Every buffer starts zeroed, so tar padding and the end-of-archive marker are only a skip."""

    def __init__(self, emit):
        self._emit = emit
        self.buf = bytearray(BLOCK)
        self.view = memoryview(self.buf)
        self.pos = 0

    def _next(self) -> None:
        self.view.release()
        self._emit(self.buf)
        self.buf = bytearray(BLOCK)
        self.view = memoryview(self.buf)
        self.pos = 0

    def put(self, data: bytes) -> None:
        data = memoryview(data)
        while len(data):
            n = min(len(data), BLOCK - self.pos)
            self.view[self.pos:self.pos + n] = data[:n]
            self.pos += n
            data = data[n:]
            if self.pos == BLOCK:
                self._next()

    def skip(self, n: int) -> None:
        while n:
            step = min(n, BLOCK - self.pos)
            self.pos += step
            n -= step
            if self.pos == BLOCK:
                self._next()

    def read_from(self, reader, size: int, digest) -> None:
        """Exactly `size` bytes of reader straight into the blocks; fewer is a MissingBlob."""
        left = size
        while left:
            want = min(left, BLOCK - self.pos)
            got = reader.readinto(self.view[self.pos:self.pos + want])
            if not got:
                raise MissingBlob(digest, f"blob {digest} is shorter than its digest says")
            self.pos += got
            left -= got
            if self.pos == BLOCK:
                self._next()
        # no read past `size` to look for more: the reader verified the BLAKE3 of exactly these bytes
        # (so they are the blob, whatever may follow), and the store checks the size when it opens one

    def file(self, header: bytes, reader, size: int, digest) -> None:
        """A file's entry: its header, exactly `size` bytes of reader, padding to a 512-byte record."""
        pos = self.pos
        end = pos + len(header)
        if end + size + _BLOCK <= BLOCK:  # the common small file: all of it inside this block
            self.view[pos:end] = header
            want = end + size
            while end < want:
                got = reader.readinto(self.view[end:want])
                if not got:
                    raise MissingBlob(digest, f"blob {digest} is shorter than its digest says")
                end += got
            self.pos = want + (-size % _BLOCK)  # the padding is already zeros; never reaches BLOCK here
            return
        self.put(header)
        self.read_from(reader, size, digest)
        if size % _BLOCK:
            self.skip(_BLOCK - size % _BLOCK)

    def rest(self) -> bytes:
        data = bytes(self.view[:self.pos])
        self.view.release()
        return data


class _Compressor:
    """Blocks of the tar in, compressed bytes out to sink, on every core, deterministically."""

    def __init__(self, compression: str, level: int, sink, threads: int | None):
        self.compression = compression
        if compression == "gzip":
            self._gz = ParallelGzip(sink, level=level, threads=threads)
        elif compression == "zstd":
            import zstandard

            # zstd's multi-threaded mode writes the same frame for any number of workers >= 1
            # (jobs are cut by size, not by timing); threads=0 (single-threaded mode) would differ.
            params = zstandard.ZstdCompressionParameters.from_level(
                level, threads=max(1, threads or cores()), write_checksum=True, write_content_size=False)

            class _Sink:
                def write(self, data) -> int:
                    sink(bytes(data))
                    return len(data)

            self._zstd = zstandard.ZstdCompressor(compression_params=params).stream_writer(_Sink(), closefd=False)
        else:
            raise ValueError(f"unknown layer compression {compression!r} (use gzip or zstd)")

    def block(self, block) -> None:
        if self.compression == "gzip":
            self._gz.add_block(block)
        else:
            self._zstd.write(block)

    def finish(self, rest: bytes) -> None:
        if self.compression == "gzip":
            self._gz.write(rest)
            self._gz.close()
        else:
            self._zstd.write(rest)
            self._zstd.close()

    def abort(self) -> None:
        if self.compression == "gzip":
            self._gz.abort()


def write_layer(open_blob, entries: list[tuple[str, TreeEntry]], out_path, *, epoch: int = 0,
                compression: str = "gzip", level: int = 6, threads: int | None = None) -> LayerBlob:
    """Write entries (path inside the image, TreeEntry) as one layer, streaming: open_blob(digest)
    gives a binary reader (readinto) of the file's content, or None. Memory does not grow with
    file size; `threads` (None: every core) changes the speed, never the bytes."""
    diff = hashlib.sha256()
    with open(out_path, "wb") as raw:
        hasher = DualHasher()
        written_back = 0

        def sink(data) -> None:
            nonlocal written_back
            hasher.update(data)
            raw.write(data)
            if hasher.size - written_back >= WRITEBACK_STEP:
                written_back = _start_writeback(raw, written_back, hasher.size)

        compressor = _Compressor(compression, level, sink, threads)

        def emit(block) -> None:
            diff.update(block)
            compressor.block(block)

        blocks = _Blocks(emit)
        try:
            for path, entry in sorted(entries, key=lambda item: item[0]):
                if entry.kind == "file":
                    size = entry.digest.size
                    reader = open_blob(entry.digest)
                    if reader is None:
                        raise MissingBlob(entry.digest)
                    try:
                        blocks.file(tar_header(path, entry, epoch, size), reader, size, entry.digest)
                    finally:
                        reader.close()
                else:
                    blocks.put(tar_header(path, entry, epoch))
            blocks.skip(2 * _BLOCK)  # end-of-archive marker
            rest = blocks.rest()
            diff.update(rest)
            compressor.finish(rest)  # ends the gzip member / zstd frame
        except BaseException:
            compressor.abort()
            raise
        _start_writeback(raw, written_back, hasher.size)
    return LayerBlob(f"sha256:{diff.hexdigest()}", f"sha256:{hasher.sha256}", hasher.size,
                     MEDIA_TYPES[compression], hasher.digest)


WRITEBACK_STEP = 8 << 20


def _start_writeback(raw, start: int, end: int) -> int:
    """Have the kernel start writing bytes [start, end) of the blob to disk now, in the background
    (fadvise DONTNEED starts writeback of dirty pages and keeps them cached until written), so the one
    syncfs that ends the build (LocalStore.deferred_durability) finds them on disk: durability overlaps
    the compression instead of following it. Only a hint: where it is not supported nothing happens."""
    raw.flush()
    if end > start and hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(raw.fileno(), start, end - start, os.POSIX_FADV_DONTNEED)
    return end


def compressor_identity(compression: str) -> str:
    """The versions of the libraries a layer's compressed bytes depend on (part of the layer key, and
    what golden digests in tests are pinned together with)."""
    if compression == "zstd":
        import zstandard

        return f"zstd:{zstandard.ZSTD_VERSION}"
    return gzip_identity()
