"""A wrapper that tries a target's calls again when they fail in passing.

Only a `TransientError` is retried: a fault the target itself did not
retry. The S3 target leaves its requests to botocore's retry mode
(`max_attempts`, with backoff, for throttling, 5xx answers, resets and
timeouts), so what reaches this wrapper from S3 as a plain `StorageError`
has already had every attempt, and is not tried again here: retries are
never stacked on botocore's. What S3 does raise as transient is a body that
broke off after its request succeeded, which botocore does not retry.

Only calls that are safe to repeat are retried: `put` (replaces the whole
object), `get`, `stat`, `delete` (and the keys of `delete_many` that failed
in passing), `copy`, `cleanup_incomplete`, opening a reader, and a listing
until it has yielded its first object. A streaming write is not: its bytes
are gone once written, so `open_writer` is passed through, and a failed
upload fails the run (which cleans it up next time).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import BinaryIO, TypeVar

from itsup.errors import StorageError
from itsup.storage.base import ObjectInfo, ObjectWriter, Retention, Target, TransientError

log = logging.getLogger("itsup.storage")
T = TypeVar("T")

# Tries after the first, and the pause before each: 0.4 s, 0.8 s, ... at most 5 s.
RETRIES = 5
FIRST_PAUSE = 0.2
LONGEST_PAUSE = 5.0


def pause(failures: int) -> float:
    """Seconds to wait after the `failures`-th failure in a row."""
    return float(min(FIRST_PAUSE * 2**failures, LONGEST_PAUSE))


class RetryingTarget:
    """`inner`, with the calls that are safe to repeat tried again on a TransientError."""

    def __init__(
        self,
        inner: Target,
        retries: int = RETRIES,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.retries = retries
        self.sleep = sleep

    def _again(self, what: str, call: Callable[[], T]) -> T:
        failures = 0
        while True:
            try:
                return call()
            except TransientError as exc:
                failures += 1
                if failures > self.retries:
                    raise
                log.debug(
                    "%s: %s failed (%s); try %d of %d",
                    self.name,
                    what,
                    exc.message,
                    failures + 1,
                    self.retries + 1,
                )
                self.sleep(pause(failures))

    def put(self, key: str, data: bytes) -> None:
        self._again(f"put {key}", lambda: self.inner.put(key, data))

    def get(self, key: str) -> bytes:
        return self._again(f"get {key}", lambda: self.inner.get(key))

    def open_writer(self, key: str) -> ObjectWriter:
        return self.inner.open_writer(key)

    def open_reader(self, key: str, start: int = 0) -> BinaryIO:
        return self._again(f"open {key}", lambda: self.inner.open_reader(key, start))

    def stat(self, key: str) -> ObjectInfo:
        return self._again(f"stat {key}", lambda: self.inner.stat(key))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        failures = 0
        while True:
            listed = 0
            try:
                for info in self.inner.list(prefix):
                    listed += 1
                    yield info
                return
            except TransientError as exc:
                failures += 1
                if listed or failures > self.retries:
                    raise  # a listing half delivered cannot be taken back
                log.debug("%s: list %s failed (%s); again", self.name, prefix, exc.message)
                self.sleep(pause(failures))

    def delete(self, key: str) -> None:
        self._again(f"delete {key}", lambda: self.inner.delete(key))

    def delete_many(self, keys: Sequence[str]) -> dict[str, StorageError]:
        """The keys that failed in passing are deleted again (the others stay failed)."""
        failures = self.inner.delete_many(keys)
        for tries in range(1, self.retries + 1):
            again = [key for key, exc in failures.items() if isinstance(exc, TransientError)]
            if not again:
                break
            log.debug(
                "%s: %d delete(s) failed in passing; try %d", self.name, len(again), tries + 1
            )
            self.sleep(pause(tries))
            for key in again:
                del failures[key]
            failures.update(self.inner.delete_many(again))
        return failures

    def copy(self, src: str, dst: str) -> None:
        self._again(f"copy {src} to {dst}", lambda: self.inner.copy(src, dst))

    def cleanup_incomplete(self, prefix: str) -> int:
        return self._again(f"clean up {prefix}", lambda: self.inner.cleanup_incomplete(prefix))

    def may_lock(self) -> bool:
        return self._again("object lock enabled?", self.inner.may_lock)

    def retention(self, key: str) -> Retention | None:
        return self._again(f"retention {key}", lambda: self.inner.retention(key))
