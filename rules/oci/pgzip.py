"""Deterministic parallel gzip: one gzip member whose bytes do not depend on the number of threads.

Which compressor writes a member depends only on the input's length:
- at most WHOLE_MAX bytes (most package layers): raw deflate by libdeflate (the `deflate` package) in
  one call on the writer's thread; writers of different layers run on different cores. At the same
  level libdeflate is 3-4x faster than zlib and writes a little less. Its output is a function of the
  input, level and libdeflate's version, never of the CPU ("no version of libdeflate has ever been
  non-deterministic", its author), so pyproject pins the version and layer keys name it
  (`compressor_identity`). libdeflate has no streaming API and cannot end a block non-final and
  byte-aligned, so a longer input is not cut into libdeflate blocks but takes zlib's path:
- longer: pigz's scheme, below.

The longer input stream is cut into fixed BLOCK-sized blocks by offset (never by file or by write call).
Block i is compressed on its own, as raw deflate (zlib, wbits -15) at a fixed level, primed with
the last 32 KiB of block i-1 as a preset dictionary (what deflate could have referred back to
anyway), and ended with Z_SYNC_FLUSH: an empty stored block that leaves the stream byte-aligned and
not final, so the blocks' outputs concatenate into one valid deflate stream. The last block ends
with Z_FINISH. Around it: a fixed 10-byte header (no flags, no name, mtime 0, XFL 0, OS 255) and
the trailer (CRC-32 and length mod 2**32 of the whole input, computed in order). Each block's
output is a function of (its bytes, the 32 KiB before it, the level, whether it is last), so the
member is the same bytes whether 1 or 64 threads compressed it. This is pigz's scheme.

Memory is bounded: at most `max_inflight` blocks (input + output) are in flight in one process;
a writer that cannot get a slot first writes out its own oldest finished block. At most one writer
per core holds an input of up to WHOLE_MAX bytes for libdeflate; the others wait for one to finish.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import deflate

BLOCK = 1 << 20
WHOLE_MAX = 8 * BLOCK  # an input of at most this many bytes is one libdeflate call
DICT = 32 * 1024
HEADER = b"\x1f\x8b\x08\x00" + b"\x00\x00\x00\x00" + b"\x00\xff"  # deflate, no flags, mtime 0, XFL 0, OS 255


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Pool:
    """The process-wide compression threads and the bound on blocks in flight across all writers."""

    def __init__(self, threads: int):
        self.threads = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hb-deflate")
        self.slots = threading.Semaphore(max(4, 4 * threads))
        self.whole_slots = threading.Semaphore(threads)  # writers holding an input for libdeflate


_pools: dict[int, _Pool] = {}
_pools_lock = threading.Lock()


def _pool(threads: int | None) -> _Pool:
    threads = max(1, threads or cores())
    with _pools_lock:
        if threads not in _pools:
            _pools[threads] = _Pool(threads)
        return _pools[threads]


def compressor_identity() -> str:
    """What the compressed bytes depend on besides the input and the level: the libraries' versions."""
    return f"libdeflate:{deflate.__version__},zlib:{zlib.ZLIB_RUNTIME_VERSION}"


def deflate_block(data, zdict: bytes, level: int, last: bool) -> bytes:
    """Raw deflate of one block, primed with zdict, ending byte-aligned (or final if last)."""
    if zdict:
        c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, zdict)
    else:
        c = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
    return c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


