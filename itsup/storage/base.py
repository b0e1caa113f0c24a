"""The storage target protocol: where generations live.

A target stores opaque objects under string keys ("itsup/backup-...tar.gz").
It knows nothing of archives or tar. Every method raises
`itsup.errors.NotFoundError` when a key does not exist and
`itsup.errors.StorageError` for everything else that goes wrong, with a
message naming the target and key (never a credential). A `TransientError`
(a kind of StorageError) is a fault the target did not retry itself and that
may well pass: the retry wrapper (`storage/retry.py`) tries such calls again.

Targets are opened by URL scheme (`itsup.storage.open_target`); behaviour
that any target may want (retries, logging) is a wrapper around it, not code
inside it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from itsup.errors import StorageError


class TransientError(StorageError):
    """A fault worth another try that the target has not retried itself (a body
    that broke off mid-read). A target that retries a fault itself (botocore's
    retry mode) raises the final failure as a plain StorageError, so retries
    are never stacked."""


@dataclass(frozen=True)
class TargetSpec:
    """What `open_target` needs: the target's URL and its kind's settings.

    The URL names the target itself, without a key prefix: `s3://BUCKET`,
    `file:///ABSOLUTE/FOLDER`. Options are the kind's keyword settings (for
    S3: region, endpoint, credentials, ...); they stay out of `repr`.
    """

    url: str
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def scheme(self) -> str:
        return self.url.partition("://")[0].lower()


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: float  # POSIX seconds


@dataclass(frozen=True)
class Retention:
    """An object's Object Lock retention: it cannot be deleted or overwritten
    (that version of it) before `until`."""

    mode: str  # GOVERNANCE | COMPLIANCE
    until: float  # POSIX seconds

    def active(self, now: float) -> bool:
        return self.until > now


class ObjectWriter(Protocol):
    """A streaming upload. Nothing is visible under the key until `commit`."""

    def write(self, data: bytes) -> int: ...

    def commit(self) -> int:
        """Make the object visible under its key; return its size in bytes."""
        ...

    def abort(self) -> None:
        """Discard everything written; safe to call more than once."""
        ...


class Target(Protocol):
    name: str  # shown to the operator, e.g. "s3://bucket" or "/var/backups"

    def put(self, key: str, data: bytes) -> None:
        """Store a small object atomically (replacing any old one)."""
        ...

    def get(self, key: str) -> bytes:
        """Return a small object's whole content."""
        ...

    def open_writer(self, key: str) -> ObjectWriter:
        """Start a streaming upload of a large object."""
        ...

    def open_reader(self, key: str, start: int = 0) -> BinaryIO:
        """Stream a large object from byte `start` (its start by default) to its end;
        transient faults are retried inside."""
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size and time of one object."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in no promised order."""
        ...

    def delete(self, key: str) -> None:
        """Remove an object; deleting a missing key is not an error."""
        ...

    def delete_many(self, keys: Sequence[str]) -> dict[str, StorageError]:
        """Remove several objects, in no promised order among them (a caller that
        needs an order makes one call per step). Returns what failed, by key: the
        error a `delete` of that key would have raised (a missing key is not a
        failure); every other key is gone when it returns."""
        ...

    def copy(self, src: str, dst: str) -> None:
        """Make `dst` an identical object to `src`, without sending it through us."""
        ...

    def cleanup_incomplete(self, prefix: str) -> int:
        """Discard uploads that were started and never committed; return how many."""
        ...

    def retention(self, key: str) -> Retention | None:
        """The object's Object Lock retention, None when it has none (or the target
        keeps none: a folder). Prune and cleanup skip an object still locked."""
        ...

    def may_lock(self) -> bool:
        """Whether any object here can be under Object Lock (False: no need to ask
        each object). A target that cannot tell says True."""
        ...
