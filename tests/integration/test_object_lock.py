"""Object Lock at the storage and lifecycle layers, on moto's S3 server.

What is sent is checked on the requests themselves (botocore's before-send
event), because moto does not check all of it: it refuses a locked PutObject
without Content-MD5 but never checks the digest, never asks UploadPart for
one, and keeps no retention on objects completed by a multipart upload.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from typing import Any

import pytest
from helpers import make_manifest
from motoserver import new_bucket
from s3server import S3Server

from itsup.generation import scan
from itsup.lifecycle import GenerationStore, LockedGeneration
from itsup.storage.s3 import MiB, S3Target

PREFIX = "itsup/"


def target_on(server: S3Server, **kw: Any) -> S3Target:
    return S3Target(
        server.bucket,
        endpoint=server.endpoint,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        part_size=5 * MiB,
        **kw,
    )


def record(target: S3Target) -> list[tuple[str, dict[str, str]]]:
    """Every request the target's client sends: (operation, headers)."""
    sent: list[tuple[str, dict[str, str]]] = []

    def seen(request: Any, event_name: str, **_kw: Any) -> None:
        headers = {
            k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
        }
        sent.append((event_name.rsplit(".", 1)[-1], headers))

    target.client.meta.events.register("before-send.s3", seen)
    return sent


def md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def test_locked_writes_carry_retention_and_content_md5(moto_server: S3Server) -> None:
    server = new_bucket(moto_server, lock=True)
    target = target_on(server, object_lock=("COMPLIANCE", 1))
    sent = record(target)
    data = os.urandom(12 * MiB)
    writer = target.open_writer(f"{PREFIX}big")
    writer.write(data)
    writer.commit()
    target.put(f"{PREFIX}small", b"small object")
    target.copy(f"{PREFIX}big", f"{PREFIX}copy")

    created = [h for op, h in sent if op == "CreateMultipartUpload"]
    assert len(created) == 2  # the upload, and the copy (a multipart copy under a lock)
    for headers in created:
        assert headers["x-amz-object-lock-mode"] == "COMPLIANCE"
        assert headers["x-amz-object-lock-retain-until-date"].startswith("20")
    parts = [h for op, h in sent if op == "UploadPart"]
    assert (
        sorted(p["content-md5"] for p in parts)
        == sorted(  # parts go up concurrently
            [md5(data[0 : 5 * MiB]), md5(data[5 * MiB : 10 * MiB]), md5(data[10 * MiB :])]
        )
    )
    (put,) = [h for op, h in sent if op == "PutObject"]
    assert put["content-md5"] == md5(b"small object")
    assert put["x-amz-object-lock-mode"] == "COMPLIANCE"
    assert not [op for op, _ in sent if op == "CopyObject"]
    assert [op for op, _ in sent].count("UploadPartCopy") == 1
    assert target.get(f"{PREFIX}copy") == data

    lock = target.retention(f"{PREFIX}small")
    assert lock is not None and lock.mode == "COMPLIANCE"
    assert 23 * 3600 < lock.until - time.time() <= 24 * 3600


def test_a_locked_put_without_content_md5_is_refused(moto_server: S3Server) -> None:
    """What the Content-MD5 is for: moto, like S3, refuses a locked PutObject without
    it (botocore adds none with `checksum: when_required`)."""
    server = new_bucket(moto_server, lock=True)
    client = target_on(server).client
    with pytest.raises(client.exceptions.ClientError, match="Content-MD5"):
        client.put_object(
            Bucket=server.bucket,
            Key="x",
            Body=b"x",
            ObjectLockMode="GOVERNANCE",
            ObjectLockRetainUntilDate=time.time() + 3600,
        )


@pytest.mark.parametrize("checksum", ["when_required", "when_supported"])
def test_unlocked_writes_send_what_they_always_did(moto_server: S3Server, checksum: str) -> None:
    server = new_bucket(moto_server)
    target = target_on(server, checksum=checksum)
    sent = record(target)
    target.put(f"{PREFIX}small", b"small object")
    writer = target.open_writer(f"{PREFIX}big")
    writer.write(os.urandom(6 * MiB))
    writer.commit()
    target.copy(f"{PREFIX}small", f"{PREFIX}copy")
    writes = [h for op, h in sent if op in {"PutObject", "UploadPart", "CreateMultipartUpload"}]
    assert writes and not any("content-md5" in h or "x-amz-object-lock-mode" in h for h in writes)
    crc = [h for op, h in sent if op in {"PutObject", "UploadPart"} and "x-amz-checksum-crc32" in h]
    # when_required: no checksum beyond what S3 demands (as before this setting);
    # when_supported: boto3's CRC32 on every upload.
    assert len(crc) == (0 if checksum == "when_required" else 3)
    assert [op for op, _ in sent].count("CopyObject") == 1
    assert target.retention(f"{PREFIX}small") is None


def test_lifecycle_keeps_locked_generations(
    moto_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    server = new_bucket(moto_server, lock=True)
    target = target_on(server, object_lock=("GOVERNANCE", 1))
    old, new, orphan = (
        "backup-2026-01-01-000000",
        "backup-2026-01-02-000000",
        "backup-2025-12-01-000000",
    )
    for name in (old, new):
        target.put(f"{PREFIX}{name}.tar.gz", b"0123456789")
        target.put(f"{PREFIX}{name}.index.jsonl.gz", b"0123456789")
        target.put(f"{PREFIX}{name}.manifest.json", make_manifest(generation=name).to_bytes())
    target.put(f"{PREFIX}{orphan}.tar.gz", b"left by a killed run")
    store = GenerationStore(target, PREFIX)
    found = scan(target, PREFIX)
    gen = next(g for g in found if g.name == old)

    lock = store.lock_of(gen)
    assert lock is not None and lock.mode == "GOVERNANCE"
    assert store.lock_of(gen, now=lock.until + 1) is None  # once it has passed
    with pytest.raises(LockedGeneration, match=r"under Object Lock \(GOVERNANCE\) until 20"):
        store.delete_generation(gen, found)
    with caplog.at_level(logging.INFO, logger="itsup.lifecycle"):
        done = store.clean_up(grace_seconds=0)
    assert done.orphans == []  # the locked leftover is kept, and the log says until when
    assert f"{orphan} is under Object Lock (GOVERNANCE) until" in caplog.text
    assert f"{PREFIX}{old}.manifest.json" in [o.key for o in target.list(PREFIX)]
