"""Objects copied from one target to another (`itsup backup sync`).

Between two S3 targets of the same service (same endpoint and credentials)
the copy is server-side (`S3Target.copy` from the source's bucket): CopyObject,
or UploadPartCopy parts for objects larger than one CopyObject takes (5 GiB)
and for any copy into a target under Object Lock, so no byte passes through
this host. Otherwise the object is streamed: read from the source, hashed on the
way, written to the destination, and committed only when its size and
SHA-256 are the ones expected (else the upload is aborted: nothing is left
under the key).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Any

from itsup.errors import IntegrityError, NotFoundError
from itsup.storage.base import Target

log = logging.getLogger("itsup.sync")
MiB = 1024 * 1024
CHUNK = 8 * MiB


def _bare(target: Any) -> Any:
    """The target below its wrappers (retries, logging)."""
    while hasattr(target, "inner"):
        target = target.inner
    return target


def same_service(source: Target, dest: Target) -> bool:
    """Can `dest` copy objects of `source` server-side (one S3 service, one identity)?"""
    a, b = _bare(source), _bare(dest)
    service = getattr(a, "service", None)
    return service is not None and service == getattr(b, "service", None)


def server_copy(source: Target, src_key: str, dest: Target, dst_key: str, size: int) -> None:
    """Copy `src_key` of `source` to `dst_key` of `dest` inside their S3 service
    (`S3Target.copy` from the source's bucket)."""
    src, dst = _bare(source), _bare(dest)
    try:
        dst.copy(src_key, dst_key, src_bucket=src.bucket, size=size)
    except NotFoundError:
        raise NotFoundError(f"{source.name}: no object {src_key}") from None


def stream_copy(
    source: Target, src_key: str, dest: Target, dst_key: str, size: int, sha256: str
) -> None:
    """Copy through this host, committing only an object of `size` bytes and `sha256`;
    IntegrityError (nothing stored) when the source does not match them."""
    reader = source.open_reader(src_key)
    writer = dest.open_writer(dst_key)
    digest, copied = hashlib.sha256(), 0
    try:
        with contextlib.closing(reader):
            while chunk := reader.read(CHUNK):
                digest.update(chunk)
                copied += len(chunk)
                writer.write(chunk)
        if copied != size or digest.hexdigest() != sha256:
            raise IntegrityError(
                f"{source.name}: {src_key} is {copied} bytes with SHA-256 "
                f"{digest.hexdigest()[:16]}..., the manifest records {size} bytes and "
                f"{sha256[:16]}...: the source is damaged, nothing was copied"
            )
        writer.commit()
    except BaseException:
        writer.abort()
        raise
