"""Storage targets behind one protocol (see `base.Target`), opened by URL scheme.

`open_target(spec)` looks the URL's scheme up in `OPENERS`, builds the
target, and stacks the wrappers every target gets around it, innermost
first: `LoggedTarget` (a debug record of every call and its time), then
`RetryingTarget` (calls that are safe to repeat are tried again on a
`TransientError`). A new kind of target is one opener registered here and
one run of the conformance suite (tests/test_storage.py).
"""

from __future__ import annotations

from collections.abc import Callable

from itsup.errors import ConfigError
from itsup.storage.base import (
    ObjectInfo,
    ObjectWriter,
    Retention,
    Target,
    TargetSpec,
    TransientError,
)
from itsup.storage.logged import LoggedTarget
from itsup.storage.retry import RetryingTarget

__all__ = [
    "OPENERS",
    "ObjectInfo",
    "ObjectWriter",
    "Retention",
    "Target",
    "TargetSpec",
    "TransientError",
    "open_target",
    "register",
]

Opener = Callable[[TargetSpec], Target]
OPENERS: dict[str, Opener] = {}


def register(scheme: str) -> Callable[[Opener], Opener]:
    """Register the opener of targets whose URL has `scheme`."""

    def add(opener: Opener) -> Opener:
        OPENERS[scheme] = opener
        return opener

    return add


def open_target(spec: TargetSpec, *, wrap: bool = True) -> Target:
    """The target `spec.url` names, with the wrappers every target gets (unless `wrap`
    is false: a bare target, for tests of one kind's own behaviour)."""
    opener = OPENERS.get(spec.scheme)
    if opener is None:
        known = ", ".join(f"{scheme}://" for scheme in OPENERS)
        raise ConfigError(f"{spec.url}: unknown kind of target (known: {known})")
    target = opener(spec)
    if not wrap:
        return target
    return RetryingTarget(LoggedTarget(target))


@register("s3")
def _open_s3(spec: TargetSpec) -> Target:
    """`s3://BUCKET`; options as `S3Target` takes them (region, endpoint, credentials, ...)."""
    from itsup.storage.s3 import S3Target  # boto3 takes a while to import: only when needed

    bucket = spec.url[len("s3://") :]
    if not bucket or "/" in bucket:
        raise ConfigError(f"{spec.url}: an S3 target is s3://BUCKET (the prefix is not its own)")
    return S3Target(bucket, **spec.options)


@register("file")
def _open_folder(spec: TargetSpec) -> Target:
    """`file:///ABSOLUTE/FOLDER`: objects as files below it. No options."""
    from pathlib import Path

    from itsup.storage.local import LocalTarget

    path = spec.url[len("file://") :]
    if not path.startswith("/") or spec.options:
        raise ConfigError(f"{spec.url}: a folder target is file:///ABSOLUTE/PATH, without options")
    return LocalTarget(Path(path))
