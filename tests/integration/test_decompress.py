"""gunzip_reader: what restore and verify read archives through.

It must give back exactly what ParallelGzipWriter (or any gzip tool) wrote,
read concatenated members and skip zero padding as `gzip -d` does, turn a
truncated or altered stream into an error rather than short output, pass on
a failure of the stream below it, and stop its thread when closed early.
"""

from __future__ import annotations

import gzip
import io
import threading
import time
import zlib
from typing import Any

import pytest
from isal import isal_zlib
from test_compress import KINDS, compress

from itsup.pipeline.compress import BLOCK_SIZE
from itsup.pipeline.decompress import gunzip_reader

MiB = 1 << 20


def gunzip(data: bytes, piece: int = 64 * 1024) -> bytes:
    reader = gunzip_reader(io.BytesIO(data))
    out = bytearray()
    while chunk := reader.read(piece):
        out += chunk
    reader.close()
    return bytes(out)


@pytest.mark.parametrize("size", [0, 1, BLOCK_SIZE + 1, 5 * BLOCK_SIZE + 12_345])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_reads_back_what_the_writer_wrote(kind: str, size: int) -> None:
    data = KINDS[kind](size)
    assert gunzip(compress(data)) == data


def test_concatenated_members_and_zero_padding() -> None:
    a, b = KINDS["text"](300_000), KINDS["random"](200_000, 5)
    assert gunzip(gzip.compress(a) + compress(b)) == a + b
    assert gunzip(compress(a) + b"\0" * 4096) == a


def test_a_run_of_zeros_comes_out_in_bounded_pieces() -> None:
    reader = gunzip_reader(io.BytesIO(gzip.compress(bytes(64 * MiB), 1)))
    sizes = []
    while chunk := reader.read(16 * MiB):
        sizes.append(len(chunk))
    reader.close()
    assert sum(sizes) == 64 * MiB
    assert max(sizes) <= 16 * MiB


@pytest.mark.parametrize("where", ["truncated", "data", "crc", "length"])
def test_damage_is_an_error_not_short_output(where: str) -> None:
    data = KINDS["mixed"](3 * BLOCK_SIZE)
    out = bytearray(compress(data))
    if where == "truncated":
        del out[-100:]
    else:
        out[{"data": len(out) // 2, "crc": len(out) - 6, "length": len(out) - 2}[where]] ^= 1
    with pytest.raises((EOFError, OSError, zlib.error, isal_zlib.error)):
        gunzip(bytes(out))


class Failing(io.RawIOBase):
    """A stream that fails after `good` bytes, as a broken download does."""

    def __init__(self, data: bytes, good: int) -> None:
        self.data, self.good, self.pos = data, good, 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.pos >= self.good:
            raise ConnectionResetError("the download broke off")
        n = min(len(b), self.good - self.pos)
        b[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_a_failure_below_reaches_the_reader() -> None:
    data = compress(KINDS["random"](4 * MiB))
    reader = gunzip_reader(io.BufferedReader(Failing(data, MiB)))  # type: ignore[arg-type]
    with pytest.raises(ConnectionResetError):
        while reader.read(MiB):
            pass
    reader.close()


def test_closing_early_stops_the_thread() -> None:
    before = set(threading.enumerate())
    reader = gunzip_reader(io.BytesIO(compress(KINDS["text"](8 * MiB))))
    assert reader.read(1000)
    reader.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and set(threading.enumerate()) - before:
        time.sleep(0.02)
    assert not set(threading.enumerate()) - before
