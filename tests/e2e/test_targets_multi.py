"""Several targets in one run: the real command, the real S3 server and a folder.

One `itsup backup` writes the same generation (name, bytes, SHA-256) to every
target; a target that fails mid-run, or stalls, or cannot be reached at all
leaves the others complete, the run partial (exit 3), and itself without a
manifest or an unfinished upload. Commands that read take the first target that
answers; `verify` and `check` cover every target.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, http_error, stall
from helpers import MiB, Store, itsup, make_host, run_itsup, s3_secrets, tree_state, write_config
from s3server import S3Server, free_port

from itsup.errors import ExitCode

BLOB = 32 * MiB  # incompressible: more than the fan-out buffer plus two 5 MiB parts


def config(
    root: Path,
    server: S3Server,
    prefix: str,
    usb: Path,
    *,
    endpoint: str | None = None,
    first: str = "offsite",
    extra: str = "",
    s3: str = "",
) -> None:
    offsite = (
        "    offsite:\n"
        f"      url: s3://{server.bucket}/{prefix.rstrip('/')}\n"
        f"      endpoint: {endpoint or server.endpoint}\n"
        "      access_key_id: ${S3_KEY_ID}\n"
        "      secret_access_key: ${S3_SECRET}\n"
        "      part_size_mb: 5\n" + s3
    )
    local = f"    usb: file://{usb}/backups/itsup\n"  # what Store(local, usb) reads
    targets = offsite + local if first == "offsite" else local + offsite
    write_config(root, "backup:\n  include_volumes: true\n  targets:\n" + targets + extra)
    s3_secrets(root, server)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    root = make_host(tmp_path / "host")
    (root / "upstream/app/volumes/data/blob.bin").write_bytes(os.urandom(BLOB))
    return root


def manifests(store: Store) -> list[str]:
    return sorted(n for n in store.names() if n.endswith(".manifest.json"))


def local_store(_root: Path, usb: Path) -> Store:
    return Store("local", usb, None, "itsup/")  # its objects: usb/backups/itsup/


def state(root: Path) -> dict[str, Any]:
    return json.loads((root / ".itsup" / "state.json").read_text())["last"]["backup"]


def test_one_run_writes_the_same_generation_to_every_target(
    host: Path, tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    usb = tmp_path / "usb"
    config(host, s3_server, s3_prefix, usb)
    before = tree_state(host)
    res = itsup(host, "-v", "backup")
    offsite, folder = Store("s3", host, s3_server, s3_prefix), local_store(host, usb)
    assert manifests(offsite) == manifests(folder) and len(manifests(folder)) == 1
    name = manifests(folder)[0].removesuffix(".manifest.json")
    archive = f"{name}.tar.gz"
    assert (
        hashlib.sha256(offsite.read(archive)).hexdigest()
        == hashlib.sha256(folder.read(archive)).hexdigest()
    )
    m_s3 = json.loads(offsite.read(f"{name}.manifest.json"))
    m_usb = json.loads(folder.read(f"{name}.manifest.json"))
    assert m_s3["archive"]["sha256"] == m_usb["archive"]["sha256"]
    assert m_s3["archive"]["key"] == f"{s3_prefix}{archive}" and m_usb["archive"]["key"] == (
        f"itsup/{archive}"
    )
    assert offsite.read("latest.tar.gz") == folder.read(archive)
    # the report: one line per target
    assert f"  offsite: {name} stored" in res.out and f"  usb: {name} stored" in res.out
    record = state(host)
    assert record["result"] == "success" and record["details"]["targets_stored"] == 2
    assert [t["name"] for t in record["details"]["targets"]] == ["offsite", "usb"]
    # reads: the first target that answers; verify and check cover both
    itsup(host, "restore", "all", "--to", tmp_path / "back")
    assert tree_state(tmp_path / "back") == before
    verified = json.loads(itsup(host, "backup", "verify", "--json").out)
    assert verified["ok"] and [t["name"] for t in verified["targets"]] == ["offsite", "usb"]
    assert "offsite:" in itsup(host, "-v", "backup", "check", "--max-age", "1h").out


def test_a_target_failing_mid_run_leaves_the_other_complete_and_exit_3(
    host: Path, tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    usb = tmp_path / "usb"
    with FaultProxy(s3_server.endpoint) as proxy:
        config(host, s3_server, s3_prefix, usb, endpoint=proxy.url, s3="      max_attempts: 2\n")
        rule = proxy.inject(http_error(500, "InternalError"), operation="UploadPart")
        res = run_itsup("backup", root=host, timeout=120)
        assert res.code == ExitCode.PARTIAL, res.err
        assert rule.fired >= 1
    assert "Traceback" not in res.err
    assert "target offsite failed" in res.err and "InternalError" in res.err
    offsite, folder = Store("s3", host, s3_server, s3_prefix), local_store(host, usb)
    assert len(manifests(folder)) == 1
    assert manifests(offsite) == [] and not [n for n in offsite.names() if "backup-" in n]
    assert offsite.multipart_uploads() == []
    record = state(host)
    assert record["result"] == "partial" and "target offsite FAILED" in record["message"]
    assert record["details"]["targets_failed"] == 1
    rows = {t["name"]: t for t in record["details"]["targets"]}
    assert rows["usb"]["ok"] and not rows["offsite"]["ok"] and rows["offsite"]["error"]


def test_a_stalled_target_is_dropped_after_the_stall_timeout(
    host: Path, tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    usb = tmp_path / "usb"
    with FaultProxy(s3_server.endpoint) as proxy:
        config(
            host, s3_server, s3_prefix, usb, endpoint=proxy.url,
            s3="      max_concurrency: 1\n      read_timeout: 60\n",
            extra="  target_stall_timeout: 4\n",
        )  # fmt: skip
        proxy.inject(stall(6), operation="UploadPart", last=1)
        started = time.monotonic()
        res = run_itsup("backup", root=host, timeout=120)
        took = time.monotonic() - started
    assert res.code == ExitCode.PARTIAL, res.err
    assert "target offsite is too slow" in res.err and "target_stall_timeout" in res.err
    assert took < 30, took
    offsite, folder = Store("s3", host, s3_server, s3_prefix), local_store(host, usb)
    assert len(manifests(folder)) == 1 and manifests(offsite) == []
    assert offsite.multipart_uploads() == []  # aborted once its stalled request returned


def test_an_unreachable_target_is_passed_over(
    host: Path, tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    usb = tmp_path / "usb"
    dead = f"http://127.0.0.1:{free_port()}"
    config(
        host, s3_server, s3_prefix, usb, endpoint=dead,
        s3="      max_attempts: 1\n      connect_timeout: 1\n",
    )  # fmt: skip
    res = run_itsup("backup", root=host)
    assert res.code == ExitCode.PARTIAL, res.err
    assert "target offsite failed before the backup started" in res.err
    assert len(manifests(local_store(host, usb))) == 1
    listing = run_itsup("backup", "list", root=host)
    assert listing.code == 0 and f"Backups on {usb}/backups/itsup/" in listing.out
    assert "WARNING" in listing.err and "target offsite cannot be reached, trying usb" in (
        listing.err
    )
    itsup(host, "restore", "all", "--to", tmp_path / "back")
    # verify and check cover every target: the unreachable one fails them (exit 6)
    assert run_itsup("backup", "verify", root=host).code == ExitCode.STORAGE
    check = run_itsup("backup", "check", root=host)
    assert check.code == ExitCode.STORAGE and "target offsite" in check.err
    # --target picks one: only it is read or written
    itsup(host, "backup", "verify", "--target", "usb")
    itsup(host, "backup", "--target", "usb")
    assert len(manifests(local_store(host, usb))) == 2
    # every target unreachable: the run fails as a single target's would
    write_config(
        host,
        "backup:\n  targets:\n    a:\n      url: s3://b/x\n"
        f"      endpoint: {dead}\n      max_attempts: 1\n"
        "      access_key_id: k\n      secret_access_key: s\n"
        f"    b:\n      url: s3://b/y\n      endpoint: {dead}\n      max_attempts: 1\n"
        "      access_key_id: k\n      secret_access_key: s\n",
    )
    failed = run_itsup("backup", root=host)
    assert failed.code == ExitCode.STORAGE and "the backup failed on every target" in failed.err


def test_the_shrink_guard_refuses_the_run_on_every_target(
    host: Path, tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    usb = tmp_path / "usb"
    config(host, s3_server, s3_prefix, usb)
    itsup(host, "backup", "--target", "usb")  # only usb holds the big generation
    (host / "upstream/app/volumes/data/blob.bin").unlink()
    res = run_itsup("backup", root=host)
    assert res.code == ExitCode.FAILURE and "backup refused" in res.err
    offsite = Store("s3", host, s3_server, s3_prefix)
    assert manifests(offsite) == [] and offsite.multipart_uploads() == []
    assert len(manifests(local_store(host, usb))) == 1
    itsup(host, "backup", "--allow-shrink")
    assert len(manifests(offsite)) == 1 and len(manifests(local_store(host, usb))) == 2


def test_backup_target_keeps_one_target(
    host: Path, tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    usb = tmp_path / "usb"
    config(host, s3_server, s3_prefix, usb, extra="  target: usb\n")
    itsup(host, "backup")
    assert len(manifests(local_store(host, usb))) == 1
    assert manifests(Store("s3", host, s3_server, s3_prefix)) == []
