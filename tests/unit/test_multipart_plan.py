"""The multipart plan of the S3 writer: part sizes, parts in flight, memory or spool.

No server: `part_plan` is a pure function, simulated here over whole objects
from 1 MiB to S3's 5 TiB limit, and the writer itself runs against a stub
client with the limits scaled down. What must hold at every object size:
at most 10,000 parts, every part 5 MiB..5 GiB (the last may be smaller),
part buffers in memory within PART_MEMORY, and an object over 5 TiB refused.
"""

from __future__ import annotations

import errno
import io
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pytest

from itsup.errors import StorageError
from itsup.storage import s3
from itsup.storage.s3 import (
    MAX_OBJECT,
    MAX_PART,
    MAX_PARTS,
    MIN_PART,
    PART_MEMORY,
    PROCESS_MEMORY_BUDGET,
    S3Writer,
    part_plan,
)

MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40


@dataclass
class Simulated:
    parts: list[int] = field(default_factory=list)  # part sizes in order
    peak_memory: int = 0  # bytes of part buffers held in memory, at most
    spooled_parts: int = 0
    peak_spool: int = 0  # bytes in spool files, at most


def simulate(total: int, start: int, concurrency: int) -> Simulated:
    """Write `total` bytes the way S3Writer does, with every upload as slow as can be.

    While part n fills, the plan's `in_flight` earlier parts are still uploading;
    a part handed over joins them, and they drain (oldest first) only as far as
    the next part's plan requires.
    """
    sim = Simulated()
    inflight: deque[tuple[int, bool]] = deque()  # (size, spooled)
    left, number = total, 1

    def held() -> tuple[int, int]:
        """Bytes of parts handed over: in memory, in spool files."""
        memory = sum(n for n, in_spool in inflight if not in_spool)
        return memory, sum(n for n, _ in inflight) - memory

    while left > 0:
        assert number <= MAX_PARTS, f"{total} bytes need more than {MAX_PARTS} parts"
        plan = part_plan(number, start, concurrency)
        assert len(inflight) <= plan.in_flight <= concurrency
        memory, spool = held()
        # While this part fills, its whole planned size is held: in memory or spooled.
        sim.peak_memory = max(sim.peak_memory, memory + (0 if plan.spooled else plan.size))
        sim.peak_spool = max(sim.peak_spool, spool + (plan.size if plan.spooled else 0))
        size = min(plan.size, left)
        inflight.append((size, plan.spooled))  # handed over: the buffer is the body
        sim.peak_memory = max(sim.peak_memory, held()[0])
        sim.parts.append(size)
        sim.spooled_parts += plan.spooled
        left -= size
        if number < MAX_PARTS:
            following = part_plan(number + 1, start, concurrency)
            while len(inflight) > following.in_flight:
                inflight.popleft()
        number += 1
    return sim


SIZES = {
    "1 MiB": MiB,
    "5 GiB": 5 * GiB,
    "100 GiB": 100 * GiB,
    "1 TiB": TiB,
    "4.99 TiB": int(4.99 * TiB),
    "5 TiB": MAX_OBJECT,
}
STARTS = [5 * MiB, 16 * MiB, 100 * MiB, 5 * GiB]  # part_size_mb: 5, 16 (default), 100, 5120


@pytest.mark.parametrize("concurrency", [1, 4, 64])
@pytest.mark.parametrize("start", STARTS, ids=lambda n: f"start-{n // MiB}MiB")
@pytest.mark.parametrize("total", list(SIZES.values()), ids=list(SIZES))
def test_every_size_up_to_5_tib_fits_the_limits(total: int, start: int, concurrency: int) -> None:
    sim = simulate(total, start, concurrency)
    assert sum(sim.parts) == total
    assert len(sim.parts) <= MAX_PARTS
    *full, last = sim.parts
    assert all(MIN_PART <= n <= MAX_PART for n in full)
    assert 0 < last <= MAX_PART
    assert sim.peak_memory <= PART_MEMORY, f"{sim.peak_memory / MiB:.0f} MiB of parts in memory"
    # A spool holds one part per upload slot plus the one filling, never the object.
    assert sim.peak_spool <= (s3.SPOOLED_IN_FLIGHT + 1) * MAX_PART


