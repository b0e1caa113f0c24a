"""Copies between targets (`itsup.storage.transfer`, what `backup sync` uses), against
the real S3 server: server-side within one service (CopyObject, and UploadPartCopy
parts for objects over the single-copy limit (`S3Target.copy`), lowered here so a test object
needs several parts), streamed otherwise, and never committed when the bytes do
not match what the manifest records."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import pytest
from s3server import S3Server

from itsup.errors import IntegrityError
from itsup.storage import TargetSpec, open_target, transfer
from itsup.storage import s3 as s3_module
from itsup.storage.base import Target

MiB = 1024 * 1024


def s3(server: S3Server, key_id: str | None = None) -> Target:
    return open_target(
        TargetSpec(
            f"s3://{server.bucket}",
            {
                "endpoint": server.endpoint,
                "access_key_id": key_id or server.access_key,
                "secret_access_key": server.secret_key,
                "part_size": 5 * MiB,
            },
        )
    )


@pytest.fixture
def prefix() -> str:
    return f"transfer/{uuid.uuid4().hex[:12]}/"


def test_same_service_is_one_endpoint_and_one_identity(s3_server: S3Server, tmp_path: Path) -> None:
    a, b = s3(s3_server), s3(s3_server)
    folder = open_target(TargetSpec(f"file://{tmp_path}"))
    assert transfer.same_service(a, b)
    assert not transfer.same_service(a, s3(s3_server, key_id="someone-else"))
    assert not transfer.same_service(a, folder) and not transfer.same_service(folder, folder)


def test_a_server_side_copy_in_parts(
    s3_server: S3Server, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "SINGLE_COPY_LIMIT", 1 * MiB)
    monkeypatch.setattr(s3_module, "COPY_PART", 5 * MiB)
    a, b = s3(s3_server), s3(s3_server)
    data = os.urandom(12 * MiB + 123)
    a.put(f"{prefix}src", data)
    transfer.server_copy(a, f"{prefix}src", b, f"{prefix}dst", len(data))
    assert b.get(f"{prefix}dst") == data
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket, Prefix=prefix)
    assert not uploads.get("Uploads")


def test_a_stream_copy_commits_only_the_expected_bytes(
    s3_server: S3Server, prefix: str, tmp_path: Path
) -> None:
    folder = open_target(TargetSpec(f"file://{tmp_path}"))
    data = os.urandom(7 * MiB)
    folder.put("itsup/src", data)
    digest = hashlib.sha256(data).hexdigest()
    bucket = s3(s3_server)
    transfer.stream_copy(folder, "itsup/src", bucket, f"{prefix}ok", len(data), digest)
    assert bucket.get(f"{prefix}ok") == data
    with pytest.raises(IntegrityError, match="the source is damaged, nothing was copied"):
        transfer.stream_copy(folder, "itsup/src", bucket, f"{prefix}bad", len(data), "0" * 64)
    assert [o.key for o in bucket.list(prefix)] == [f"{prefix}ok"]
    uploads = s3_server.client().list_multipart_uploads(Bucket=s3_server.bucket, Prefix=prefix)
    assert not uploads.get("Uploads")
