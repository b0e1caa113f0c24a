"""ParallelGzipWriter: what it writes must be one plain gzip member any tool reads.

Backups are restored with `gzip -dc | tar -x` when itsup is gone, so the
output is checked with Python's gzip, ISA-L and the real `gzip` binary, for
every way the tar stream can reach the compressor: sizes on and around the
1 MiB block boundary, tiny and huge write() calls, text that compresses and
random bytes that must be stored instead. Failures of the sink must reach the
caller, and abandoning a half-written stream must stop every thread.
"""

from __future__ import annotations

import errno
import gzip
import random
import subprocess
import threading
import time
import zlib

import pytest
from isal import igzip

from itsup.pipeline.compress import BLOCK_SIZE, ParallelGzipWriter

MiB = 1 << 20


class Sink:
    """Where compressed bytes go; fails with ENOSPC once `limit` bytes are exceeded."""

    def __init__(self, limit: int | None = None) -> None:
        self.data = bytearray()
        self.limit = limit

    def write(self, data: bytes) -> int:
        if self.limit is not None and len(self.data) + len(data) > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.data += data
        return len(data)


def text(n: int, seed: int = 1) -> bytes:
    """Log-like lines: repetitive, as configs and logs in a host tree are."""
    rng = random.Random(seed)
    words = [b"GET", b"POST", b"/api/v1/items", b"/health", b"200", b"404", b"traefik", b"web"]
    lines = []
    size = 0
    while size < n:
        line = b"2025-01-15T03:00:%02d %s %s %d\n" % (
            rng.randrange(60),
            rng.choice(words),
            rng.choice(words),
            rng.randrange(1000),
        )
        lines.append(line)
        size += len(line)
    return b"".join(lines)[:n]


def noise(n: int, seed: int = 2) -> bytes:
    return random.Random(seed).randbytes(n)


def mixed_runs(n: int) -> list[bytes]:
    """Random and text runs (alternating) that straddle block boundaries, as in a host tree."""
    runs = []
    size = 0
    while size < n:
        i = len(runs)
        run = min(300_000 + 77_777 * (i % 3), n - size)
        runs.append(text(run, seed=i) if i % 2 else noise(run, seed=i))
        size += run
    return runs


def mixed(n: int) -> bytes:
    return b"".join(mixed_runs(n))


KINDS = {"text": text, "random": noise, "mixed": mixed}


def compress(data: bytes, chunk: int = 4096, threads: int = 2) -> bytes:
    sink = Sink()
    writer = ParallelGzipWriter(sink, threads=threads)
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        writer.write(bytes(view[start : start + chunk]))
    writer.close()
    return bytes(sink.data)


def gzip_binary(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["gzip", *args], input=data, capture_output=True, timeout=60)


