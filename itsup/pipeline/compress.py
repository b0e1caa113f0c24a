"""Parallel gzip compression (pigz's scheme) with ISA-L, skipping what won't shrink.

The tar stream is cut into 1 MiB blocks. Each block is deflated on a worker
thread (ISA-L releases the GIL), primed with the last 32 KiB of the block
before it so the ratio stays close to a single-threaded stream, and ended
with a sync flush so the pieces concatenate into one standard gzip member.
Blocks that a small sample shows to be incompressible (photos, archives,
already-compressed data: typically half of a host's volume bytes) are
written as deflate *stored* blocks instead, at memory speed. A writer
thread emits blocks in order and keeps the CRC-32, so the caller never
waits on the sink while there is room in the queue.

isal.igzip_threaded does the same on the default level, no faster; it is
not used here because at level 0 it never writes stored blocks, so random
data grows by about 23% (bench/RESULTS.md, "gzip implementations compared").
"""

from __future__ import annotations

import io
import queue
import struct
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

from isal import isal_zlib

from itsup.pipeline.stream import Writable

BLOCK_SIZE = 1 << 20
WINDOW = 32 * 1024
SAMPLE = 8 * 1024
STORED_MAX = 0xFFFF
INCOMPRESSIBLE = 0.97  # sample ratio above which a block is stored, not deflated
# magic, deflate, no flags, mtime 0, no extra flags, OS unknown (as ISA-L and pigz -n write)
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
NEW_MEMBER = object()  # queued by new_member(): end this gzip member, start the next


def _stored(block: bytes) -> bytes:
    """Deflate stored blocks (non-final) holding `block`; the stream must be byte-aligned."""
    out: list[bytes | memoryview] = []
    view = memoryview(block)
    for start in range(0, len(block), STORED_MAX):
        n = min(STORED_MAX, len(block) - start)
        out.append(struct.pack("<BHH", 0, n, n ^ 0xFFFF))
        out.append(view[start : start + n])
    return b"".join(out)


def _looks_incompressible(block: bytes, level: int) -> bool:
    if len(block) < 4 * SAMPLE:
        return False
    for start in (0, len(block) // 2):
        sample = block[start : start + SAMPLE]
        squeezed = isal_zlib.compress(sample, level, wbits=-15)
        if len(squeezed) < INCOMPRESSIBLE * len(sample):
            return False
    return True


def _compress_block(block: bytes, zdict: bytes, level: int) -> tuple[bytes, int, int]:
    crc = isal_zlib.crc32(block)
    if _looks_incompressible(block, level):
        return _stored(block), crc, len(block)
    if zdict:
        comp = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15, zdict=zdict)
    else:
        comp = isal_zlib.compressobj(level, isal_zlib.DEFLATED, -15)
    return comp.compress(block) + comp.flush(isal_zlib.Z_SYNC_FLUSH), crc, len(block)


class ParallelGzipWriter(io.RawIOBase):
    """A writable stage: bytes in, one standard gzip member out to `sink`."""

    def __init__(
        self, sink: Writable, level: int = 1, threads: int = 2, block_size: int = BLOCK_SIZE
    ) -> None:
        super().__init__()
        self.sink = sink
        self.level = level
        self.block_size = block_size
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="gzip")
        self.results: queue.Queue[Future[tuple[bytes, int, int]] | object | None] = queue.Queue(
            threads * 2
        )
        self.buffer = bytearray()
        self.tail = b""  # last 32 KiB of the previous block: the next block's dictionary
        self.crc = 0
        self.size = 0
        self.emitted = 0  # bytes handed to the sink
        # Where each member after the first starts in the output (new_member()).
        self.member_offsets: list[int] = []
        self.error: BaseException | None = None
        self.finished = False
        self.abandoned = False
        self.thread = threading.Thread(target=self._emit, name="gzip-writer", daemon=True)
        self.thread.start()

    def writable(self) -> bool:
        return True

    def _out(self, data: bytes) -> None:
        self.sink.write(data)
        self.emitted += len(data)

    def _end_member(self) -> None:
        """A final empty fixed-Huffman block, then CRC-32 and length (RFC 1952)."""
        self._out(b"\x03\x00" + struct.pack("<II", self.crc, self.size & 0xFFFFFFFF))

    def _emit(self) -> None:
        ended = False  # the end marker is taken: nothing more will be queued
        try:
            self._out(GZIP_HEADER)
            while True:
                try:
                    fut = self.results.get(timeout=0.1)
                except queue.Empty:
                    if self.abandoned:
                        return
                    continue
                if fut is None:
                    if self.abandoned:
                        return  # blocks were dropped: a trailer would vouch for a prefix
                    ended = True
                    break
                if fut is NEW_MEMBER:
                    self._end_member()
                    self.member_offsets.append(self.emitted)
                    self._out(GZIP_HEADER)
                    self.crc = self.size = 0
                    continue
                data, crc, n = cast(Future[tuple[bytes, int, int]], fut).result()
                self._out(data)
                self.crc = isal_zlib.crc32_combine(self.crc, crc, n)
                self.size += n
            self._end_member()
        except BaseException as exc:
            self.error = exc
            # Keep draining so the producer never blocks on a full queue.
            while not ended and not self.abandoned and self.results.get() is not None:
                pass

    def _submit(self, block: bytes) -> None:
        if self.error is not None:
            raise self.error
        fut = self.pool.submit(_compress_block, block, self.tail, self.level)
        self.tail = block[-WINDOW:]
        self._queue(fut)

    def _queue(self, item: object) -> None:
        while True:
            try:
                self.results.put(item, timeout=0.1)
                return
            except queue.Full:
                if self.error is not None:
                    raise self.error from None

    def new_member(self) -> None:
        """End the gzip member after what was written so far and start another, with no
        history of the bytes before it: the output from `member_offsets[-1]` on (known
        once closed) is a gzip stream of its own, which a reader can start at. Every
        gzip reader reads the members one after the other as one stream (RFC 1952)."""
        if self.buffer:
            self._submit(bytes(self.buffer))
            self.buffer.clear()
        self.tail = b""
        self._queue(NEW_MEMBER)

    def write(self, data: Any) -> int:
        n = len(data)
        if not self.buffer and n == self.block_size:
            self._submit(bytes(data))
            return n
        self.buffer += data
        while len(self.buffer) >= self.block_size:
            self._submit(bytes(memoryview(self.buffer)[: self.block_size]))
            del self.buffer[: self.block_size]
        return n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """Finish the gzip member; raises what went wrong downstream, if anything."""
        if self.finished:
            return
        self.finished = True
        try:
            if self.buffer:
                self._submit(bytes(self.buffer))
                self.buffer.clear()
            self.results.put(None)
            self.thread.join()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            super().close()
        if self.error is not None:
            raise self.error

    def abandon(self) -> None:
        """Stop after a failure elsewhere, without finishing the member."""
        self.finished = self.abandoned = True
        self.error = self.error or RuntimeError("abandoned")
        while True:  # unblock the writer thread, whatever it waits on
            try:
                self.results.get_nowait()
            except queue.Empty:
                break
        self.results.put(None)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.thread.join(timeout=5)