class ParallelGzip:
    """Feed whole blocks with `add_block` (or any bytes with `write`), then `close()`; compressed
    bytes go to sink(bytes) in order. `threads` picks the pool (None: every core)."""

    def __init__(self, sink, *, level: int = 6, threads: int | None = None):
        if not 0 <= level <= 9:
            raise ValueError(f"gzip level must be 0..9, got {level}")
        self._sink = sink
        self._level = level
        self._pool = _pool(threads)
        self._queue: deque = deque()
        self._crc = 0
        self._size = 0
        self._zdict = b""
        self._buffer = bytearray()
        self._whole: bytearray | None = bytearray()  # the input while it may still fit WHOLE_MAX
        self._holds_whole_slot = False
        self._closed = False
        sink(HEADER)

    # ----- input ---------------------------------------------------------------------------------
    def write(self, data) -> None:
        """Any amount of bytes; cut into BLOCK-sized blocks here."""
        view = memoryview(data)
        while len(view):
            room = BLOCK - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == BLOCK:
                block, self._buffer = self._buffer, bytearray()
                self.add_block(block)

    def add_block(self, block) -> None:
        """One full block of exactly BLOCK bytes (the caller gives up the buffer)."""
        if len(block) != BLOCK or self._buffer:
            raise ValueError("add_block takes exactly one BLOCK and not after a partial write")
        if self._whole is not None:
            if len(self._whole) + BLOCK <= WHOLE_MAX:
                self._hold(block)
                return
            self._to_blocks()
        self._submit(block, last=False)

    def _hold(self, block) -> None:
        if not self._holds_whole_slot:
            self._pool.whole_slots.acquire()
            self._holds_whole_slot = True
        self._whole += block

    def _to_blocks(self) -> None:
        """The input is longer than WHOLE_MAX: what was held goes the blocks' way, from its start."""
        held, self._whole = self._whole, None
        try:
            for start in range(0, len(held), BLOCK):
                self._submit(held[start:start + BLOCK], last=False)
        finally:
            self._release_whole_slot()

    def _release_whole_slot(self) -> None:
        if self._holds_whole_slot:
            self._holds_whole_slot = False
            self._pool.whole_slots.release()

    def _submit(self, block, last: bool) -> None:
        self._crc = zlib.crc32(block, self._crc)
        self._size += len(block)
        zdict = self._zdict
        self._zdict = bytes(block[-DICT:]) if not last else b""
        if last:  # compressed here while the pool finishes the earlier blocks (a small layer never leaves its thread)
            self._last = deflate_block(block, zdict, self._level, True)
            self._drain_all()
            return
        self._acquire()
        self._queue.append(self._pool.executor.submit(deflate_block, block, zdict, self._level, False))

    def _acquire(self) -> None:
        slots = self._pool.slots
        while not slots.acquire(blocking=False):
            if self._queue:
                self._drain_one()  # our own oldest block: it frees a slot, whatever others hold
            else:
                slots.acquire()  # we hold none: the holders make progress and release
                return

    def _drain_all(self) -> None:
        while self._queue:
            self._drain_one()

    def _drain_one(self) -> None:
        future = self._queue.popleft()
        try:
            out = future.result()
        finally:
            self._pool.slots.release()
        self._sink(out)

    # ----- end -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        block, self._buffer = self._buffer, bytearray()
        if self._whole is not None and len(self._whole) + len(block) <= WHOLE_MAX:
            try:
                if self._whole:
                    self._whole += block
                data = self._whole or block
                self._crc, self._size = zlib.crc32(data), len(data)
                self._sink(deflate.deflate_compress(data, self._level))
            finally:
                self._whole = None
                self._release_whole_slot()
            self._sink(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))
            return
        if self._whole is not None:
            self._to_blocks()
        self._submit(block, last=True)
        self._sink(self._last)
        self._sink(struct.pack("<II", self._crc & 0xFFFFFFFF, self._size & 0xFFFFFFFF))

    def abort(self) -> None:
        """Drop what is in flight (after an error), giving the slots back."""
        self._closed = True
        self._whole = None
        self._release_whole_slot()
        while self._queue:
            future = self._queue.popleft()
            try:
                future.result()
            except Exception:  # noqa: BLE001 - the first error is what the caller reports
                pass
            finally:
                self._pool.slots.release()


def compress(data: bytes, level: int = 6, threads: int | None = None) -> bytes:
    """The whole member for `data` in memory (tests, small inputs)."""
    out: list[bytes] = []
    gz = ParallelGzip(out.append, level=level, threads=threads)
    gz.write(data)
    gz.close()
    return b"".join(out)
