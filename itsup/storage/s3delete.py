"""Deleting many objects of an S3 target at once (`S3Target.delete_many`).

DeleteObjects removes up to 1,000 keys in one request, where a prune would
otherwise send one DELETE per object (about 1.5 ms of boto3's client work
each, before the server's). S3 demands a Content-MD5 (or a flexible checksum)
on it; botocore adds a CRC32, which some S3-compatible servers do not take in
its place, so the MD5 is added too.

Not every S3-compatible server has DeleteObjects. The first request tells:
an answer of NotImplemented, 501 or 405, or a 200 that does not account for
every key asked (a server that took the request for something else), and
the target deletes one key at a time from then on, DELETE_WORKERS at once;
those keys were not deleted by the bulk request, or are deleted again
(a delete of a missing key is no error). A key the bulk answer reports as
failed (AccessDenied, say) is that key's failure, worded as a single delete's;
one reported as failing in passing (InternalError, SlowDown) is deleted again
on its own, with botocore's retries. The order among the keys of one call is
not promised: a caller needing an order makes one call per step.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from itsup.errors import StorageError

# DeleteObjects takes at most this many keys per request.
BULK_DELETE_KEYS = 1000
# Single deletes in flight at once where a server has no DeleteObjects: enough to
# keep the two cores of a small host busy with the requests' client work, and within
# the target's connection pool (`max_pool_connections`), so no delete opens a
# connection of its own.
DELETE_WORKERS = 8
# A DeleteObjects answered with one of these: the server has no bulk delete.
NO_BULK_DELETE_CODES = frozenset({"NotImplemented", "XNotImplemented", "MethodNotAllowed"})
NO_BULK_DELETE_STATUS = frozenset({405, 501})
# A key reported with one of these failed in passing: it is deleted again on its own.
PASSING_DELETE_ERRORS = frozenset(
    {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
)
MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


def add_content_md5(request: Any, **_kwargs: Any) -> None:
    """botocore's `before-sign.s3.DeleteObjects` hook: the body's Content-MD5."""
    body = request.body
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes | bytearray):
        digest = hashlib.md5(body, usedforsecurity=False).digest()
        request.headers["Content-MD5"] = base64.b64encode(digest).decode("ascii")


class BulkDelete:
    """The deletes of many keys of one bucket, through `client`; `delete_one(key)`
    is the target's own single delete (NotFound already not an error)."""

    def __init__(
        self, client: Any, bucket: str, name: str, delete_one: Callable[[str], None]
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.name = name
        self.delete_one = delete_one
        self.supported: bool | None = None  # DeleteObjects works here; None: not tried yet
        client.meta.events.register("before-sign.s3.DeleteObjects", add_content_md5)

    def delete_many(self, keys: Sequence[str]) -> dict[str, StorageError]:
        failures: dict[str, StorageError] = {}
        one_by_one: list[str] = []
        for start in range(0, len(keys), BULK_DELETE_KEYS):
            chunk = keys[start : start + BULK_DELETE_KEYS]
            if self.supported is False:
                one_by_one += chunk
            else:
                one_by_one += self._request(chunk, failures)
        if one_by_one:
            failures.update(self._one_by_one(one_by_one))
        return failures

    def failure(self, key: str, code: str, message: str) -> StorageError:
        """The error a single delete of `key` answered with `code` raises."""
        if code == "NoSuchBucket":
            return StorageError(f"{self.name}: bucket {self.bucket} does not exist")
        described = f"{code or 'error'}: {message}".strip().rstrip(":")
        return StorageError(f"{self.name}: deleting {key}: {described}")

    def _request(self, keys: Sequence[str], failures: dict[str, StorageError]) -> Sequence[str]:
        """One DeleteObjects; its failures go into `failures`. Returns the keys still
        to be deleted one at a time."""
        try:
            resp = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": False}
            )
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in NO_BULK_DELETE_CODES or status in NO_BULK_DELETE_STATUS:
                self.supported = False
                return keys
            for key in keys:
                failures[key] = self.failure(key, code, str(err.get("Message", "")))
            return []
        except BotoCoreError as exc:
            for key in keys:
                failures[key] = StorageError(f"{self.name}: deleting {key}: {exc}")
            return []
        deleted, errors = resp.get("Deleted", []), resp.get("Errors", [])
        named = {d["Key"] for d in deleted if "Key" in d} | {e.get("Key", "") for e in errors}
        if len(deleted) + len(errors) != len(keys) or not named <= set(keys):
            self.supported = False  # an answer that does not account for every key
            return keys
        self.supported = True
        again: list[str] = []
        for error in errors:
            key, code = str(error.get("Key", "")), str(error.get("Code", ""))
            if code in MISSING:
                continue
            if code in PASSING_DELETE_ERRORS:
                again.append(key)
                continue
            failures[key] = self.failure(key, code, str(error.get("Message", "")))
        return again

    def _one_by_one(self, keys: Sequence[str]) -> dict[str, StorageError]:
        def one(key: str) -> StorageError | None:
            try:
                self.delete_one(key)
            except StorageError as exc:
                return exc
            return None

        with ThreadPoolExecutor(min(DELETE_WORKERS, len(keys)), "s3-delete") as pool:
            outcomes = list(pool.map(one, keys))
        return {key: exc for key, exc in zip(keys, outcomes, strict=True) if exc is not None}
