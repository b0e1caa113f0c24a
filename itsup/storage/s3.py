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

Retries live here only where a wrapper cannot do them without changing what
a fault does: botocore's own (per request, inside the client: a wrapper
around it would multiply its attempts), a ranged download resumed from the
byte where it broke (`RangeReader`: only the reader knows that offset), and
a completion whose answer was lost (`S3Writer._completed_anyway`: only the
writer knows what it sent). Timeouts stay socket timeouts in botocore's
config: a wrapper could only stop waiting for a call, not stop the call,
which would then go on writing behind a retry. A whole-object GET whose
body breaks off is retried by `storage/retry.py`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import tempfile
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.utils import parse_timestamp

from itsup.errors import NotFoundError, StorageError
from itsup.storage.base import ObjectInfo, Retention, TransientError
from itsup.storage.s3delete import BulkDelete

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB
# S3's limits on a multipart upload.
MIN_PART = 5 * MiB  # every part but the last
MAX_PART = 5 * GiB  # any part; also the largest single PUT
MAX_PARTS = 10_000
MAX_OBJECT = 5 * TiB
# The largest object one CopyObject copies; larger ones (and any copy under Object
# Lock) go in UploadPartCopy parts of COPY_PART.
SINGLE_COPY_LIMIT = MAX_PART
COPY_PART = 512 * MiB
# Part size doubles every this many parts, up to MAX_PART; the last group of
# parts S3 allows is always MAX_PART, so an object of MAX_OBJECT fits in
# MAX_PARTS parts whatever the start size (part_size_mb, 5 MiB to 5 GiB).
PART_GROWTH_EVERY = 1000
# The backup process aims to stay under 300 MB. Part buffers (the parts being
# uploaded plus the one filling) get PART_MEMORY of it; the rest of a backup
# (interpreter, libraries, compressor and encryption queues, file index) took
# about 100 MiB in the benchmark, measured with parts of 5 MiB.
PROCESS_MEMORY_BUDGET = 300 * 1000 * 1000
PART_MEMORY = 128 * MiB
# Parts uploaded at once from spool files, when parts are too large to hold
# in memory: the spool holds at most this many parts plus the one filling.
SPOOLED_IN_FLIGHT = 2
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


