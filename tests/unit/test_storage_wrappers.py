"""The wrappers every opened target gets: retries (storage/retry.py), logging (storage/logged.py).

The target underneath is a real local folder target whose calls fail the
first few times, the way a flaky backend's would; nothing is mocked. (The
conformance suite in tests/test_storage.py runs every kind wrapped, too.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from itsup.errors import ConfigError, NotFoundError, StorageError
from itsup.storage import TargetSpec, open_target
from itsup.storage.base import ObjectInfo, TransientError
from itsup.storage.local import LocalTarget
from itsup.storage.logged import LoggedTarget
from itsup.storage.retry import RETRIES, RetryingTarget, pause


class FlakyTarget(LocalTarget):
    """A local target whose named calls fail `failures` times before they work."""

    def __init__(self, base: Path, failures: int, error: type[StorageError] = TransientError):
        super().__init__(base)
        self.failures = failures
        self.error = error
        self.calls: list[str] = []

    def _maybe_fail(self, what: str) -> None:
        self.calls.append(what)
        if self.failures > 0:
            self.failures -= 1
            raise self.error(f"{self.name}: {what}: connection reset")

    def get(self, key: str) -> bytes:
        self._maybe_fail("get")
        return super().get(key)

    def put(self, key: str, data: bytes) -> None:
        self._maybe_fail("put")
        super().put(key, data)

    def stat(self, key: str) -> ObjectInfo:
        self._maybe_fail("stat")
        return super().stat(key)

    def open_writer(self, key: str) -> Any:
        self._maybe_fail("open_writer")
        return super().open_writer(key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        items = super().list(prefix)
        first = next(items, None)
        if first is None:
            return
        yield first
        self._maybe_fail("list")  # breaks off after the first object
        yield from items


def retrying(target: LocalTarget) -> tuple[RetryingTarget, list[float]]:
    pauses: list[float] = []
    return RetryingTarget(target, sleep=pauses.append), pauses


def test_a_transient_fault_is_tried_again_with_growing_pauses(tmp_path: Path) -> None:
    flaky = FlakyTarget(tmp_path, failures=3)
    LocalTarget(tmp_path).put("k", b"data")
    target, pauses = retrying(flaky)
    assert target.get("k") == b"data"
    assert flaky.calls == ["get"] * 4
    assert pauses == [0.4, 0.8, 1.6]


def test_retries_end_with_the_last_fault(tmp_path: Path) -> None:
    flaky = FlakyTarget(tmp_path, failures=100)
    target, pauses = retrying(flaky)
    with pytest.raises(TransientError, match="connection reset"):
        target.stat("k")
    assert len(flaky.calls) == RETRIES + 1
    assert pauses == [pause(n) for n in range(1, RETRIES + 1)]
    assert max(pauses) == 5.0  # never longer


@pytest.mark.parametrize("error", [StorageError, NotFoundError])
def test_a_fault_the_target_retried_itself_is_not_tried_again(
    tmp_path: Path, error: type[StorageError]
) -> None:
    """A plain StorageError is final: S3's comes after botocore's own attempts."""
    flaky = FlakyTarget(tmp_path, failures=1, error=error)
    target, pauses = retrying(flaky)
    with pytest.raises(error):
        target.put("k", b"x")
    assert flaky.calls == ["put"] and pauses == []


def test_a_streaming_write_is_never_repeated(tmp_path: Path) -> None:
    flaky = FlakyTarget(tmp_path, failures=1)
    target, _ = retrying(flaky)
    with pytest.raises(TransientError):
        target.open_writer("k")
    assert flaky.calls == ["open_writer"]


def test_a_listing_is_retried_only_before_its_first_object(tmp_path: Path) -> None:
    store = LocalTarget(tmp_path)
    for name in ("a", "b", "c"):
        store.put(f"p/{name}", b"x")
    flaky = FlakyTarget(tmp_path, failures=1)
    target, pauses = retrying(flaky)
    seen: list[str] = []
    with pytest.raises(TransientError):
        seen.extend(info.key for info in target.list("p/"))
    assert len(seen) == 1 and pauses == []  # half a listing cannot be taken back
    assert sorted(info.key for info in target.list("p/")) == ["p/a", "p/b", "p/c"]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("itsup.storage")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_every_call_is_logged_with_its_time(tmp_path: Path, records: Records) -> None:
    target = LoggedTarget(LocalTarget(tmp_path))
    target.put("k", b"12345")
    writer = target.open_writer("big")
    writer.write(b"x" * 1000)
    writer.commit()
    assert [i.key for i in target.list("")] in (["k", "big"], ["big", "k"])
    with pytest.raises(NotFoundError):
        target.get("missing")
    text = "\n".join(records.lines)
    assert f"{tmp_path}: put k (5 bytes) (0.0" in text
    assert f"{tmp_path}: wrote big, 1000 bytes in " in text
    assert f"{tmp_path}: list , 2 objects, done (" in text
    assert f"{tmp_path}: get missing failed after 0.0" in text and "no object missing" in text


def test_open_target_stacks_logging_inside_retries(tmp_path: Path, records: Records) -> None:
    """Each attempt is logged: a run's debug log shows every try and how long it took."""
    target = open_target(TargetSpec(f"file://{tmp_path}"))
    assert isinstance(target, RetryingTarget) and isinstance(target.inner, LoggedTarget)
    assert target.name == str(tmp_path)
    flaky = FlakyTarget(tmp_path, failures=2)
    target, pauses = retrying(flaky)
    target.inner = LoggedTarget(flaky)
    target.put("k", b"x")
    assert sum("put k (1 bytes) failed" in line for line in records.lines) == 2
    assert len(pauses) == 2


@pytest.mark.parametrize(
    "url",
    ["ftp://host/x", "s3://", "s3://bucket/prefix", "file://relative/path", "nothing"],
)
def test_open_target_refuses_what_it_cannot_open(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        open_target(TargetSpec(url))
    assert url in err.value.message
