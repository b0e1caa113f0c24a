"""gzip decompression on a thread of its own, with a deep queue.

ISA-L inflates at about 1 GB/s and releases the GIL, so a background thread
keeps the tar reader fed while it works; a pipe of several 1 MiB pieces
absorbs the jitter between the two. Output per call is capped, so a run of
zeros (a sparse file) never inflates into one huge buffer. Concatenated
gzip members are read in turn, as `gzip -d` does; the CRC-32 and length of
each member are checked by ISA-L.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, BinaryIO

from isal import igzip_threaded, isal_zlib

from itsup.pipeline.compress import library_gzip
from itsup.pipeline.stream import Pipe, Worker

IN_CHUNK = 8 << 20  # one fetched S3 range: passed through without a copy
IN_PIECE = 256 << 10  # small input pieces keep `unconsumed_tail` (a copy) small
OUT_MAX = 1 << 20
DEPTH = 16


def inflate(upstream: Any, emit: Callable[[bytes], Any]) -> None:
    """Decompress every gzip member read from `upstream`, passing output to `emit`."""
    d = isal_zlib.decompressobj(31)
    started = False  # inside a member
    pending = b""
    while True:
        data = pending or upstream.read(IN_CHUNK)
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
            out = d.decompress(view[start : start + IN_PIECE], OUT_MAX)
            while True:
                if out:
                    emit(out)
                if not d.unconsumed_tail:
                    break
                out = d.decompress(d.unconsumed_tail, OUT_MAX)
            if d.eof:  # a member ended: anything after it starts the next one
                pending = d.unused_data + bytes(view[start + IN_PIECE :])
                d = isal_zlib.decompressobj(31)
                started = False
                break


def gunzip_reader(upstream: BinaryIO) -> BinaryIO:
    """A readable stream of the decompressed content of a gzip `upstream`."""
    if library_gzip("read"):
        return igzip_threaded.open(upstream, "rb")
    pipe = Pipe(DEPTH)

    def run() -> None:
        try:
            inflate(upstream, pipe.write)
        except BrokenPipeError:
            return  # the reader went away
        except BaseException as exc:
            pipe.fail(exc)
            return
        pipe.close()

    Worker(run, "gunzip").start()
    return pipe.reader  # type: ignore[return-value]
