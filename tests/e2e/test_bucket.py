"""Immutable backups and bucket hardening through the `itsup` command, on moto's
S3 server (tests/motoserver.py): `backup setup-bucket`, `doctor`, `iam-policy`,
and backups written under Object Lock.

moto enforces some of S3's rules and not others; each test says which it
relies on. moto refuses: a locked PutObject without Content-MD5 (or a checksum
header), deleting a locked object version, an Object Lock configuration on
an unversioned bucket. moto does not: check that a Content-MD5 is the right
digest, demand Content-MD5 on UploadPart, evaluate IAM policies (any key may
do anything), or transition objects by the lifecycle (it stores the rules).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Store,
    itsup,
    make_host,
    run_itsup,
    s3_config,
    s3_secrets,
    setup_host,
    write_config,
)
from motoserver import new_bucket
from s3server import S3Server

PREFIX = "itsup/"


def lock_extra(mode: str = "GOVERNANCE", days: int = 2) -> str:
    return f"    object_lock: {{mode: {mode}, days: {days}}}\n"


def host_with(tmp_path: Path, server: S3Server, s3_extra: str = "") -> Store:
    """A sample host whose `backup.s3` section points at `server`'s bucket, with
    `s3_extra` (lines indented four spaces) among its S3 settings."""
    root = tmp_path / "host"
    make_host(root)
    s3_secrets(root, server)
    write_config(root, s3_config(server, PREFIX, s3_extra) + "  include_volumes: true\n")
    return Store("s3", root, server, PREFIX)


def lines(text: str) -> dict[str, str]:
    """`item: state (detail)` lines by item."""
    found = {}
    for line in text.splitlines():
        item, sep, rest = line.partition(": ")
        if sep:
            found[item] = rest
    return found


def test_setup_bucket_dry_run_apply_and_already_so(tmp_path: Path, moto_server: S3Server) -> None:
    server = new_bucket(moto_server)
    store = host_with(tmp_path, server)
    client = server.client()

    dry = itsup(store.root, "backup", "setup-bucket", "--dry-run").out
    shown = lines(dry)
    for item in ("versioning", "encryption", "public access block", "lifecycle"):
        assert shown[item].startswith("would set"), dry
    assert "30 days" in shown["lifecycle"] and "expire after 365" in shown["lifecycle"]
    # ... and nothing changed
    assert "Status" not in client.get_bucket_versioning(Bucket=server.bucket)
    with pytest.raises(client.exceptions.ClientError):
        client.get_bucket_lifecycle_configuration(Bucket=server.bucket)

    applied = lines(itsup(store.root, "backup", "setup-bucket").out)
    for item in ("versioning", "encryption", "public access block", "lifecycle"):
        assert applied[item].startswith("set"), applied
    assert applied["object lock"].startswith("skipped")

    assert client.get_bucket_versioning(Bucket=server.bucket)["Status"] == "Enabled"
    sse = client.get_bucket_encryption(Bucket=server.bucket)["ServerSideEncryptionConfiguration"]
    assert sse["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = client.get_public_access_block(Bucket=server.bucket)
    assert all(block["PublicAccessBlockConfiguration"].values())
    rules = {
        r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=server.bucket)["Rules"]
    }
    generations = rules[f"itsup-generations:{PREFIX}"]
    assert generations["Filter"]["Prefix"] == f"{PREFIX}backup-"
    assert sorted((t["Days"], t["StorageClass"]) for t in generations["Transitions"]) == [
        (30, "STANDARD_IA"),
        (90, "GLACIER"),
    ]
    assert generations["Expiration"]["Days"] == 365
    versions = rules[f"itsup-versions:{PREFIX}"]
    assert versions["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30

    again = lines(itsup(store.root, "backup", "setup-bucket").out)
    for item in ("versioning", "encryption", "public access block", "lifecycle"):
        assert again[item].startswith("already so"), again

    doctor = itsup(store.root, "backup", "doctor").out
    assert "FAIL" not in doctor
    for item in ("versioning", "encryption", "public access block", "lifecycle"):
        assert f"ok   {item}:" in doctor, doctor
    assert "ok   credentials: put" in doctor and "ok   credentials: list" in doctor
    # moto evaluates no IAM policy: any key may delete, so only "allowed" is seen here.
    assert "info credentials: delete: allowed" in doctor
    assert "ok   clock:" in doctor
    # The probe was removed (a delete marker on this versioned bucket).
    listed = client.list_objects_v2(Bucket=server.bucket, Prefix=PREFIX)
    assert not listed.get("Contents")


def test_lifecycle_settings_and_other_rules_kept(tmp_path: Path, moto_server: S3Server) -> None:
    server = new_bucket(moto_server)
    client = server.client()
    other = {
        "ID": "theirs",
        "Status": "Enabled",
        "Filter": {"Prefix": "logs/"},
        "Expiration": {"Days": 7},
    }
    client.put_bucket_lifecycle_configuration(
        Bucket=server.bucket, LifecycleConfiguration={"Rules": [other]}
    )
    extra = "    lifecycle: {ia_days: null, glacier_days: 60, expire_days: 400}\n"
    store = host_with(tmp_path, server, extra)
    itsup(store.root, "backup", "setup-bucket")
    rules = {
        r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=server.bucket)["Rules"]
    }
    assert "theirs" in rules  # a rule that is not itsup's stays
    ours = rules[f"itsup-generations:{PREFIX}"]
    assert [(t["Days"], t["StorageClass"]) for t in ours["Transitions"]] == [(60, "GLACIER")]
    assert ours["Expiration"]["Days"] == 400
    assert "already so" in lines(itsup(store.root, "backup", "setup-bucket").out)["lifecycle"]


def test_doctor_names_what_is_missing(tmp_path: Path, moto_server: S3Server) -> None:
    server = new_bucket(moto_server)
    store = host_with(tmp_path, server)
    res = run_itsup("backup", "doctor", root=store.root, expect=1)
    for item in ("versioning", "public access block", "lifecycle"):
        assert f"FAIL {item}:" in res.out, res.out
    assert "ok   credentials: get" in res.out  # the key itself works
    assert "problem(s)" in res.out


def test_create_locked_bucket_and_back_up_under_object_lock(
    tmp_path: Path, moto_server: S3Server
) -> None:
    server = new_bucket(moto_server, create=False)
    store = host_with(tmp_path, server, lock_extra("GOVERNANCE", 2) + "    part_size_mb: 5\n")
    # Random data the compressor cannot shrink: a multipart upload of several parts.
    big = store.root / "upstream" / "app" / "volumes" / "data" / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024))
    client = server.client()

    missing = run_itsup("backup", "setup-bucket", root=store.root, expect=6)
    assert "does not exist" in missing.err and "--create" in missing.err
    dry = lines(itsup(store.root, "backup", "setup-bucket", "--create", "--dry-run").out)
    assert dry["bucket"].startswith("would create")
    assert server.bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]

    made = lines(itsup(store.root, "backup", "setup-bucket", "--create").out)
    assert made["bucket"].startswith("created") and made["object lock"].startswith("set")
    lock = client.get_object_lock_configuration(Bucket=server.bucket)["ObjectLockConfiguration"]
    assert lock["ObjectLockEnabled"] == "Enabled"
    retention = lock["Rule"]["DefaultRetention"]
    assert (retention["Mode"], retention["Days"]) == ("GOVERNANCE", 2)
    assert "already so" in lines(itsup(store.root, "backup", "setup-bucket").out)["object lock"]
    doctor = itsup(store.root, "backup", "doctor").out
    assert "ok   object lock: enabled; writes are locked GOVERNANCE 2 days" in doctor

    # Every object of a generation is written locked. moto refuses a locked
    # PutObject without Content-MD5, so the index, manifest and latest.json prove
    # it is sent (moto does not check that the digest is right). moto keeps no
    # retention at all on an object written by a multipart upload (its
    # CompleteMultipartUpload drops the lock headers and the bucket's default),
    # which the archive and the `latest` copy are here: for them the integration
    # tests (tests/integration/test_object_lock.py) check the requests instead.
    itsup(store.root, "backup")
    names = store.names()
    generation = next(n for n in names if n.endswith(".manifest.json")).removesuffix(
        ".manifest.json"
    )
    put_whole = [n for n in names if n.endswith((".json", ".index.jsonl.gz"))]
    assert len(put_whole) == 3, names  # index, manifest, latest.json
    for name in put_whole:
        head = client.head_object(Bucket=server.bucket, Key=PREFIX + name)
        assert head.get("ObjectLockMode") == "GOVERNANCE", (name, head)
        assert head["ObjectLockRetainUntilDate"].timestamp() > head["LastModified"].timestamp()

    # `latest` on a locked bucket: a second backup writes a new version of
    # latest.tar.gz and latest.json; the old versions stay, locked, until their
    # retention ends (then the lifecycle's noncurrent rule removes them).
    itsup(store.root, "backup", "--allow-shrink")
    for name in ("latest.tar.gz", "latest.json"):
        versions = client.list_object_versions(Bucket=server.bucket, Prefix=PREFIX + name)
        assert len(versions["Versions"]) == 2, name
    old = next(v for v in versions["Versions"] if not v["IsLatest"])
    # moto enforces this: a locked version cannot be deleted (no bypass given).
    with pytest.raises(client.exceptions.ClientError) as denied:
        client.delete_object(
            Bucket=server.bucket, Key=f"{PREFIX}latest.json", VersionId=old["VersionId"]
        )
    assert "AccessDenied" in str(denied.value)
    restored = itsup(store.root, "restore", "all", "--to", tmp_path / "check")
    assert restored.code == 0

    report = json.loads(itsup(store.root, "backup", "verify", "--all", "--json").out)
    locks = {g["generation"]: g["lock"] for g in report["generations"]}
    assert locks[generation]["mode"] == "GOVERNANCE"
    assert locks[generation]["retain_until"].startswith("20")
    table = itsup(store.root, "backup", "verify").out
    assert "locked until" in table and "GOVERNANCE" in table


def test_doctor_fails_when_object_lock_is_asked_of_an_unlocked_bucket(
    tmp_path: Path, moto_server: S3Server
) -> None:
    server = new_bucket(moto_server)
    store = host_with(tmp_path, server, lock_extra())
    res = run_itsup("backup", "doctor", root=store.root, expect=1)
    assert "FAIL object lock: object_lock asks for GOVERNANCE 2 days" in res.out


def test_expiry_shorter_than_the_lock_is_refused(tmp_path: Path, moto_server: S3Server) -> None:
    server = new_bucket(moto_server)
    store = host_with(tmp_path, server, lock_extra("COMPLIANCE", 400))
    res = run_itsup("backup", "setup-bucket", "--dry-run", root=store.root, expect=4)
    assert "lifecycle.expire_days: 365 days is shorter than object_lock.days (400)" in res.err


def test_iam_policy(tmp_path: Path, moto_server: S3Server) -> None:
    server = new_bucket(moto_server)
    store = host_with(tmp_path, server)
    policy = json.loads(itsup(store.root, "backup", "iam-policy").out)
    by_sid: dict[str, Any] = {s["Sid"]: s for s in policy["Statement"]}
    assert policy["Version"] == "2012-10-17"
    listing = by_sid["ItsupList"]
    assert listing["Action"] == ["s3:ListBucket"]
    assert listing["Resource"] == [f"arn:aws:s3:::{server.bucket}"]
    assert listing["Condition"] == {"StringLike": {"s3:prefix": [PREFIX, f"{PREFIX}*"]}}
    write = by_sid["ItsupWrite"]
    assert write["Resource"] == [f"arn:aws:s3:::{server.bucket}/{PREFIX}*"]
    for action in (
        "s3:PutObject",
        "s3:GetObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
    ):
        assert action in write["Action"]
    assert by_sid["ItsupUploads"]["Action"] == ["s3:ListBucketMultipartUploads"]
    assert by_sid["ItsupPrune"]["Action"] == ["s3:DeleteObject"]
    every = [a for s in policy["Statement"] for a in s["Action"]]
    assert "s3:DeleteObject" not in write["Action"]
    assert "s3:BypassGovernanceRetention" not in every and "s3:DeleteObjectVersion" not in every
    assert "s3:PutObjectRetention" not in every  # only with object_lock

    read = json.loads(itsup(store.root, "backup", "iam-policy", "--read-only").out)
    actions = sorted(a for s in read["Statement"] for a in s["Action"])
    assert actions == ["s3:GetObject", "s3:ListBucket"]

    locked = host_with(tmp_path / "locked", server, lock_extra())
    policy = json.loads(itsup(locked.root, "backup", "iam-policy").out)
    write = next(s for s in policy["Statement"] if s["Sid"] == "ItsupWrite")
    assert "s3:PutObjectRetention" in write["Action"]


@pytest.mark.parametrize("command", ["setup-bucket", "doctor", "iam-policy"])
def test_a_folder_target_has_no_bucket(tmp_path: Path, command: str) -> None:
    store = setup_host(tmp_path / "host", "local", None, PREFIX)
    res = run_itsup("backup", command, root=store.root, expect=2)
    assert "is a folder" in res.err and "no" in res.err


def test_doctor_on_an_unreachable_endpoint_exits_6(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host")
    write_config(
        root,
        "backup:\n  s3:\n    bucket: b\n    endpoint: http://127.0.0.1:1\n"
        "    access_key_id: k\n    secret_access_key: s\n"
        "    connect_timeout: 1\n    max_attempts: 1\n",
    )
    res = run_itsup("backup", "doctor", root=root, expect=6)
    assert "itsup: error:" in res.err


def test_prune_keeps_a_locked_generation_and_says_until_when(
    tmp_path: Path, moto_server: S3Server
) -> None:
    server = new_bucket(moto_server, create=False)
    store = host_with(tmp_path, server, lock_extra("GOVERNANCE", 2))
    itsup(store.root, "backup", "setup-bucket", "--create")
    itsup(store.root, "backup")
    time.sleep(1.1)  # generation names have one-second resolution
    itsup(store.root, "backup")
    config = store.root / "projects" / "itsup.yml"
    config.write_text(config.read_text() + "  retention:\n    keep_last: 1\n")
    manifests = sorted(n for n in store.names() if n.endswith(".manifest.json"))
    assert len(manifests) == 2
    older = manifests[0].removesuffix(".manifest.json")

    out = itsup(store.root, "backup", "prune").out
    assert f"{older}: not removed: locked (GOVERNANCE) until 20" in out, out
    assert f"{older}.manifest.json" in store.names()  # nothing of it was deleted