def assert_one_member_of(out: bytes, data: bytes) -> None:
    """`out` is exactly one gzip member holding `data`, for every decoder a user might use."""
    assert out[:3] == b"\x1f\x8b\x08"
    single = zlib.decompressobj(wbits=31)
    assert single.decompress(out) == data
    assert single.eof and single.unused_data == b"", "more than one gzip member"
    assert gzip.decompress(out) == data
    assert igzip.decompress(out) == data
    proc = gzip_binary("-dc", data=out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == data


# -- output is standard gzip ----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, BLOCK_SIZE, BLOCK_SIZE + 1, 5 * BLOCK_SIZE + 12_345])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_sizes_round_trip(kind: str, size: int) -> None:
    data = KINDS[kind](size)
    assert_one_member_of(compress(data), data)


@pytest.mark.parametrize("chunk", [1, 511, 4096, BLOCK_SIZE, 3 * BLOCK_SIZE + 1])
def test_write_sizes_do_not_matter(chunk: int) -> None:
    # Single-byte writes are slow in Python: keep that case just over one block.
    data = mixed(BLOCK_SIZE + 1 if chunk == 1 else 4 * BLOCK_SIZE + 999)
    out = compress(data, chunk=chunk)
    assert_one_member_of(out, data)
    if chunk != 1:
        assert out == compress(data, chunk=4096), "output depends on how writes were cut"


@pytest.mark.parametrize("threads", [1, 4])
def test_thread_counts(threads: int) -> None:
    data = mixed(6 * BLOCK_SIZE + 3)
    assert_one_member_of(compress(data, chunk=64 * 1024, threads=threads), data)


def test_random_blocks_are_stored() -> None:
    data = noise(8 * MiB)
    out = compress(data, chunk=BLOCK_SIZE)
    assert len(out) < len(data) * 1.001
    assert_one_member_of(out, data)


def test_text_blocks_are_compressed() -> None:
    data = text(4 * MiB)
    out = compress(data)
    assert len(out) < 0.3 * len(data)
    assert_one_member_of(out, data)


def test_mixed_stream_compresses_text_and_stores_random() -> None:
    runs = mixed_runs(6 * MiB)
    data = b"".join(runs)
    random_bytes = sum(len(run) for run in runs[::2])
    text_bytes = len(data) - random_bytes
    out = compress(data)
    # Random runs cost their size (blocks holding some text may be deflated, never larger);
    # the text, most of it in blocks that are deflated, shrinks to well under half.
    assert len(out) < random_bytes * 1.001 + 0.5 * text_bytes
    assert_one_member_of(out, data)


# -- the trailer: CRC-32 and length ---------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "random"])
def test_trailer_catches_a_flipped_byte(kind: str) -> None:
    data = KINDS[kind](3 * BLOCK_SIZE + 100)
    out = compress(data)
    assert gzip_binary("-t", data=out).returncode == 0
    for at in (len(out) // 2, len(out) - 6, len(out) - 2):  # data, CRC-32, length
        damaged = bytearray(out)
        damaged[at] ^= 0x01
        proc = gzip_binary("-t", data=bytes(damaged))
        assert proc.returncode != 0, f"gzip -t accepted a flipped byte at {at}"
        with pytest.raises((OSError, EOFError, zlib.error)):
            gzip.decompress(bytes(damaged))


# -- failures -------------------------------------------------------------------------


def writer_threads() -> set[threading.Thread]:
    return {
        t for t in threading.enumerate() if t.name == "gzip-writer" or t.name.startswith("gzip_")
    }


def wait_gone(threads: set[threading.Thread], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = {t for t in threads if t.is_alive()}
        if not left:
            return
        time.sleep(0.02)
    raise AssertionError(f"threads still running: {sorted(t.name for t in left)}")


def abandon_promptly(writer: ParallelGzipWriter, before: set[threading.Thread]) -> None:
    started = time.monotonic()
    writer.abandon()
    assert time.monotonic() - started < 3
    wait_gone(writer_threads() - before)


@pytest.mark.parametrize("limit", [0, 3 * MiB], ids=["header", "mid-stream"])
def test_sink_failure_surfaces_from_write_or_close(limit: int) -> None:
    before = writer_threads()
    writer = ParallelGzipWriter(Sink(limit))
    data = noise(2 * MiB)
    with pytest.raises(OSError) as failure:  # either call may report it
        for _ in range(20):
            writer.write(data)
        writer.close()
    assert failure.value.errno == errno.ENOSPC
    abandon_promptly(writer, before)


def test_sink_failure_on_the_trailer_surfaces_from_close() -> None:
    data = noise(2 * MiB)
    complete = len(compress(data))
    before = writer_threads()
    sink = Sink(limit=complete - 1)
    writer = ParallelGzipWriter(sink)
    writer.write(data)
    outcome: list[BaseException | None] = []

    def finish() -> None:
        try:
            writer.close()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    closer = threading.Thread(target=finish, daemon=True)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "close() hangs when the last write to the sink fails"
    assert isinstance(outcome[0], OSError) and outcome[0].errno == errno.ENOSPC
    wait_gone(writer_threads() - before)


def test_abandon_stops_without_finishing_the_member() -> None:
    before = writer_threads()
    sink = Sink()
    writer = ParallelGzipWriter(sink)
    for _ in range(8):
        writer.write(noise(MiB))
    abandon_promptly(writer, before)
    out = bytes(sink.data)
    assert gzip_binary("-t", data=out).returncode != 0, "an abandoned stream looks complete"
    with pytest.raises(EOFError):
        gzip.decompress(out)


# -- a second member where the dumps begin -----------------------------------------------


@pytest.mark.parametrize("before", [0, 1, BLOCK_SIZE, 3 * BLOCK_SIZE + 4321])
def test_new_member_starts_a_stream_a_reader_can_enter(before: int) -> None:
    """What follows new_member() decompresses on its own from member_offsets[-1], and the
    whole output is still one stream to every gzip reader (members read in turn)."""
    head, tail = mixed(before), text(2 * BLOCK_SIZE + 999, seed=5)
    sink = Sink()
    writer = ParallelGzipWriter(sink, threads=2)
    writer.write(head)
    writer.new_member()
    for start in range(0, len(tail), 70_000):
        writer.write(tail[start : start + 70_000])
    writer.close()
    out = bytes(sink.data)
    [offset] = writer.member_offsets
    assert out[offset : offset + 3] == b"\x1f\x8b\x08"
    assert gzip.decompress(out[offset:]) == tail
    proc = gzip_binary("-dc", data=out[offset:])
    assert proc.returncode == 0 and proc.stdout == tail
    assert gzip.decompress(out) == igzip.decompress(out) == head + tail
    proc = gzip_binary("-dc", data=out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == head + tail
    # The first member ends right before it, with its own CRC and length.
    first = zlib.decompressobj(wbits=31)
    assert first.decompress(out[:offset]) == head and first.eof and not first.unused_data
