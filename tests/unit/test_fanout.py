"""The fan-out in front of several targets: every sink gets the same bytes, each at
its own pace, within a bounded queue; a sink that fails or stalls is dropped (and
aborted by its own thread) while the others go on."""

from __future__ import annotations

import threading
import time

import pytest

from itsup.errors import StorageError
from itsup.pipeline.fanout import FanOut

KiB = 1024


class Sink:
    """Collects what it is given; can fail after some bytes, or block until released."""

    def __init__(self, fail_after: int | None = None, delay: float = 0.0) -> None:
        self.data = bytearray()
        self.fail_after = fail_after
        self.delay = delay
        self.release = threading.Event()
        self.blocked = False
        self.aborted = threading.Event()

    def write(self, data: bytes) -> int:
        if self.blocked:
            self.release.wait()
        if self.delay:
            time.sleep(self.delay)
        if self.fail_after is not None and len(self.data) + len(data) > self.fail_after:
            raise StorageError("disk on fire")
        self.data += data
        return len(data)

    def abort(self) -> None:
        self.aborted.set()


def chunks(n: int, size: int = 64 * KiB) -> list[bytes]:
    return [bytes([i % 251]) * size for i in range(n)]


def test_every_sink_gets_every_byte_in_order() -> None:
    sinks = {"a": Sink(), "b": Sink(delay=0.001), "c": Sink()}
    fan = FanOut(sinks, buffer_bytes=256 * KiB, stall_timeout=10)  # type: ignore[arg-type]
    expected = b"".join(chunks(50))
    for chunk in chunks(50):
        fan.write(chunk)
    fan.finish()
    assert fan.live == ["a", "b", "c"] and not fan.failures
    assert all(bytes(s.data) == expected for s in sinks.values())
    assert not any(s.aborted.is_set() for s in sinks.values())  # the owner commits them
    assert fan.size == len(expected)


def test_a_failing_sink_is_dropped_and_aborted_the_others_complete() -> None:
    sinks = {"good": Sink(), "bad": Sink(fail_after=300 * KiB)}
    fan = FanOut(sinks, buffer_bytes=256 * KiB, stall_timeout=10)  # type: ignore[arg-type]
    for chunk in chunks(40):
        fan.write(chunk)
    fan.finish()
    assert fan.live == ["good"]
    assert "disk on fire" in str(fan.failures["bad"])
    assert sinks["bad"].aborted.wait(5)
    assert len(sinks["good"].data) == 40 * 64 * KiB


def test_a_stalled_sink_is_dropped_after_the_stall_timeout_within_its_buffer() -> None:
    stuck, fast = Sink(), Sink()
    stuck.blocked = True
    fan = FanOut({"stuck": stuck, "fast": fast}, buffer_bytes=256 * KiB, stall_timeout=0.5)  # type: ignore[dict-item]
    started = time.monotonic()
    peak = 0
    for chunk in chunks(40):
        fan.write(chunk)
        branch = fan.branches[0]
        peak = max(peak, branch.queued)
    fan.finish()
    took = time.monotonic() - started
    assert fan.live == ["fast"] and len(fast.data) == 40 * 64 * KiB
    error = fan.failures["stuck"]
    assert "too slow" in str(error) and "target_stall_timeout" in str(error)
    assert 0.4 < took < 5, took  # waited about the stall timeout, once
    assert peak <= 256 * KiB  # never more than its buffer held for it
    stuck.release.set()  # its write returns: its thread aborts it
    assert stuck.aborted.wait(5)
    fan.close()


def test_a_slow_sink_that_keeps_moving_paces_the_stream_and_is_kept() -> None:
    slow, fast = Sink(delay=0.01), Sink()
    fan = FanOut({"slow": slow, "fast": fast}, buffer_bytes=128 * KiB, stall_timeout=2)  # type: ignore[dict-item]
    for chunk in chunks(30):
        fan.write(chunk)
    fan.finish()
    assert fan.live == ["slow", "fast"]
    assert slow.data == fast.data


def test_when_every_sink_failed_the_first_failure_is_raised() -> None:
    sinks = {"a": Sink(fail_after=0), "b": Sink(fail_after=0)}
    fan = FanOut(sinks, buffer_bytes=64 * KiB, stall_timeout=10)  # type: ignore[arg-type]
    with pytest.raises(StorageError, match="disk on fire"):
        for chunk in chunks(20):
            fan.write(chunk)
        fan.finish()
    fan.close()


def test_close_stops_the_threads_without_writing_the_rest() -> None:
    a, b = Sink(delay=0.01), Sink(delay=0.01)
    fan = FanOut({"a": a, "b": b}, buffer_bytes=1024 * KiB, stall_timeout=10)  # type: ignore[dict-item]
    for chunk in chunks(10):
        fan.write(chunk)
    fan.close()
    assert all(not branch.thread.is_alive() for branch in fan.branches if branch.thread)
    assert len(a.data) < 10 * 64 * KiB
