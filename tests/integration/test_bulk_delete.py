"""Deleting many objects at once (`S3Target.delete_many`, `storage/s3delete.py`) and
the lifecycle's batched deletes of generations built on it.

moto's server has DeleteObjects and evaluates a bucket policy per key, so a
key denied s3:DeleteObject fails inside a bulk request that deletes the
others. The suite's S3 server has DeleteObjects too (it insists on the
Content-MD5); a server without one is played by the fault proxy answering
501 NotImplemented in front of it. Requests are checked on the wire:
botocore's before-send event (moto) or the proxy's record.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, http_error
from helpers import make_host, make_manifest, s3_config, s3_secrets, write_config
from motoserver import new_bucket
from s3server import S3Server

from itsup import lifecycle
from itsup.actions.prune import run_prune
from itsup.errors import StorageError
from itsup.generation import scan
from itsup.host import load_host
from itsup.layout import Layout
from itsup.lifecycle import GenerationStore, LockedGeneration
from itsup.storage import s3delete
from itsup.storage.s3 import S3Target

PREFIX = "itsup/"
NAMES = [f"backup-2026-01-0{day}-030000" for day in range(1, 6)]


def target_on(server: S3Server, endpoint: str | None = None, **kw: Any) -> S3Target:
    return S3Target(
        server.bucket,
        endpoint=endpoint or server.endpoint,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        **kw,
    )


def bulk_requests(target: S3Target) -> list[tuple[list[str], dict[str, str], bytes]]:
    """Every DeleteObjects the target sends: (its keys, its headers, its body)."""
    sent: list[tuple[list[str], dict[str, str], bytes]] = []

    def seen(request: Any, **_kw: Any) -> None:
        body = request.body if isinstance(request.body, bytes) else request.body.encode()
        headers = {
            k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
        }
        sent.append((re.findall(r"<Key>([^<]*)</Key>", body.decode()), headers, body))

    target.client.meta.events.register("before-send.s3.DeleteObjects", seen)
    return sent


def write_generations(target: S3Target, names: list[str]) -> None:
    for name in names:
        target.put(f"{PREFIX}{name}.tar.gz", b"archive")
        target.put(f"{PREFIX}{name}.index.jsonl.gz", b"index")
        target.put(f"{PREFIX}{name}.manifest.json", make_manifest(generation=name).to_bytes())


def deny_deletes(server: S3Server, keys: list[str]) -> None:
    """A bucket policy refusing s3:DeleteObject on `keys` (moto evaluates it per key)."""
    statement = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:DeleteObject",
        "Resource": [f"arn:aws:s3:::{server.bucket}/{key}" for key in keys],
    }
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    server.client().put_bucket_policy(Bucket=server.bucket, Policy=json.dumps(policy))


def keys_left(target: S3Target) -> set[str]:
    return {info.key.removeprefix(PREFIX) for info in target.list(PREFIX)}


def test_bulk_delete_with_a_key_that_may_not_be_deleted(moto_server: S3Server) -> None:
    server = new_bucket(moto_server)
    target = target_on(server)
    keys = [f"{PREFIX}k{n}" for n in range(5)]
    for key in keys:
        target.put(key, b"x")
    deny_deletes(server, [keys[2]])
    sent = bulk_requests(target)

    failures = target.delete_many([*keys, f"{PREFIX}never-written"])

    assert list(failures) == [keys[2]]  # a missing key is no failure, as for `delete`
    assert isinstance(failures[keys[2]], StorageError)
    assert failures[keys[2]].message.startswith(f"{target.name}: deleting {keys[2]}: AccessDenied")
    assert keys_left(target) == {"k2"}
    ((asked, headers, body),) = sent  # one request for them all
    assert asked == [*keys, f"{PREFIX}never-written"]
    assert headers["content-md5"] == base64.b64encode(hashlib.md5(body).digest()).decode()
    assert target.bulk.supported is True


def test_bulk_delete_on_a_bucket_under_object_lock(moto_server: S3Server) -> None:
    """S3 refuses a DeleteObjects without Content-MD5 (or a checksum) on such a bucket."""
    server = new_bucket(moto_server, lock=True)
    target = target_on(server)
    for n in range(3):
        target.put(f"{PREFIX}k{n}", b"x")
    assert target.delete_many([f"{PREFIX}k{n}" for n in range(3)]) == {}
    assert keys_left(target) == set()


def test_generations_go_manifests_then_indexes_then_archives(
    moto_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In batches (of two here): each step one request; a generation whose manifest
    may not be deleted keeps its index and archive, one whose index may not keeps
    its archive."""
    monkeypatch.setattr(lifecycle, "BATCH", 2)
    server = new_bucket(moto_server)
    target = target_on(server)
    write_generations(target, NAMES)
    first, second, third, fourth, newest = NAMES
    deny_deletes(server, [f"{PREFIX}{second}.manifest.json", f"{PREFIX}{third}.index.jsonl.gz"])
    store = GenerationStore(target, PREFIX)
    found = scan(target, PREFIX, load_manifests=False)
    by_name = {g.name: g for g in found}
    sent = bulk_requests(target)

    done = store.delete_generations([by_name[n] for n in (first, second, third, fourth)], found)

    steps = [[key.removeprefix(PREFIX) for key in asked] for asked, _, _ in sent]
    assert steps == [
        [f"{first}.manifest.json", f"{second}.manifest.json"],
        [f"{first}.index.jsonl.gz"],
        [f"{first}.tar.gz"],
        [f"{third}.manifest.json", f"{fourth}.manifest.json"],
        [f"{third}.index.jsonl.gz", f"{fourth}.index.jsonl.gz"],
        [f"{fourth}.tar.gz"],
    ]
    assert done.deleted[first] == [
        f"{PREFIX}{first}.manifest.json",
        f"{PREFIX}{first}.index.jsonl.gz",
        f"{PREFIX}{first}.tar.gz",
    ]
    assert set(done.failed) == {second, third}
    assert "AccessDenied" in done.failed[second].message
    assert done.deleted[third] == [f"{PREFIX}{third}.manifest.json"]
    left = {g.name: set(g.objects) for g in scan(target, PREFIX, load_manifests=False)}
    assert left == {
        newest: {"tar.gz", "index.jsonl.gz", "manifest.json"},
        second: {"tar.gz", "index.jsonl.gz", "manifest.json"},  # still complete
        third: {"tar.gz", "index.jsonl.gz"},  # un-committed, its archive kept
    }
    # One generation at a time, a failure is raised as a single delete's would be.
    with pytest.raises(StorageError, match=f"deleting {PREFIX}{second}.manifest.json: Access"):
        store.delete_generation(by_name[second], found)


