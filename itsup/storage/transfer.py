"""Objects copied from one target to another (`itsup backup sync`).

Between two S3 targets of the same service (same endpoint and credentials)
the copy is server-side: CopyObject, or UploadPartCopy parts for objects
larger than one CopyObject takes (5 GiB) and for any copy into a target
under Object Lock, so no byte passes through this host. Otherwise the object is streamed: read from the source, hashed on the
way, written to the destination, and committed only when its size and
SHA-256 are the ones expected (else the upload is aborted: nothing is left
under the key).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Any

from itsup.errors import IntegrityError, NotFoundError, StorageError
from itsup.storage.base import Target

log = logging.getLogger("itsup.sync")
MiB = 1024 * 1024
GiB = 1024 * MiB
# The largest object one CopyObject copies; larger ones go in UploadPartCopy parts.
SINGLE_COPY_LIMIT = 5 * GiB
COPY_PART = 512 * MiB
MAX_PARTS = 10_000
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
    """Copy `src_key` of `source` to `dst_key` of `dest` inside their S3 service."""
    from botocore.exceptions import BotoCoreError, ClientError

    src, dst = _bare(source), _bare(dest)
    copy_source = {"Bucket": src.bucket, "Key": src_key}
    try:
        # Under Object Lock a copy is a multipart copy, as `S3Target.copy` makes it: S3
        # refuses a CopyObject into a locked bucket without a Content-MD5 it cannot carry.
        if size <= SINGLE_COPY_LIMIT and getattr(dst, "object_lock", None) is None:
            dst.client.copy_object(
                Bucket=dst.bucket, Key=dst_key, CopySource=copy_source, **dst.extra_args()
            )
            return
        _copy_in_parts(dst, copy_source, dst_key, size)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"404", "NoSuchKey", "NotFound"}:
            raise NotFoundError(f"{source.name}: no object {src_key}") from None
        raise StorageError(
            f"{dest.name}: copying {src_key} from {source.name} to {dst_key}: {exc}"
        ) from None
    except BotoCoreError as exc:
        raise StorageError(
            f"{dest.name}: copying {src_key} from {source.name} to {dst_key}: {exc}"
        ) from None


def _copy_in_parts(dst: Any, copy_source: dict[str, str], dst_key: str, size: int) -> None:
    part = max(COPY_PART, -(-size // MAX_PARTS))
    upload = dst.client.create_multipart_upload(Bucket=dst.bucket, Key=dst_key, **dst.extra_args())
    upload_id = upload["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, size, part), 1):
            end = min(start + part, size) - 1
            resp = dst.client.upload_part_copy(
                Bucket=dst.bucket,
                Key=dst_key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=copy_source,
                CopySourceRange=f"bytes={start}-{end}",
            )
            parts.append({"PartNumber": number, "ETag": resp["CopyPartResult"].get("ETag", "")})
        dst.client.complete_multipart_upload(
            Bucket=dst.bucket,
            Key=dst_key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
    except BaseException:
        with contextlib.suppress(Exception):
            dst.client.abort_multipart_upload(Bucket=dst.bucket, Key=dst_key, UploadId=upload_id)
        raise


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
