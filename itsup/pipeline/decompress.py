"""gzip decompression on a thread of its own, with a deep queue.

ISA-L inflates at about 1 GB/s and releases the GIL, so a background thread
keeps the tar reader fed while it works; a queue of several 1 MiB pieces
absorbs the jitter between the two. Output per call is capped, so a run of
zeros (a sparse file) never inflates into one huge buffer. Concatenated
gzip members are read in turn, as `gzip -d` does; the CRC-32 and length of
each member are checked by ISA-L.
"""

from __future__ import annotations

import io
import queue
import threading
from typing import Any, BinaryIO

from isal import isal_zlib

IN_CHUNK = 8 << 20  # one fetched S3 range: passed through without a copy
OUT_MAX = 1 << 20
IN_PIECE = 256 << 10
_EOF = object()


class GunzipReader(io.RawIOBase):
    """A readable stream of the decompressed content of a gzip `upstream`."""

    def __init__(self, upstream: BinaryIO, depth: int = 16) -> None:
        super().__init__()
        self.upstream = upstream
        self.q: queue.Queue[Any] = queue.Queue(depth)
        self.current = memoryview(b"")
        self.done = False
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="gunzip", daemon=True)
        self.thread.start()

    def _put(self, item: Any) -> bool:
        while not self.stopped:
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            self._inflate()
        except BaseException as exc:
            self._put(exc)
            return
        self._put(_EOF)

    def _inflate(self) -> None:
        d = isal_zlib.decompressobj(31)
        started = False  # inside a member
        pending = b""
        while not self.stopped:
            data = pending or self.upstream.read(IN_CHUNK)
            pending = b""
            if not data:
                if started:
                    raise EOFError("compressed data ended before the end of the gzip stream")
                return
            if not started and not data.strip(b"\0"):
                return  # zero padding after the last member, as gzip tolerates
            started = True
            view = memoryview(data)
            for start in range(0, len(data), IN_PIECE):
                # Small input pieces keep `unconsumed_tail` (a copy) small.
                out = d.decompress(view[start : start + IN_PIECE], OUT_MAX)
                while True:
                    if out and not self._put(out):
                        return
                    if not d.unconsumed_tail:
                        break
                    out = d.decompress(d.unconsumed_tail, OUT_MAX)
                if d.eof:  # a member ended: anything after it starts the next one
                    pending = d.unused_data + bytes(view[start + IN_PIECE :])
                    d = isal_zlib.decompressobj(31)
                    started = False
                    break

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.current:
            if self.done:
                return 0
            item = self.q.get()
            if item is _EOF:
                self.done = True
                return 0
            if isinstance(item, BaseException):
                self.done = True
                raise item
            self.current = memoryview(item)
        n = min(len(b), len(self.current))
        b[:n] = self.current[:n]
        self.current = self.current[n:]
        return n

    def close(self) -> None:
        self.stopped = True
        super().close()
