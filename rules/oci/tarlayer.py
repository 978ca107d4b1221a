"""Deterministic tar layers streamed from trees in the CAS.

Rules (../shared/DESIGN.md): entries sorted by path, explicit directory entries, mtime =
SOURCE_DATE_EPOCH, uid/gid 0 with empty user and group names (the CAS tree records no owners), no
xattrs or device nodes, PAX headers only where a name needs one; gzip with mtime 0, no file name, a
fixed OS byte and level (or zstd with fixed parameters). One pass over the bytes yields the diff_id
(sha256 of the tar), and the sha256 and BLAKE3 of the compressed blob.
"""

from __future__ import annotations

import gzip
import hashlib
import tarfile
import zlib
from dataclasses import dataclass

from hermetic_build.api import Digest, DualHasher, MissingBlob, TreeEntry

GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_TYPES = {"gzip": GZIP_LAYER, "zstd": ZSTD_LAYER}
FORMAT_VERSION = 1  # bump when the bytes of a layer for the same entries change
_BLOCK = 512
_FLUSH = 1 << 20


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


class _HashingWriter:
    """File-like sink hashing what passes through (sha256 + BLAKE3 of the compressed bytes)."""

    def __init__(self, f):
        self._f = f
        self.hasher = DualHasher()

    def write(self, data) -> int:
        self.hasher.update(data)
        self._f.write(data)
        return len(data)

    def flush(self) -> None:
        self._f.flush()


def _compressor(compression: str, level: int, sink):
    if compression == "gzip":
        # filename="" and mtime=0: the header holds neither a name nor a time; the OS byte is fixed (255).
        return gzip.GzipFile(filename="", mode="wb", fileobj=sink, compresslevel=level, mtime=0)
    if compression == "zstd":
        import zstandard

        params = zstandard.ZstdCompressionParameters.from_level(level, threads=0, write_checksum=True,
                                                               write_content_size=False)
        return zstandard.ZstdCompressor(compression_params=params).stream_writer(sink, closefd=False)
    raise ValueError(f"unknown layer compression {compression!r} (use gzip or zstd)")


def tar_header(path: str, entry: TreeEntry, epoch: int, size: int = 0) -> bytes:
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


def write_layer(read_blob, entries: list[tuple[str, TreeEntry]], out_path, *, epoch: int = 0,
                compression: str = "gzip", level: int = 6) -> LayerBlob:
    """Write entries (path inside the image, TreeEntry) as one layer; read_blob(digest) -> bytes|None."""
    diff = hashlib.sha256()
    with open(out_path, "wb") as raw:
        sink = _HashingWriter(raw)
        compressor = _compressor(compression, level, sink)
        pending = bytearray()

        def emit(data) -> None:
            pending.extend(data)
            if len(pending) >= _FLUSH:
                diff.update(pending)
                compressor.write(bytes(pending))
                pending.clear()

        for path, entry in sorted(entries, key=lambda item: item[0]):
            if entry.kind == "file":
                data = read_blob(entry.digest)
                if data is None:
                    raise MissingBlob(entry.digest)
                emit(tar_header(path, entry, epoch, len(data)))
                emit(data)
                if len(data) % _BLOCK:
                    emit(b"\0" * (_BLOCK - len(data) % _BLOCK))
            else:
                emit(tar_header(path, entry, epoch))
        emit(b"\0" * (2 * _BLOCK))  # end-of-archive marker
        diff.update(pending)
        compressor.write(bytes(pending))
        compressor.close()  # ends the gzip member / zstd frame; the sink stays open
        raw.flush()
    return LayerBlob(f"sha256:{diff.hexdigest()}", f"sha256:{sink.hasher.sha256}", sink.hasher.size,
                     MEDIA_TYPES[compression], sink.hasher.digest)


def zlib_version() -> str:
    """Golden layer digests depend on it (tests pin digests together with this)."""
    return zlib.ZLIB_RUNTIME_VERSION