def _timestamp(value: str) -> datetime:
    """botocore's timestamp parser, quick for the ISO 8601 form of listings
    (`2026-01-15T03:00:00.000Z`): botocore parses each through dateutil, which
    took most of the client's time listing 15,000 objects. Any other form
    (HeadObject's HTTP date) goes to botocore's own parser."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return parse_timestamp(value)
    return parsed if parsed.tzinfo is not None else parse_timestamp(value)


def content_md5(body: bytes | bytearray | BinaryIO) -> str:
    """The Content-MD5 header of a request body (base64 of its MD5), which S3 demands
    of every PutObject and UploadPart that writes an object under Object Lock
    retention. botocore no longer computes it (since 1.36 its flexible checksums,
    CRC32, replace it, and only with `checksum: when_supported`), so it is given
    explicitly. A file body is read through and rewound."""
    digest = hashlib.md5(usedforsecurity=False)
    if isinstance(body, bytes | bytearray):
        digest.update(body)
    else:
        start = body.tell()
        while chunk := body.read(READ_CHUNK):
            digest.update(chunk)
        body.seek(start)
    return base64.b64encode(digest.digest()).decode("ascii")


@dataclass(frozen=True)
class PartPlan:
    """How one part of a multipart upload is sent."""

    size: int  # bytes in the part (the last part of an object may hold fewer)
    in_flight: int  # earlier parts that may still be uploading while this one fills
    spooled: bool  # filled into an anonymous temporary file instead of memory

    @property
    def memory(self) -> int:
        """Most bytes held in memory by part buffers while this part fills."""
        return 0 if self.spooled else (self.in_flight + 1) * self.size


def part_size(number: int, start_size: int) -> int:
    """The size of part `number` (1-based) of an upload starting at `start_size`."""
    if not 1 <= number <= MAX_PARTS:
        raise ValueError(f"part number {number} is outside 1..{MAX_PARTS}")
    if number > MAX_PARTS - PART_GROWTH_EVERY:
        return MAX_PART
    start = min(max(start_size, MIN_PART), MAX_PART)
    return min(MAX_PART, start << ((number - 1) // PART_GROWTH_EVERY))


def part_plan(number: int, start_size: int, max_concurrency: int) -> PartPlan:
    """Size, parts in flight and memory or spool for part `number` of an upload.

    Part buffers stay within PART_MEMORY at every object size: as parts grow,
    fewer earlier parts stay in flight while one fills (never more than
    `max_concurrency`); once even one part in flight plus the one filling would
    not fit, part bodies are spooled to an anonymous temporary file instead,
    SPOOLED_IN_FLIGHT of them at most.
    """
    size = part_size(number, start_size)
    in_memory = PART_MEMORY // size - 1  # uploading, besides the one filling
    if in_memory >= 1:
        return PartPlan(size, min(max_concurrency, in_memory), spooled=False)
    return PartPlan(size, min(max_concurrency, SPOOLED_IN_FLIGHT), spooled=True)


def _too_large(name: str, key: str, size: int) -> StorageError:
    return StorageError(
        f"{name}: {key}: {size:,} bytes is more than S3 stores in one object "
        f"({MAX_OBJECT:,} bytes, 5 TiB)"
    )


class S3Writer:
    """Multipart upload with bounded parts in flight; single PUT when small.

    A part fills a buffer of its planned size (`part_plan`); once full, that
    buffer itself is the body of the UploadPart call, without a copy. When
    parts are too large for memory, each is filled into an anonymous
    temporary file instead (`tempfile.TemporaryFile`: unlinked from the
    start, so nothing is left behind even after SIGKILL; mode 0600) and
    uploaded from it; the file is seekable, so botocore can rewind it to
    retry. Such a spool holds one part at a time per upload slot, never a
    copy of the whole object, and each file is closed (freed) once its part
    is uploaded.
    """

    def __init__(self, target: S3Target, key: str, size_hint: int | None = None) -> None:
        if size_hint is not None and size_hint > MAX_OBJECT:
            raise _too_large(target.name, key, size_hint)
        self.t = target
        self.key = key
        self.plan = part_plan(1, target.part_size, target.max_concurrency)
        self.buffer: bytearray | None = None  # the part filling, in memory
        self.spool: BinaryIO | None = None  # the part filling, spooled
        self.filled = 0  # bytes in the part filling
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.sent = 0  # parts handed to the upload pool
        # Parts handed over: (upload, its spool file or None, bytes it holds in memory).
        self.inflight: deque[tuple[Future[dict[str, Any]], BinaryIO | None, int]] = deque()
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

    def _upload_part(self, number: int, body: bytearray | BinaryIO) -> dict[str, Any]:
        assert self.upload_id is not None
        try:
            resp = self.t.client.upload_part(
                Bucket=self.t.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                PartNumber=number,
                # The part's own buffer, sent without a copy (the stubs list bytes only).
                Body=body,  # type: ignore[arg-type]
                **self.t.md5_args(body),
            )
        finally:
            if not isinstance(body, bytearray):
                body.close()  # the spool file is gone with its last descriptor
        return {"PartNumber": number, "ETag": resp.get("ETag", "")}

    def _collect_one(self) -> None:
        fut, spool, _held = self.inflight.popleft()
        try:
            self.parts.append(fut.result())
        except (ClientError, BotoCoreError) as exc:
            raise StorageError(f"{self.t.name}: uploading {self.key}: {_describe(exc)}") from None
        finally:
            if spool is not None:
                spool.close()

    def _collect(self, block: bool) -> None:
        while self.inflight and (block or self.inflight[0][0].done()):
            self._collect_one()

    def held_memory(self) -> int:
        """Bytes of part buffers in memory: the part filling and those handed over."""
        filling = len(self.buffer) if self.buffer is not None else 0
        return filling + sum(held for _fut, _spool, held in self.inflight)

    def _fill(self, data: memoryview) -> None:
        if self.plan.spooled:
            try:
                if self.spool is None:
                    self.spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed once uploaded
                self.spool.write(data)
            except OSError as exc:
                raise self._spool_error(exc) from None
        else:
            if self.buffer is None:
                self.buffer = bytearray(self.plan.size)
            self.buffer[self.filled : self.filled + len(data)] = data
        self.filled += len(data)

    def _spool_error(self, exc: OSError) -> StorageError:
        return StorageError(
            f"{self.t.name}: uploading {self.key}: cannot spool a part of "
            f"{self.plan.size:,} bytes to a temporary file in {tempfile.gettempdir()} "
            f"({exc.strerror or exc})"
        )

    def _send_part(self) -> None:
        """Hand the part filling to the upload pool; the next part starts empty."""
        if self.upload_id is None:
            self._start()
        number = self.sent + 1
        if number > MAX_PARTS:  # not reached: MAX_OBJECT fits in MAX_PARTS parts
            raise StorageError(f"{self.t.name}: {self.key} needs more than {MAX_PARTS} parts")
        body: bytearray | BinaryIO
        if self.spool is not None:
            body, spool, self.spool = self.spool, self.spool, None
            try:
                body.flush()
                body.seek(0)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    spool.close()
                raise self._spool_error(exc) from None
        else:
            assert self.buffer is not None
            body, spool, self.buffer = self.buffer, None, None
            if self.filled < len(body):
                del body[self.filled :]  # the last part
        held = len(body) if isinstance(body, bytearray) else 0
        self.inflight.append((self.t.pool.submit(self._upload_part, number, body), spool, held))
        self.sent = number
        self.filled = 0
        if number < MAX_PARTS:
            self.plan = part_plan(number + 1, self.t.part_size, self.t.max_concurrency)
        # Only as many parts stay in flight as the next part's plan allows.
        while len(self.inflight) > self.plan.in_flight:
            self._collect_one()

    def write(self, data: bytes) -> int:
        if self.closed:
            raise StorageError(f"{self.t.name}: write to finished upload {self.key}")
        n = len(data)
        if self.size + n > MAX_OBJECT:
            self.abort()
            raise StorageError(
                f"{self.t.name}: {self.key} grew past {MAX_OBJECT:,} bytes (5 TiB), the most "
                "S3 stores in one object; the upload was aborted"
            )
        view = memoryview(data).cast("B")
        while view:
            room = self.plan.size - self.filled
            self._fill(view[:room])
            view = view[room:]
            if self.filled == self.plan.size:
                self._send_part()
        self.size += n
        self._collect(block=False)
        return n

    def commit(self) -> int:
        try:
            if self.upload_id is None:
                self._put_whole()
            else:
                if self.filled:
                    self._send_part()  # the last part may be smaller than MIN_PART
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

    def _put_whole(self) -> None:
        """An object smaller than one part: a single PutObject."""
        if self.spool is not None:
            spool, self.spool = self.spool, None
            try:
                try:
                    spool.flush()
                    spool.seek(0)
                except OSError as exc:
                    raise self._spool_error(exc) from None
                self.t.put_body(self.key, spool)
            finally:
                with contextlib.suppress(OSError):
                    spool.close()
        else:
            body = self.buffer if self.buffer is not None else bytearray()
            self.buffer = None
            del body[self.filled :]
            self.t.put_body(self.key, body)

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

    def abort(self) -> None:
        self.closed = True
        self.buffer = None
        if self.spool is not None:
            self.spool.close()
            self.spool = None
        for fut, _spool, _held in self.inflight:
            fut.cancel()
        for fut, spool, _held in self.inflight:
            with contextlib.suppress(Exception):
                fut.result()
            if spool is not None:
                spool.close()
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

    def __init__(self, target: S3Target, key: str, size: int, ahead: int, start: int = 0) -> None:
        super().__init__()
        self.t, self.key, self.size = target, key, size
        self.next_offset = start
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
        checksum: str = "when_required",
        object_lock: tuple[str, int] | None = None,
    ) -> None:
        self.bucket = bucket
        self._lock_enabled: bool | None = None  # see may_lock
        # (mode, days): every object written gets that Object Lock retention.
        self.object_lock = object_lock
        self.name = f"s3://{bucket}" + (f" at {endpoint}" if endpoint else "")
        # Two targets with the same service copy between them server-side (`transfer`).
        self.service = ("s3", endpoint or "", access_key_id or "")
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
            # `checksum: when_supported` turns boto3's CRC checksums back on.
            request_checksum_calculation=checksum,  # type: ignore[arg-type]
            response_checksum_validation=checksum,  # type: ignore[arg-type]
        )
        core = botocore.session.get_session()
        core.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=_timestamp
        )
        session = boto3.session.Session(
            botocore_session=core,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            aws_session_token=session_token,
            region_name=region,
        )
        self.client = session.client("s3", endpoint_url=endpoint, config=config)
        self.bulk = BulkDelete(self.client, bucket, self.name, self.delete)
        self.pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="s3-up")
        self.read_pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="s3-down")
        self._lock = threading.Lock()

    def extra_args(self) -> dict[str, Any]:
        """What every object written gets: the storage class, and the Object Lock
        retention (mode and retain-until date, counted from now) when configured."""
        args: dict[str, Any] = {"StorageClass": self.storage_class} if self.storage_class else {}
        if self.object_lock is not None:
            mode, days = self.object_lock
            args["ObjectLockMode"] = mode
            args["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(days=days)
        return args

    def md5_args(self, body: bytes | bytearray | BinaryIO) -> dict[str, Any]:
        """`ContentMD5` for a body written under Object Lock (S3 refuses the write
        without it, or a flexible checksum), else nothing."""
        return {"ContentMD5": content_md5(body)} if self.object_lock is not None else {}

    def may_lock(self) -> bool:
        """Whether the bucket has Object Lock enabled (asked once per target).

        Object Lock can only be on in a bucket whose configuration says so; a
        server without the API (it answers NotImplemented) has none. A key not
        allowed to read the configuration cannot tell: True, so each object is asked.
        """
        if self._lock_enabled is None:
            try:
                conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
                enabled = conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
                self._lock_enabled = enabled == "Enabled"
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                none = (
                    "ObjectLockConfigurationNotFoundError",
                    "NotImplemented",
                    "XNotImplemented",
                    "MethodNotAllowed",
                    "NoSuchObjectLockConfiguration",
                )
                self._lock_enabled = code not in none
            except BotoCoreError:
                self._lock_enabled = True
        return self._lock_enabled

    def retention(self, key: str) -> Retention | None:
        """The object's Object Lock retention (from HeadObject), None when it has none.

        HeadObject shows it only to a key allowed s3:GetObjectRetention; without
        that permission an object looks unlocked here (a delete then fails with
        AccessDenied, which the caller reports).
        """
        resp = self._call("checking", key, self.client.head_object, Key=key)
        mode, until = resp.get("ObjectLockMode"), resp.get("ObjectLockRetainUntilDate")
        if not mode or until is None:
            return None
        return Retention(str(mode), until.timestamp())

    def _call(
        self, what: str, key: str, fn: Any, *, bucket: str | None = None, **kwargs: Any
    ) -> Any:
        try:
            return fn(Bucket=bucket or self.bucket, **kwargs)
        except ClientError as exc:
            if _is_not_found(exc):
                raise NotFoundError(f"{self.name}: no object {key}") from None
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                raise StorageError(f"{self.name}: bucket {self.bucket} does not exist") from None
            raise StorageError(f"{self.name}: {what} {key}: {_describe(exc)}") from None
        except BotoCoreError as exc:
            raise StorageError(f"{self.name}: {what} {key}: {_describe(exc)}") from None

    def put(self, key: str, data: bytes) -> None:
        if len(data) > MAX_PART:  # more than one PutObject takes
            writer = self.open_writer(key, size_hint=len(data))
            try:
                writer.write(data)
            except BaseException:
                writer.abort()
                raise
            writer.commit()
            return
        self.put_body(key, data)

    def put_body(self, key: str, body: bytes | bytearray | BinaryIO) -> None:
        """One PutObject (at most MAX_PART bytes) from bytes or a seekable file."""
        self._call(
            "writing",
            key,
            self.client.put_object,
            Key=key,
            Body=body,
            **self.md5_args(body),
            **self.extra_args(),
        )

    def get(self, key: str) -> bytes:
        """The whole object. A body that breaks off after its request succeeded is a
        TransientError: botocore does not retry it, the retry wrapper does (RETRIES
        times, as this loop did when it lived here)."""
        resp = self._call("reading", key, self.client.get_object, Key=key)
        try:
            return bytes(resp["Body"].read())
        except (BotoCoreError, OSError) as exc:
            raise TransientError(f"{self.name}: reading {key}: {_describe(exc)}") from None

    def open_writer(self, key: str, size_hint: int | None = None) -> S3Writer:
        """A streaming upload; one whose `size_hint` is over MAX_OBJECT is refused at once."""
        return S3Writer(self, key, size_hint)

    def open_reader(self, key: str, start: int = 0) -> BinaryIO:
        size = self.stat(key).size
        if not 0 <= start <= size:
            raise StorageError(f"{self.name}: {key} holds {size} bytes; cannot read from {start}")
        # Unbuffered on purpose: its read(n) already serves large pieces without copying.
        return RangeReader(self, key, size, self.max_concurrency, start)  # type: ignore[return-value]

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

    def delete_many(self, keys: Sequence[str]) -> dict[str, StorageError]:
        """DeleteObjects where the server has it, else single deletes (`s3delete.py`)."""
        return self.bulk.delete_many(keys)

    def copy(
        self, src: str, dst: str, *, src_bucket: str | None = None, size: int | None = None
    ) -> None:
        """Make `dst` an identical object to `src`, server-side: `src` of this bucket, or
        of `src_bucket`, another bucket of this S3 service that this identity reads
        (`backup sync`, `storage/transfer.py`). `size` is the source's size when the
        caller knows it; else a HeadObject asks.

        CopyObject, or UploadPartCopy parts of COPY_PART (more when MAX_PARTS would not
        hold the object) over SINGLE_COPY_LIMIT and for any copy under Object Lock:
        S3 refuses a CopyObject into a locked bucket without the source's
        Content-MD5, which an archive uploaded in parts does not have (and
        CopyObject cannot carry). A failed multipart copy is aborted."""
        bucket = src_bucket or self.bucket
        origin = src if bucket == self.bucket else f"{src} of bucket {bucket}"
        if size is None:
            head = self._call("checking", origin, self.client.head_object, bucket=bucket, Key=src)
            size = int(head["ContentLength"])
        if size > MAX_OBJECT:  # a provider with a higher limit may hold one
            raise _too_large(self.name, dst, size)
        what = f"copying {origin} to"
        source = {"Bucket": bucket, "Key": src}
        try:
            if size <= SINGLE_COPY_LIMIT and self.object_lock is None:
                self._call(
                    what,
                    dst,
                    self.client.copy_object,
                    Key=dst,
                    CopySource=source,
                    **self.extra_args(),
                )
            else:
                self._copy_in_parts(what, source, dst, size)
        except NotFoundError:  # what is missing is the source
            raise NotFoundError(f"{self.name}: no object {origin}") from None

    def _copy_in_parts(self, what: str, source: dict[str, str], dst: str, size: int) -> None:
        part = max(COPY_PART, -(-size // MAX_PARTS))
        upload = self._call(
            what, dst, self.client.create_multipart_upload, Key=dst, **self.extra_args()
        )
        upload_id = upload["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, size, part), 1):
                end = min(start + part, size) - 1
                resp = self._call(
                    what,
                    dst,
                    self.client.upload_part_copy,
                    Key=dst,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=source,
                    CopySourceRange=f"bytes={start}-{end}",
                )
                parts.append({"PartNumber": number, "ETag": resp["CopyPartResult"].get("ETag", "")})
            self._call(
                what,
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