def test_a_locked_generation_is_left_by_the_batch(moto_server: S3Server) -> None:
    server = new_bucket(moto_server, lock=True)
    plain = target_on(server)
    write_generations(plain, NAMES[:2])
    locked = target_on(server, object_lock=("GOVERNANCE", 1))
    write_generations(locked, NAMES[2:])
    store = GenerationStore(plain, PREFIX)
    found = scan(plain, PREFIX, load_manifests=False)
    by_name = {g.name: g for g in found}

    done = store.delete_generations([by_name[n] for n in NAMES[:4]], found)

    assert set(done.deleted) == set(NAMES[:2])
    assert set(done.locked) == set(NAMES[2:4])
    assert isinstance(done.locked[NAMES[2]], LockedGeneration)
    assert not done.failed
    assert {g.name for g in scan(plain, PREFIX, load_manifests=False)} == set(NAMES[2:])


def test_the_suite_server_deletes_in_bulk(s3_server: S3Server, s3_prefix: str) -> None:
    target = target_on(s3_server)
    sent = bulk_requests(target)
    keys = [f"{s3_prefix}k{n}" for n in range(4)]
    for key in keys:
        target.put(key, b"x")
    assert target.delete_many([*keys, f"{s3_prefix}never-written"]) == {}
    assert [o.key for o in target.list(s3_prefix)] == []
    assert len(sent) == 1 and target.bulk.supported is True


def test_a_server_without_bulk_delete_gets_single_deletes(
    s3_server: S3Server, s3_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NotImplemented once: from then on this target deletes one key at a time."""
    monkeypatch.setattr(s3delete, "BULK_DELETE_KEYS", 3)
    with FaultProxy(s3_server.endpoint) as proxy:
        rule = proxy.inject(http_error(501, "NotImplemented"), operation="DeleteObjects")
        target = target_on(s3_server, endpoint=proxy.url)
        keys = [f"{s3_prefix}k{n}" for n in range(7)]
        for key in keys:
            target.put(key, b"x")
        assert target.delete_many(keys[:5]) == {}
        assert target.delete_many(keys[5:]) == {}
        ops = proxy.operations()
    assert rule.fired == 1 and ops["DeleteObjects"] == 1
    assert ops["DeleteObject"] == 7
    assert target.bulk.supported is False
    assert [o.key for o in target_on(s3_server).list(s3_prefix)] == []


def test_single_deletes_report_each_failure(s3_server: S3Server, s3_prefix: str) -> None:
    """Without bulk delete, a key whose DELETE fails is that key's failure; the others go."""
    with FaultProxy(s3_server.endpoint) as proxy:
        proxy.inject(http_error(501, "NotImplemented"), operation="DeleteObjects")
        proxy.inject(http_error(403, "AccessDenied"), operation="DeleteObject", path=r"/k1$")
        target = target_on(s3_server, endpoint=proxy.url)
        keys = [f"{s3_prefix}k{n}" for n in range(3)]
        for key in keys:
            target.put(key, b"x")
        failures = target.delete_many(keys)
    assert list(failures) == [keys[1]]
    assert failures[keys[1]].message.startswith(f"{target.name}: deleting {keys[1]}: AccessDenied")
    assert [o.key for o in target_on(s3_server).list(s3_prefix)] == [keys[1]]


def test_prune_removes_the_rest_and_then_names_what_it_could_not(
    moto_server: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = new_bucket(moto_server)
    root = make_host(tmp_path / "host", volumes=False)
    s3_secrets(root, server)
    write_config(root, s3_config(server, PREFIX, "  retention:\n    keep_last: 1\n"))
    target = target_on(server)
    write_generations(target, NAMES)
    stuck = f"{PREFIX}{NAMES[1]}.manifest.json"
    deny_deletes(server, [stuck])
    caplog.set_level(logging.INFO, logger="itsup.prune")
    with pytest.raises(StorageError, match=f"deleting {stuck}: AccessDenied"):
        run_prune(load_host(Layout(root)))
    left = {g.name: set(g.objects) for g in scan(target, PREFIX, load_manifests=False)}
    whole = {"tar.gz", "index.jsonl.gz", "manifest.json"}
    assert left == {NAMES[1]: whole, NAMES[4]: whole}  # the newest is kept by the policy
    assert f"{NAMES[1]} not removed: " in caplog.text
    for name in (NAMES[0], NAMES[2], NAMES[3]):
        assert f"removed {name} (not kept by backup.retention): 3 object(s)" in caplog.text