def test_the_budget_leaves_room_for_the_rest_of_the_process() -> None:
    assert PROCESS_MEMORY_BUDGET <= 300 * 1000 * 1000
    assert PART_MEMORY + 100 * MiB <= PROCESS_MEMORY_BUDGET


def test_default_plan_figures() -> None:
    """The figures docs/design.md gives for the defaults (16 MiB start, 4 in flight)."""
    plans = {n: part_plan(n, 16 * MiB, 4) for n in (1, 1001, 2001, 3001, 4001, 8001, 9001)}
    assert [(p.size // MiB, p.in_flight, p.spooled) for p in plans.values()] == [
        (16, 4, False),
        (32, 3, False),
        (64, 1, False),
        (128, 2, True),
        (256, 2, True),
        (4096, 2, True),
        (5120, 2, True),
    ]
    assert max(p.memory for p in plans.values()) <= PART_MEMORY
    # Where parts start to spool: the first 3000 parts hold 112,000 MiB (109 GiB).
    assert sum(part_plan(n, 16 * MiB, 4).size for n in range(1, 3001)) == 112_000 * MiB
    # The ceiling: 10,000 parts of the plan hold well over S3's 5 TiB.
    assert sum(part_plan(n, 16 * MiB, 4).size for n in range(1, MAX_PARTS + 1)) > 12 * TiB


def test_the_smallest_start_still_reaches_5_tib() -> None:
    capacity = sum(part_plan(n, MIN_PART, 4).size for n in range(1, MAX_PARTS + 1))
    assert capacity >= MAX_OBJECT


def test_no_part_number_outside_what_s3_allows() -> None:
    with pytest.raises(ValueError):
        part_plan(0, 16 * MiB, 4)
    with pytest.raises(ValueError):
        part_plan(MAX_PARTS + 1, 16 * MiB, 4)


# -- the writer itself, against a stub client ----------------------------------------------


class StubClient:
    """Records multipart calls; each upload takes a little while, as on a network."""

    def __init__(self, delay: float = 0.002) -> None:
        self.delay = delay
        self.lock = threading.Lock()
        self.bodies: dict[int, bytes] = {}
        self.kinds: dict[int, str] = {}
        self.calls: list[str] = []
        self.spools: list[BinaryIO] = []

    def create_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        self.calls.append("create")
        return {"UploadId": "u1"}

    def upload_part(self, *, PartNumber: int, Body: Any, **kw: Any) -> dict[str, Any]:
        time.sleep(self.delay)
        if isinstance(Body, bytearray):
            data, kind = bytes(Body), "memory"
        else:
            Body.seek(0)
            data, kind = Body.read(), "spool"
            with self.lock:
                self.spools.append(Body)
        with self.lock:
            self.bodies[PartNumber] = data
            self.kinds[PartNumber] = kind
        return {"ETag": f'"{PartNumber}"'}

    def complete_multipart_upload(self, **kw: Any) -> None:
        self.calls.append("complete")

    def abort_multipart_upload(self, **kw: Any) -> None:
        self.calls.append("abort")

    def joined(self) -> bytes:
        return b"".join(self.bodies[n] for n in sorted(self.bodies))


class StubTarget:
    name = "s3://stub"
    bucket = "stub"

    def __init__(self, part_size: int, max_concurrency: int) -> None:
        self.client = StubClient()
        self.pool = ThreadPoolExecutor(max_concurrency)
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.stored: bytes | None = None

    def extra_args(self) -> dict[str, Any]:
        return {}

    def md5_args(self, body: Any) -> dict[str, Any]:
        return {}  # no Object Lock

    def put_body(self, key: str, body: Any) -> None:
        self.stored = bytes(body) if isinstance(body, bytearray) else body.read()

    def stat(self, key: str) -> Any:
        size = len(self.client.joined()) if self.stored is None else len(self.stored)
        return type("Info", (), {"size": size})()


KiB = 1024


@pytest.fixture
def scaled(monkeypatch: pytest.MonkeyPatch) -> None:
    """S3's limits divided by 1024: parts of 5 KiB..5 MiB, growth every 10 parts."""
    monkeypatch.setattr(s3, "MIN_PART", 5 * KiB)
    monkeypatch.setattr(s3, "MAX_PART", 5 * MiB)
    monkeypatch.setattr(s3, "MAX_PARTS", 100)
    monkeypatch.setattr(s3, "PART_GROWTH_EVERY", 10)
    monkeypatch.setattr(s3, "MAX_OBJECT", 50 * MiB)
    monkeypatch.setattr(s3, "PART_MEMORY", 160 * KiB)


def pattern(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


def test_writer_follows_the_plan_from_memory_to_spool(scaled: None) -> None:
    """16 KiB parts in memory, growing, then spooled once they pass half the budget."""
    target = StubTarget(16 * KiB, 4)
    writer = S3Writer(target, "k")  # type: ignore[arg-type]
    data = pattern(3 * MiB + 12_345)
    peak = 0
    chunk = 10_000
    for start in range(0, len(data), chunk):
        writer.write(data[start : start + chunk])
        peak = max(peak, writer.held_memory())
    assert writer.commit() == len(data)
    client = target.client
    assert client.joined() == data
    assert client.calls == ["create", "complete"]
    assert peak <= s3.PART_MEMORY
    kinds = [client.kinds[n] for n in sorted(client.kinds)]
    assert kinds[:30] == ["memory"] * 30 and set(kinds[30:]) == {"spool"}
    assert all(f.closed for f in client.spools), "a spool file was left open"
    target.pool.shutdown()


def test_writer_small_object_is_one_put(scaled: None) -> None:
    target = StubTarget(16 * KiB, 4)
    writer = S3Writer(target, "k")  # type: ignore[arg-type]
    writer.write(b"x" * 1000)
    assert writer.commit() == 1000
    assert target.stored == b"x" * 1000 and target.client.calls == []
    target.pool.shutdown()


def test_writer_stream_past_5_tib_is_stopped_and_aborted(scaled: None) -> None:
    target = StubTarget(5 * MiB, 2)  # 5 MiB parts: spooled (over half of 160 KiB)
    writer = S3Writer(target, "big")  # type: ignore[arg-type]
    piece = pattern(MiB)
    with pytest.raises(StorageError, match=r"grew past 52,428,800 bytes \(5 TiB\).*aborted"):
        for _ in range(51):
            writer.write(piece)
    assert writer.size == 50 * MiB  # exactly the limit was accepted
    assert target.client.calls == ["create", "abort"]
    with pytest.raises(StorageError):
        writer.write(b"more")
    target.pool.shutdown()


def test_size_hint_over_5_tib_is_refused_before_anything_is_sent() -> None:
    target = StubTarget(16 * MiB, 4)
    with pytest.raises(StorageError, match=r"more than S3 stores in one object.*5 TiB"):
        S3Writer(target, "big", size_hint=MAX_OBJECT + 1)  # type: ignore[arg-type]
    S3Writer(target, "big", size_hint=MAX_OBJECT).abort()  # type: ignore[arg-type]
    assert target.client.calls == []
    target.pool.shutdown()


def test_a_spool_that_cannot_be_written_is_a_storage_error(
    scaled: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FullDisk(io.BytesIO):
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(s3.tempfile, "TemporaryFile", FullDisk)
    target = StubTarget(5 * MiB, 2)  # spooled parts
    writer = S3Writer(target, "k")  # type: ignore[arg-type]
    with pytest.raises(StorageError, match=r"cannot spool a part .*No space left on device"):
        writer.write(pattern(MiB))
    writer.abort()
    target.pool.shutdown()
