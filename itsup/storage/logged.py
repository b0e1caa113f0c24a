"""A wrapper that logs every call to a target, with its time, at debug level.

The records (logger `itsup.storage`, level DEBUG) say what was asked of the
storage and how long each answer took, which is where a slow or failing run
spends its time; a handler at debug level shows them. Keys and target names
are logged; never credentials (targets' names hold none) and never data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO, TypeVar

from itsup.errors import ItsupError, StorageError
from itsup.storage.base import ObjectInfo, ObjectWriter, Retention, Target

log = logging.getLogger("itsup.storage")
T = TypeVar("T")


def _failure(exc: BaseException) -> str:
    return exc.message if isinstance(exc, ItsupError) else f"{type(exc).__name__}: {exc}"


def _timed(name: str, what: str, call: Callable[[], T]) -> T:
    if not log.isEnabledFor(logging.DEBUG):
        return call()
    started = time.monotonic()
    try:
        result = call()
    except BaseException as exc:
        log.debug(
            "%s: %s failed after %.3f s: %s", name, what, time.monotonic() - started, _failure(exc)
        )
        raise
    log.debug("%s: %s (%.3f s)", name, what, time.monotonic() - started)
    return result


class LoggedWriter:
    """A streaming upload whose end (commit or abort) is logged with its size and time."""

    def __init__(self, inner: ObjectWriter, name: str, key: str) -> None:
        self.inner = inner
        self.name = name
        self.key = key
        self.started = time.monotonic()
        self.written = 0

    def write(self, data: bytes) -> int:
        n = self.inner.write(data)
        self.written += n
        return n

    def commit(self) -> int:
        size = _timed(self.name, f"commit {self.key}", self.inner.commit)
        log.debug(
            "%s: wrote %s, %d bytes in %.3f s",
            self.name,
            self.key,
            size,
            time.monotonic() - self.started,
        )
        return size

    def abort(self) -> None:
        log.debug("%s: abort %s after %d bytes", self.name, self.key, self.written)
        self.inner.abort()


class LoggedTarget:
    """`inner`, with each call logged at debug level."""

    def __init__(self, inner: Target) -> None:
        self.inner = inner
        self.name = inner.name

    def put(self, key: str, data: bytes) -> None:
        _timed(self.name, f"put {key} ({len(data)} bytes)", lambda: self.inner.put(key, data))

    def get(self, key: str) -> bytes:
        return _timed(self.name, f"get {key}", lambda: self.inner.get(key))

    def open_writer(self, key: str) -> ObjectWriter:
        writer = _timed(self.name, f"open writer {key}", lambda: self.inner.open_writer(key))
        return LoggedWriter(writer, self.name, key)

    def open_reader(self, key: str, start: int = 0) -> BinaryIO:
        at = f" at {start}" if start else ""
        return _timed(
            self.name, f"open reader {key}{at}", lambda: self.inner.open_reader(key, start)
        )

    def stat(self, key: str) -> ObjectInfo:
        return _timed(self.name, f"stat {key}", lambda: self.inner.stat(key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        started = time.monotonic()
        listed = 0
        outcome = "stopped early"  # the caller stopped reading (GeneratorExit)
        try:
            for info in self.inner.list(prefix):
                listed += 1
                yield info
            outcome = "done"
        except Exception as exc:
            outcome = f"failed: {_failure(exc)}"
            raise
        finally:
            log.debug(
                "%s: list %s, %d objects, %s (%.3f s)",
                self.name,
                prefix,
                listed,
                outcome,
                time.monotonic() - started,
            )

    def delete(self, key: str) -> None:
        _timed(self.name, f"delete {key}", lambda: self.inner.delete(key))

    def delete_many(self, keys: Sequence[str]) -> dict[str, StorageError]:
        """One record for the call (its first and last key, how many failed), not one
        per key: a prune deletes thousands."""
        if not log.isEnabledFor(logging.DEBUG) or not keys:
            return self.inner.delete_many(keys)
        what = f"delete {len(keys)} object(s), {keys[0]} .. {keys[-1]}"
        failures = _timed(self.name, what, lambda: self.inner.delete_many(keys))
        if failures:
            log.debug("%s: %d of %d not deleted", self.name, len(failures), len(keys))
        return failures

    def copy(self, src: str, dst: str) -> None:
        _timed(self.name, f"copy {src} to {dst}", lambda: self.inner.copy(src, dst))

    def cleanup_incomplete(self, prefix: str) -> int:
        return _timed(
            self.name, f"clean up {prefix}", lambda: self.inner.cleanup_incomplete(prefix)
        )

    def may_lock(self) -> bool:
        return _timed(self.name, "object lock enabled?", self.inner.may_lock)

    def retention(self, key: str) -> Retention | None:
        return _timed(self.name, f"retention {key}", lambda: self.inner.retention(key))
