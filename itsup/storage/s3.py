"""The S3 target: AWS or any S3-compatible endpoint, through boto3.

Large objects go up as multipart uploads with several parts in flight and
come down as parallel ranged GETs delivered in order, so the network overlaps
compression. Transient faults are retried by botocore's standard retry mode
(throttling, 5xx, connection errors, timeouts) and, for downloads, by
resuming the interrupted range. Every wait on the network is bounded: a
connection must open (and each send progress) within `connect_timeout`, an
answer may fall silent for at most `read_timeout`, a request is tried at most
`max_attempts` times, and a body that breaks off is resumed a bounded number
of times without progress. Nothing here relies on ETags being MD5 digests:
some providers return none, and multipart ETags never are. Integrity is
checked by the SHA-256 the manifest records.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from itsup.errors import NotFoundError, StorageError
from itsup.storage.base import ObjectInfo

MiB = 1024 * 1024
MAX_PARTS = 10_000
# Part size doubles every this many parts, so the 10,000-part limit is never hit.
PART_GROWTH_EVERY = 1000
READ_CHUNK = 8 * MiB
# A body that breaks off (reset, timeout) is fetched again from where it broke,
# at most this many times in a row without a byte of progress. A request that
# fails outright is not tried again here: botocore already made every attempt.
READ_RETRIES = 5
# A failed read loses what that read call had received, so once a range has
# broken off it is read on in pieces this size: a connection that keeps breaking
# still makes progress.
RESUME_CHUNK = 64 * 1024


def _is_not_found(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"{err.get('Code', 'error')}: {err.get('Message', '')}".strip().rstrip(":")
    return str(exc)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Writer:
    """Multipart upload with bounded parts in flight; single PUT when small."""

    def __init__(self, target: S3Target, key: str) -> None:
        self.t = target
        self.key = key
        self.part_size = target.part_size
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.inflight: deque[Future[dict[str, Any]]] = deque()
        self.size = 0
        self.closed = False

    def _start(self) -> None:
        extra = self.t.extra_args()
        try:
            resp = self.t.client.create_multipart_upload(
                Bucket=self.t.bucket, Key=self.key, **extra
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(
                f"{self.t.name}: cannot start upload of {self.key}: {_describe(exc)}"
            ) from None
        self.upload_id = resp["UploadId"]

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        assert self.upload_id is not None
        resp = self.t.client.upload_part(
            Bucket=self.t.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": resp.get("ETag", "")}

    def _collect_one(self) -> None:
        fut = self.inflight.popleft()
        try:
            self.parts.append(fut.result())
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"{self.t.name}: uploading {self.key}: {_describe(exc)}") from None

    def _collect(self, block: bool) -> None:
        while self.inflight and (block or self.inflight[0].done()):
            self._collect_one()

    def _send_part(self) -> None:
        if self.upload_id is None:
            self._start()
        number = len(self.parts) + len(self.inflight) + 1
        if number > MAX_PARTS:
            raise StorageError(f"{self.t.name}: {self.key} needs more than {MAX_PARTS} parts")
        body = bytes(memoryview(self.buffer)[: self.part_size])  # one copy, not two
        del self.buffer[: self.part_size]
        while len(self.inflight) >= self.t.max_concurrency:
            self._collect_one()
        self.inflight.append(self.t.pool.submit(self._upload_part, number, body))
        if number % PART_GROWTH_EVERY == 0:
            self.part_size *= 2

    def write(self, data: bytes) -> int:
        if self.closed:
            raise StorageError(f"{self.t.name}: write to finished upload {self.key}")
        self.buffer += data
        self.size += len(data)
        while len(self.buffer) >= self.part_size:
            self._send_part()
        self._collect(block=False)
        return len(data)

    def commit(self) -> int:
        try:
            if self.upload_id is None:
                self.t.put(self.key, bytes(self.buffer))
            else:
                if self.buffer:
                    self._send_part_tail()
                self._collect(block=True)
                self.parts.sort(key=lambda p: p["PartNumber"])
                try:
                    self.t.client.complete_multipart_upload(
                        Bucket=self.t.bucket,
                        Key=self.key,
                        UploadId=self.upload_id,
                        MultipartUpload={"Parts": self.parts},  # type: ignore[typeddict-item]
                    )
                except (ClientError, BotoCoreError) as exc:
                    if not self._completed_anyway(exc):
                        raise StorageError(
                            f"{self.t.name}: finishing {self.key}: {_describe(exc)}"
                        ) from None
        except BaseException:
            self.abort()
            raise
        self.closed = True
        stored = self.t.stat(self.key).size
        if stored != self.size:
            raise StorageError(
                f"{self.t.name}: {self.key} holds {stored} bytes, {self.size} were sent"
            )
        return self.size

    def _completed_anyway(self, exc: Exception) -> bool:
        """Did a retried CompleteMultipartUpload fail only because the first one worked?

        When the answer to a completion is lost (a reset, a timeout), botocore
        sends it again and the server, which already assembled the object, no
        longer knows the upload. The key is new to this run, so an object there
        with every byte sent is that completion's work.
        """
        if not (isinstance(exc, ClientError) and _code(exc) == "NoSuchUpload"):
            return False
        try:
            return self.t.stat(self.key).size == self.size
        except StorageError:
            return False

    def _send_part_tail(self) -> None:
        # The last part may be smaller than the minimum part size.
        saved, self.part_size = self.part_size, max(len(self.buffer), 1)
        try:
            self._send_part()
        finally:
            self.part_size = saved

    def abort(self) -> None:
        self.closed = True
        for fut in self.inflight:
            fut.cancel()
        for fut in self.inflight:
            with contextlib.suppress(Exception):
                fut.result()
        self.inflight.clear()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            with contextlib.suppress(ClientError, BotoCoreError):
                self.t.client.abort_multipart_upload(
                    Bucket=self.t.bucket, Key=self.key, UploadId=upload_id
                )


class RangeReader(io.RawIOBase):
    """Read an object front to back with ranged GETs fetched ahead in parallel.

    Memory is bounded by `ahead` chunks. A range whose body breaks off is
    fetched again from where it broke, up to READ_RETRIES times in a row
    without progress; a request that fails outright (botocore has already
    retried it) fails the read. Once the reader is closed, fetches still
    running stop at their next step instead of retrying on.
    """

    def __init__(self, target: S3Target, key: str, size: int, ahead: int) -> None:
        super().__init__()
        self.t, self.key, self.size = target, key, size
        self.next_offset = 0
        self.pending: deque[Future[bytes]] = deque()
        self.current = memoryview(b"")
        self.ahead = ahead
        self.stopped = threading.Event()
        self._fill()

    def _fetch(self, start: int, end: int) -> bytes:
        want = end - start
        out = bytearray()
        failures = 0
        while True:
            if self.stopped.is_set():
                raise StorageError(f"{self.t.name}: reading {self.key}: the reader was closed")
            try:
                resp = self.t.client.get_object(
                    Bucket=self.t.bucket, Key=self.key, Range=f"bytes={start + len(out)}-{end - 1}"
                )
            except ClientError as exc:
                if _is_not_found(exc):
                    raise NotFoundError(f"{self.t.name}: no object {self.key}") from None
                raise StorageError(f"{self.t.name}: reading {self.key}: {_describe(exc)}") from None
            except BotoCoreError as exc:
                raise StorageError(f"{self.t.name}: reading {self.key}: {_describe(exc)}") from None
            had = len(out)
            body = resp["Body"]
            piece = RESUME_CHUNK if failures else READ_CHUNK
            try:
                while chunk := body.read(piece):
                    if not out and len(chunk) == want:
                        return bytes(chunk)  # the whole range in one read: no copy
                    out += chunk
                    if self.stopped.is_set():
                        break
                if len(out) == want:
                    return bytes(out)
                error: Exception = StorageError(
                    f"short read at {start}: {len(out)} of {want} bytes"
                )
            except (BotoCoreError, OSError) as exc:
                error = exc
            with contextlib.suppress(Exception):
                body.close()  # a broken body's connection is not reused
            if len(out) > want:
                raise StorageError(f"{self.t.name}: reading {self.key}: more bytes than asked for")
            failures = 1 if len(out) > had else failures + 1
            if failures > READ_RETRIES:
                raise StorageError(f"{self.t.name}: reading {self.key}: {_describe(error)}")
            self.stopped.wait(min(0.2 * 2**failures, 5))

    def _fill(self) -> None:
        while len(self.pending) < self.ahead and self.next_offset < self.size:
            end = min(self.next_offset + READ_CHUNK, self.size)
            self.pending.append(self.t.read_pool.submit(self._fetch, self.next_offset, end))
            self.next_offset = end

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bool:
        if not self.pending:
            return False
        fut = self.pending.popleft()
        self.current = memoryview(fut.result())
        self._fill()
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to `size` bytes; a whole fetched range is handed over without a copy."""
        if size is None or size < 0:
            parts = [bytes(self.current)]
            self.current = memoryview(b"")
            while self._next_chunk():
                parts.append(bytes(self.current))
                self.current = memoryview(b"")
            return b"".join(parts)
        if not self.current and not self._next_chunk():
            return b""
        if size >= len(self.current):
            whole = self.current.obj
            untouched = isinstance(whole, bytes) and len(whole) == len(self.current)
            data = whole if untouched else bytes(self.current)
            self.current = memoryview(b"")
            return data  # type: ignore[return-value]
        data = bytes(self.current[:size])
        self.current = self.current[size:]
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        self.stopped.set()
        for fut in self.pending:
            fut.cancel()
        self.pending.clear()
        super().close()


