"""One stream written to several sinks at once, each at its own pace.

A backup to several targets reads and compresses the tree once; `FanOut` is
the sink `codec.encode` writes to. Each sink (a target's object writer) gets
its own thread and a bounded queue (`buffer_bytes`, a few MiB), so the
producer hands a chunk to every sink without waiting for any of them, as
long as each has room.

The policy when one sink's queue is full: the producer waits for it, so a
slow sink that keeps moving paces the whole stream (the run takes as long as
a backup to that target alone would). A sink that accepts nothing at all
for `stall_timeout` seconds while the producer waits is dropped: it fails
("too slow"), its queue is discarded, and the stream goes on to the others.
A sink whose write raises fails the same way. A failed sink is aborted by
its own thread (`abort()`, when it has one) once its current write returns.
When no sink is left, `write` raises the first failure.

Nothing here knows what a sink stores; whoever opened the sinks commits or
aborts those that did not fail, after `finish` (every byte written) or
`close` (the run is given up).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from itsup.errors import StorageError

log = logging.getLogger("itsup.backup")
MiB = 1024 * 1024
# Bytes queued per sink before the producer waits for it.
DEFAULT_BUFFER = 8 * MiB


class Sink(Protocol):
    def write(self, data: bytes) -> int: ...


@dataclass
class _Branch:
    name: str
    sink: Sink
    last_progress: float
    cond: threading.Condition = field(default_factory=threading.Condition)
    chunks: deque[bytes] = field(default_factory=deque)
    queued: int = 0  # bytes in `chunks`
    written: int = 0  # bytes the sink took
    ended: bool = False  # the producer sent everything
    drained: bool = False  # ... and the sink took all of it
    stopping: bool = False  # the run is given up: stop without writing the rest
    error: BaseException | None = None
    thread: threading.Thread | None = None


class FanOut:
    """`write` hands each chunk to every sink still alive; see the module docstring."""

    def __init__(
        self,
        sinks: dict[str, Sink],
        *,
        buffer_bytes: int = DEFAULT_BUFFER,
        stall_timeout: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not sinks:
            raise ValueError("a fan-out needs at least one sink")
        self.buffer_bytes = buffer_bytes
        self.stall_timeout = stall_timeout
        self.clock = clock
        self.size = 0
        self.branches = [_Branch(name, sink, clock()) for name, sink in sinks.items()]
        for branch in self.branches:
            branch.thread = threading.Thread(
                target=self._run, args=(branch,), name=f"fanout-{branch.name}", daemon=True
            )
            branch.thread.start()

    # -- what the owner sees -------------------------------------------------------------

    @property
    def live(self) -> list[str]:
        return [b.name for b in self.branches if b.error is None]

    @property
    def failures(self) -> dict[str, BaseException]:
        return {b.name: b.error for b in self.branches if b.error is not None}

    # -- the producer's side -------------------------------------------------------------

    def write(self, data: Any) -> int:
        chunk = bytes(data)  # one copy, shared by every queue
        for branch in self.branches:
            if branch.error is None:
                self._offer(branch, chunk)
        self._check_alive()
        self.size += len(chunk)
        return len(chunk)

    def _offer(self, branch: _Branch, chunk: bytes) -> None:
        with branch.cond:
            while branch.error is None and branch.queued + len(chunk) > self.buffer_bytes:
                if not branch.queued:
                    break  # one chunk larger than the buffer still goes through
                if not self._wait(branch):
                    return
            if branch.error is not None:
                return
            if not branch.queued:  # idle until now: the stall clock starts with this chunk
                branch.last_progress = self.clock()
            branch.chunks.append(chunk)
            branch.queued += len(chunk)
            branch.cond.notify_all()

    def _wait(self, branch: _Branch) -> bool:
        """Wait (holding `branch.cond`) for the sink to take something; drop it, and
        return False, once it has taken nothing for `stall_timeout` seconds."""
        idle = self.clock() - branch.last_progress
        if idle >= self.stall_timeout:
            behind = branch.queued / MiB
            self._fail(
                branch,
                StorageError(
                    f"target {branch.name} is too slow: it fell {behind:.1f} MiB behind and took "
                    f"nothing for {self.stall_timeout:g} s (backup.target_stall_timeout); "
                    "the other targets went on without it"
                ),
            )
            log.warning("%s", branch.error)
            return False
        branch.cond.wait(min(self.stall_timeout - idle, 1.0))
        return True

    def finish(self) -> None:
        """Wait until every sink still alive has taken every byte (the stall rule
        applies); raise the first failure when none is left."""
        for branch in self.branches:
            with branch.cond:
                branch.ended = True
                branch.cond.notify_all()
        for branch in self.branches:
            with branch.cond:
                while branch.error is None and not branch.drained:
                    if not self._wait(branch):
                        break
        for branch in self.branches:
            if branch.error is None and branch.thread is not None:
                branch.thread.join()
        self._check_alive()

    def close(self, grace: float | None = None) -> None:
        """Stop every thread without writing what is still queued. Threads of sinks
        still alive stop at once (their current write finishes first); a failed
        sink's thread, which may still be stuck in a write before it aborts, is
        waited for at most `grace` seconds (default: the stall timeout)."""
        for branch in self.branches:
            with branch.cond:
                branch.stopping = True
                branch.chunks.clear()
                branch.queued = 0
                branch.cond.notify_all()
        deadline = self.clock() + (self.stall_timeout if grace is None else grace)
        for branch in self.branches:
            if branch.thread is None:
                continue
            if branch.error is None:
                branch.thread.join()
                continue
            branch.thread.join(max(0.0, deadline - self.clock()))
            if branch.thread.is_alive():
                log.warning(
                    "target %s: its upload is still blocked; the next backup discards it",
                    branch.name,
                )

    def _check_alive(self) -> None:
        if any(b.error is None for b in self.branches):
            return
        errors = [b.error for b in self.branches if b.error is not None]
        assert errors
        raise errors[0]

    # -- each sink's thread --------------------------------------------------------------

    def _fail(self, branch: _Branch, error: BaseException) -> None:
        """Mark `branch` failed (holding its cond); its thread aborts the sink."""
        if branch.error is None:
            branch.error = error
        branch.chunks.clear()
        branch.queued = 0
        branch.cond.notify_all()

    def _run(self, branch: _Branch) -> None:
        while True:
            with branch.cond:
                while not (branch.chunks or branch.ended or branch.stopping or branch.error):
                    branch.cond.wait()
                if branch.error is not None:
                    break
                if branch.stopping:
                    return  # the owner aborts the sinks still alive
                if not branch.chunks:  # ended, and everything written
                    branch.drained = True
                    branch.cond.notify_all()
                    return
                chunk = branch.chunks[0]
            try:
                branch.sink.write(chunk)
            except BaseException as exc:  # a sink's failure is its own: the others go on
                with branch.cond:
                    self._fail(branch, exc)
                log.warning("target %s failed: %s", branch.name, getattr(exc, "message", exc))
                break
            with branch.cond:
                if branch.chunks and branch.chunks[0] is chunk:
                    branch.chunks.popleft()
                    branch.queued -= len(chunk)
                branch.written += len(chunk)
                branch.last_progress = self.clock()
                branch.cond.notify_all()
        abort = getattr(branch.sink, "abort", None)
        if abort is not None:
            with contextlib.suppress(Exception):
                abort()
