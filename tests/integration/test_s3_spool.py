"""Spooled multipart parts against the real S3 server the suite starts.

The limits are forced small (PART_MEMORY, part growth) so that an object of
a few tens of MiB goes through every stage of the plan: parts in memory,
then larger parts spooled to anonymous temporary files. The object must read
back byte for byte, a spooled part whose upload breaks off must be sent
again from its file, and no spool file may ever have a name on disk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, reset_after
from helpers import payload
from s3server import S3Server

from itsup.storage import s3
from itsup.storage.s3 import S3Target

MiB = 1 << 20


@pytest.fixture
def spools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    """Parts of 5, 10 and 20 MiB (two of each, then 20 MiB on); 24 MiB for part buffers,
    so 5 and 10 MiB parts stay in memory and 20 MiB parts are spooled. Records each
    spool file's mode and link count, in a temporary folder of the test's own."""
    monkeypatch.setattr(s3, "PART_GROWTH_EVERY", 2)
    monkeypatch.setattr(s3, "PART_MEMORY", 24 * MiB)
    folder = tmp_path / "spool"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    seen: list[dict[str, Any]] = []
    real = tempfile.TemporaryFile

    def recording(*args: Any, **kwargs: Any) -> Any:
        f = real(*args, **kwargs)
        st = os.fstat(f.fileno())
        seen.append({"mode": st.st_mode & 0o777, "links": st.st_nlink, "names": os.listdir(folder)})
        return f

    monkeypatch.setattr(s3.tempfile, "TemporaryFile", recording)
    yield seen
    assert os.listdir(folder) == []


def target_for(server: S3Server, endpoint: str | None = None) -> S3Target:
    return S3Target(
        server.bucket,
        endpoint=endpoint or server.endpoint,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        part_size=5 * MiB,
        max_concurrency=3,
        connect_timeout=2,
        read_timeout=5,
        max_attempts=4,
    )


def pending(server: S3Server, prefix: str) -> list[str]:
    resp = server.client().list_multipart_uploads(Bucket=server.bucket, Prefix=prefix)
    return [u["Key"] for u in resp.get("Uploads", []) or []]


def write_all(target: S3Target, key: str, data: bytes) -> int:
    writer = target.open_writer(key, size_hint=len(data))
    for start in range(0, len(data), 1_000_003):
        writer.write(data[start : start + 1_000_003])
    return writer.commit()


def test_spooled_parts_upload_and_read_back_identical(
    s3_server: S3Server, s3_prefix: str, spools: list[dict[str, Any]]
) -> None:
    # 5 + 5 + 10 + 10 MiB in memory, then 20 + 20 MiB spooled and a spooled 3 MiB tail.
    data = payload(73 * MiB + 12_345, seed=1)
    target = target_for(s3_server)
    key = f"{s3_prefix}spooled.bin"
    assert write_all(target, key, data) == len(data)
    got = target.get(key)
    assert len(got) == len(data)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert pending(s3_server, s3_prefix) == []
    assert len(spools) == 3, "the 20 MiB parts and the tail were not spooled"
    for spool in spools:
        assert spool["mode"] == 0o600
        assert spool["links"] == 0, "a spool file has a name on disk"
        assert spool["names"] == []


def test_a_spooled_part_that_breaks_off_is_sent_again_from_its_file(
    s3_server: S3Server, s3_prefix: str, spools: list[dict[str, Any]]
) -> None:
    data = payload(45 * MiB, seed=2)  # parts 5, 5, 10, 10 (memory), then 15 MiB spooled
    key = f"{s3_prefix}retried.bin"
    with FaultProxy(s3_server.endpoint) as proxy:
        reset = proxy.inject(
            reset_after(3 * MiB),
            operation="UploadPart",
            query=r"(^|&)partNumber=5(&|$)",
            times=1,
        )
        target = target_for(s3_server, proxy.url)
        assert write_all(target, key, data) == len(data)
        assert reset.fired == 1
    got = target_for(s3_server).get(key)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert pending(s3_server, s3_prefix) == []
    assert len(spools) == 1