class S3Target:
    def __init__(
        self,
        bucket: str,
        prefix_hint: str = "",
        *,
        region: str = "us-east-1",
        endpoint: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
        storage_class: str | None = None,
        part_size: int = 16 * MiB,
        max_concurrency: int = 4,
        addressing_style: str = "path",
        connect_timeout: float = 10,
        read_timeout: float = 60,
        max_attempts: int = 8,
    ) -> None:
        self.bucket = bucket
        self.name = f"s3://{bucket}" + (f" at {endpoint}" if endpoint else "")
        self.part_size = part_size
        self.max_concurrency = max_concurrency
        self.storage_class = storage_class
        config = Config(
            # Attempts in all, the first included (botocore's own `max_attempts`
            # counts only the retries).
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_concurrency * 2 + 4,
            s3={"addressing_style": addressing_style},  # type: ignore[arg-type]
            # Checksums beyond what S3 requires cost CPU and are refused by some
            # S3-compatible providers; integrity is checked end to end by SHA-256.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            region_name=region,
        )
        self.client = session.client("s3", endpoint_url=endpoint, config=config)
        self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="s3-up")
        self.read_pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="s3-down")
        self._lock = threading.Lock()

    def extra_args(self) -> dict[str, Any]:
        return {"StorageClass": self.storage_class} if self.storage_class else {}

    def _call(self, what: str, key: str, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if _is_not_found(exc):
                raise NotFoundError(f"{self.name}: no object {key}") from None
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise StorageError(f"{self.name}: bucket {self.bucket} does not exist") from None
            raise StorageError(f"{self.name}: {what} {key}: {_describe(exc)}") from None
        except BotoCoreError as exc:
            raise StorageError(f"{self.name}: {what} {key}: {_describe(exc)}") from None

    def put(self, key: str, data: bytes) -> None:
        self._call("writing", key, self.client.put_object, Key=key, Body=data, **self.extra_args())

    def get(self, key: str) -> bytes:
        """The whole object; a body that breaks off is read again (READ_RETRIES times)."""
        failures = 0
        while True:
            resp = self._call("reading", key, self.client.get_object, Key=key)
            try:
                return bytes(resp["Body"].read())
            except (BotoCoreError, OSError) as exc:
                failures += 1
                if failures > READ_RETRIES:
                    raise StorageError(f"{self.name}: reading {key}: {_describe(exc)}") from None
            time.sleep(min(0.2 * 2**failures, 5))

    def open_writer(self, key: str) -> S3Writer:
        return S3Writer(self, key)

    def open_reader(self, key: str) -> BinaryIO:
        size = self.stat(key).size
        # Unbuffered on purpose: its read(n) already serves large pieces without copying.
        return RangeReader(self, key, size, ahead=self.max_concurrency)  # type: ignore[return-value]

    def stat(self, key: str) -> ObjectInfo:
        resp = self._call("checking", key, self.client.head_object, Key=key)
        return ObjectInfo(key, int(resp["ContentLength"]), resp["LastModified"].timestamp())

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    yield ObjectInfo(obj["Key"], int(obj["Size"]), obj["LastModified"].timestamp())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise StorageError(f"{self.name}: bucket {self.bucket} does not exist") from None
            raise StorageError(f"{self.name}: listing {prefix}: {_describe(exc)}") from None
        except BotoCoreError as exc:
            raise StorageError(f"{self.name}: listing {prefix}: {_describe(exc)}") from None

    def delete(self, key: str) -> None:
        with contextlib.suppress(NotFoundError):
            self._call("deleting", key, self.client.delete_object, Key=key)

    def copy(self, src: str, dst: str) -> None:
        size = self.stat(src).size
        if size <= 5 * 1024 * MiB:
            self._call(
                "copying to",
                dst,
                self.client.copy_object,
                Key=dst,
                CopySource={"Bucket": self.bucket, "Key": src},
                **self.extra_args(),
            )
            return
        self._copy_multipart(src, dst, size)

    def _copy_multipart(self, src: str, dst: str, size: int) -> None:
        upload = self._call(
            "copying to", dst, self.client.create_multipart_upload, Key=dst, **self.extra_args()
        )
        upload_id = upload["UploadId"]
        part = max(512 * MiB, -(-size // MAX_PARTS))
        try:
            parts = []
            for number, start in enumerate(range(0, size, part), 1):
                end = min(start + part, size) - 1
                resp = self._call(
                    "copying to",
                    dst,
                    self.client.upload_part_copy,
                    Key=dst,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource={"Bucket": self.bucket, "Key": src},
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": resp["CopyPartResult"].get("ETag", "")})
            self._call(
                "copying to",
                dst,
                self.client.complete_multipart_upload,
                Key=dst,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=dst, UploadId=upload_id)
            raise

    def cleanup_incomplete(self, prefix: str) -> int:
        uploads: list[dict[str, Any]] = []
        marker: dict[str, str] = {}
        while True:  # a page holds at most 1000 uploads
            resp = self._call(
                "listing uploads under",
                prefix,
                self.client.list_multipart_uploads,
                Prefix=prefix,
                **marker,
            )
            uploads += resp.get("Uploads", []) or []
            if not resp.get("IsTruncated") or not resp.get("NextKeyMarker"):
                break
            marker = {
                "KeyMarker": resp["NextKeyMarker"],
                "UploadIdMarker": resp.get("NextUploadIdMarker", ""),
            }
        aborted = 0
        for upload in uploads:
            with contextlib.suppress(ClientError, BotoCoreError):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
                aborted += 1
        return aborted
