"""One conformance suite for the storage `Target` protocol (itsup/storage/base.py).

Every test runs against every kind of target registered in `itsup.storage`
(the local folder, and S3 on the real server the suite starts on loopback,
a juicefs gateway), each opened through its URL with `open_target`, both bare
and with the wrappers every run stacks around it (logging, retries), each
test under a key prefix of its own. The S3 server returns no MD5 ETags, so
nothing here (and nothing in itsup) may rely on them.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import payload
from s3server import S3Server, free_port

from itsup.config import TARGET_SCHEMES
from itsup.errors import NotFoundError, StorageError
from itsup.storage import OPENERS, TargetSpec, open_target
from itsup.storage.base import ObjectInfo, Target
from itsup.storage.local import PARTIAL_MARK, LocalTarget
from itsup.storage.logged import LoggedTarget
from itsup.storage.retry import RetryingTarget
from itsup.storage.s3 import S3Target

MiB = 1024 * 1024
PART = 5 * MiB  # the smallest part size S3 accepts


@dataclass
class Case:
    kind: str  # a registered URL scheme: "file" | "s3"
    target: Any  # a Target
    prefix: str
    server: S3Server | None = None
    base: Path | None = None

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def pending_uploads(self) -> list[str]:
        """Uploads started and never finished under this test's prefix."""
        if self.kind == "s3":
            assert self.server is not None
            resp = self.server.client().list_multipart_uploads(
                Bucket=self.server.bucket, Prefix=self.prefix
            )
            return [u["Key"] for u in resp.get("Uploads", []) or []]
        assert self.base is not None
        found = []
        for path in self.base.rglob("*"):
            if PARTIAL_MARK in path.name:
                key = path.relative_to(self.base).as_posix().rpartition(PARTIAL_MARK)[0]
                if key.startswith(self.prefix):
                    found.append(key)
        return found


def _file_spec(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[TargetSpec, dict[str, Any]]:
    base = tmp_path / "target"
    return TargetSpec(f"file://{base}"), {"base": base}


def _s3_spec(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[TargetSpec, dict[str, Any]]:
    server: S3Server = request.getfixturevalue("s3_server")
    options = {
        "endpoint": server.endpoint,
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
        "part_size": PART,
        "max_concurrency": 3,
    }
    return TargetSpec(f"s3://{server.bucket}", options), {"server": server}


# How the suite reaches each registered kind: a URL (and settings) for a test's target.
SPECS = {"file": _file_spec, "s3": _s3_spec}
KINDS = [(scheme, wrapped) for scheme in sorted(OPENERS) for wrapped in (False, True)]


def test_every_registered_kind_is_in_the_suite_and_in_the_config() -> None:
    assert set(SPECS) == set(OPENERS) == set(TARGET_SCHEMES)


@pytest.fixture(params=KINDS, ids=[f"{k}{'+wrappers' if w else ''}" for k, w in KINDS])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    scheme, wrapped = request.param
    spec, extra = SPECS[scheme](request, tmp_path)
    target = open_target(spec, wrap=wrapped)
    if wrapped:
        assert isinstance(target, RetryingTarget) and isinstance(target.inner, LoggedTarget)
    yield Case(scheme, target, f"conformance/{uuid.uuid4().hex[:12]}/", **extra)
    bare = target.inner.inner if wrapped else target
    if isinstance(bare, S3Target):
        bare.pool.shutdown(wait=True)
        bare.read_pool.shutdown(wait=True)


def keys(infos: Iterator[ObjectInfo]) -> set[str]:
    return {info.key for info in infos}


def write_in_pieces(writer: Any, data: bytes, piece: int) -> None:
    for start in range(0, len(data), piece):
        assert writer.write(data[start : start + piece]) == len(data[start : start + piece])


# -- small objects ---------------------------------------------------------------


def test_satisfies_the_protocol(case: Case) -> None:
    target: Target = case.target  # type-checks only if the class matches the protocol
    assert isinstance(target.name, str) and target.name


def test_put_get_round_trip(case: Case) -> None:
    t = case.target
    for name, data in [("empty", b""), ("small", b"hello\n"), ("binary", payload(70_000))]:
        t.put(case.key(name), data)
        assert t.get(case.key(name)) == data
        assert t.stat(case.key(name)).size == len(data)


def test_put_replaces_an_existing_object(case: Case) -> None:
    t = case.target
    t.put(case.key("obj"), b"first version, longer")
    t.put(case.key("obj"), b"second")
    assert t.get(case.key("obj")) == b"second"
    assert t.stat(case.key("obj")).size == 6


def test_unicode_and_nested_keys(case: Case) -> None:
    t = case.target
    key = case.key("deep/er/naïve ünïcode – name.json")
    t.put(key, b"{}")
    assert t.get(key) == b"{}"
    assert key in keys(t.list(case.prefix))


def test_missing_key_is_not_found(case: Case) -> None:
    t = case.target
    missing = case.key("does-not-exist")
    with pytest.raises(NotFoundError) as get_err:
        t.get(missing)
    assert "does-not-exist" in get_err.value.message
    with pytest.raises(NotFoundError):
        t.stat(missing)
    with pytest.raises(NotFoundError):
        t.open_reader(missing)
    with pytest.raises(NotFoundError):
        t.copy(missing, case.key("copy-of-nothing"))
    assert keys(t.list(case.prefix)) == set()


def test_a_folder_like_prefix_is_not_an_object(case: Case) -> None:
    """`a/b` existing does not make `a` an object: not found, on both targets."""
    t = case.target
    t.put(case.key("folder/child"), b"x")
    for fn in (t.get, t.stat, t.open_reader):
        with pytest.raises(NotFoundError):
            fn(case.key("folder"))
    t.delete(case.key("folder"))  # deleting a missing key is not an error
    assert t.get(case.key("folder/child")) == b"x"


def test_stat_reports_size_and_time(case: Case) -> None:
    import time

    t = case.target
    before = time.time()
    t.put(case.key("sized"), b"x" * 1234)
    info = t.stat(case.key("sized"))
    assert info.key == case.key("sized")
    assert info.size == 1234
    assert before - 120 < info.modified < time.time() + 120


def test_list_by_prefix_and_never_outside_it(case: Case) -> None:
    t = case.target
    inside = ["a1", "a2", "ab/c", "a/deep/er"]
    outside = ["b1", "x/a1"]
    for name in inside + outside:
        t.put(case.key(name), name.encode())
    # A sibling prefix that shares the beginning must not leak in.
    sibling = case.prefix.rstrip("/") + "-sibling/"
    t.put(f"{sibling}a1", b"other")
    try:
        listed = list(t.list(case.key("a")))
        assert {i.key for i in listed} == {case.key(n) for n in inside}
        assert {i.key: i.size for i in listed} == {case.key(n): len(n) for n in inside}
        assert keys(t.list(case.key("a/"))) == {case.key("a/deep/er")}
        assert keys(t.list(case.prefix)) == {case.key(n) for n in inside + outside}
        assert keys(t.list(case.key("nothing-here/"))) == set()
    finally:
        t.delete(f"{sibling}a1")


def test_delete(case: Case) -> None:
    t = case.target
    t.put(case.key("gone"), b"bye")
    t.put(case.key("kept"), b"stay")
    t.delete(case.key("gone"))
    with pytest.raises(NotFoundError):
        t.get(case.key("gone"))
    t.delete(case.key("gone"))  # again: a missing key is not an error
    t.delete(case.key("never-existed"))
    assert keys(t.list(case.prefix)) == {case.key("kept")}


def test_copy_makes_an_independent_identical_object(case: Case) -> None:
    t = case.target
    data = payload(300_000, seed=7)
    t.put(case.key("src"), data)
    t.copy(case.key("src"), case.key("dst"))
    assert t.get(case.key("dst")) == data
    assert t.get(case.key("src")) == data
    # Replacing the source afterwards leaves the copy alone (no aliasing).
    t.put(case.key("src"), b"new source")
    assert t.get(case.key("dst")) == data
    # Copying over an existing object replaces it.
    t.copy(case.key("src"), case.key("dst"))
    assert t.get(case.key("dst")) == b"new source"
    assert keys(t.list(case.prefix)) == {case.key("src"), case.key("dst")}


def test_copy_to_a_key_in_a_new_folder(case: Case) -> None:
    t = case.target
    t.put(case.key("src"), b"data")
    t.copy(case.key("src"), case.key("new/folder/dst"))
    assert t.get(case.key("new/folder/dst")) == b"data"


# -- streaming writes ------------------------------------------------------------


def test_writer_small_object_commits_as_one_object(case: Case) -> None:
    t = case.target
    data = payload(100_000, seed=1)
    w = t.open_writer(case.key("small.bin"))
    write_in_pieces(w, data, 7_777)
    assert w.commit() == len(data)
    assert t.get(case.key("small.bin")) == data
    assert case.pending_uploads() == []


def test_writer_empty_object(case: Case) -> None:
    t = case.target
    w = t.open_writer(case.key("empty.bin"))
    assert w.commit() == 0
    assert t.get(case.key("empty.bin")) == b""


def test_writer_multipart_object(case: Case) -> None:
    """About 12 MiB in odd-sized writes: three 5 MiB parts on S3, the last one short."""
    t = case.target
    data = payload(12 * MiB + 12_345, seed=2)
    w = t.open_writer(case.key("big.bin"))
    write_in_pieces(w, data, 1_000_003)
    # Nothing is visible under the key before commit.
    with pytest.raises(NotFoundError):
        t.stat(case.key("big.bin"))
    assert keys(t.list(case.prefix)) == set()
    assert w.commit() == len(data)
    assert t.stat(case.key("big.bin")).size == len(data)
    got = t.get(case.key("big.bin"))
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    assert case.pending_uploads() == []
    assert keys(t.list(case.prefix)) == {case.key("big.bin")}


def test_writer_exactly_one_part(case: Case) -> None:
    t = case.target
    data = payload(PART, seed=3)
    w = t.open_writer(case.key("one-part.bin"))
    write_in_pieces(w, data, PART)
    assert w.commit() == PART
    assert t.get(case.key("one-part.bin")) == data


def test_writer_abort_leaves_nothing(case: Case) -> None:
    t = case.target
    w = t.open_writer(case.key("aborted.bin"))
    write_in_pieces(w, payload(11 * MiB, seed=4), MiB)  # parts already sent on S3
    w.abort()
    w.abort()  # safe to call more than once
    with pytest.raises(NotFoundError):
        t.stat(case.key("aborted.bin"))
    assert keys(t.list(case.prefix)) == set()
    assert case.pending_uploads() == []


def test_writer_abort_keeps_the_previous_object(case: Case) -> None:
    t = case.target
    t.put(case.key("obj"), b"the old, complete object")
    w = t.open_writer(case.key("obj"))
    write_in_pieces(w, payload(6 * MiB, seed=5), MiB)
    w.abort()
    assert t.get(case.key("obj")) == b"the old, complete object"
    assert case.pending_uploads() == []


def test_writer_abort_before_any_write(case: Case) -> None:
    t = case.target
    w = t.open_writer(case.key("nothing.bin"))
    w.abort()
    assert keys(t.list(case.prefix)) == set()
    assert case.pending_uploads() == []


def test_cleanup_incomplete_removes_stale_uploads(case: Case) -> None:
    t = case.target
    t.put(case.key("complete"), b"keep me")
    # Two uploads a killed process left behind: started, data sent, never finished.
    for name in ("stale-1.bin", "sub/stale-2.bin"):
        w = t.open_writer(case.key(name))
        write_in_pieces(w, payload(6 * MiB, seed=6), 3 * MiB)
    assert len(case.pending_uploads()) == 2
    # One under another prefix is not touched.
    other = case.prefix.rstrip("/") + "-other/"
    w_other = t.open_writer(f"{other}stale.bin")
    write_in_pieces(w_other, payload(6 * MiB, seed=8), 3 * MiB)
    try:
        # A prefix is a string prefix of keys, not a folder: others are left alone.
        assert t.cleanup_incomplete(case.key("zzz")) == 0
        assert t.cleanup_incomplete(case.key("sub/")) == 1
        assert case.pending_uploads() == [case.key("stale-1.bin")]
        assert t.cleanup_incomplete(case.key("stale-")) == 1
        assert case.pending_uploads() == []
        assert keys(t.list(case.prefix)) == {case.key("complete")}
        assert t.get(case.key("complete")) == b"keep me"
        assert t.cleanup_incomplete(case.prefix) == 0
    finally:
        w_other.abort()


# -- streaming reads -------------------------------------------------------------


def test_reader_returns_exact_bytes_of_a_multi_chunk_object(case: Case) -> None:
    """20 MiB spans several of the S3 reader's ranged GETs; read in odd sizes."""
    t = case.target
    data = payload(20 * MiB + 3, seed=9)
    w = t.open_writer(case.key("read.bin"))
    write_in_pieces(w, data, 4 * MiB)
    w.commit()
    digest = hashlib.sha256()
    total = 0
    with t.open_reader(case.key("read.bin")) as reader:
        sizes = [1, 4095, 65_537, 3 * MiB + 1, 10 * MiB]
        i = 0
        while True:
            chunk = reader.read(sizes[i % len(sizes)])
            i += 1
            if not chunk:
                break
            digest.update(chunk)
            total += len(chunk)
        assert reader.read(10) == b""
    assert total == len(data)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_reader_starts_at_an_offset(case: Case) -> None:
    """open_reader(key, start): from that byte to the end (the dumps' section of an
    archive); at the size, nothing; past it, a StorageError naming the object."""
    t = case.target
    data = payload(9 * MiB + 5, seed=4)
    t.put(case.key("ranged"), data)
    for start in (0, 1, 8 * MiB + 17, len(data)):
        with t.open_reader(case.key("ranged"), start) as reader:
            got = bytearray()
            while chunk := reader.read(3 * MiB + 1):
                got += chunk
        assert bytes(got) == data[start:]
    with pytest.raises(StorageError, match="ranged"):
        t.open_reader(case.key("ranged"), len(data) + 1)


def test_reader_of_small_and_empty_objects(case: Case) -> None:
    t = case.target
    t.put(case.key("tiny"), b"abc")
    t.put(case.key("zero"), b"")
    with t.open_reader(case.key("tiny")) as r:
        assert r.read() == b"abc"
    with t.open_reader(case.key("zero")) as r:
        assert r.read() == b""


# -- failures --------------------------------------------------------------------


def test_unreachable_s3_endpoint_is_a_storage_error_naming_it() -> None:
    port = free_port()  # nothing listens there
    endpoint = f"http://127.0.0.1:{port}"
    secret = "unreachable-secret-" + uuid.uuid4().hex
    target = S3Target(
        "some-bucket",
        endpoint=endpoint,
        access_key_id="AKIDUNREACHABLE",
        secret_access_key=secret,
    )
    with pytest.raises(StorageError) as err:
        target.stat("itsup/latest.tar.gz")
    assert not isinstance(err.value, NotFoundError)
    message = err.value.message
    assert f"127.0.0.1:{port}" in message
    assert secret not in message and secret not in str(err.value)
    assert "AKIDUNREACHABLE" not in message


def test_wrong_s3_credentials_are_a_storage_error_without_secrets(s3_server: S3Server) -> None:
    wrong_secret = "wrong-secret-" + uuid.uuid4().hex
    for key_id in (s3_server.access_key, "NOSUCHACCESSKEY"):
        target = S3Target(
            s3_server.bucket,
            endpoint=s3_server.endpoint,
            access_key_id=key_id,
            secret_access_key=wrong_secret,
        )
        for call in (
            lambda t=target: list(t.list("itsup/")),
            lambda t=target: t.put("itsup/x", b"x"),
            lambda t=target: t.get("itsup/x"),
            lambda t=target: t.stat("itsup/x"),
        ):
            with pytest.raises(StorageError) as err:
                call()
            assert not isinstance(err.value, NotFoundError), err.value.message
            text = f"{err.value.message} {err.value!r} {err.value.hint}"
            assert wrong_secret not in text
            assert s3_server.secret_key not in text
            assert key_id not in text
            assert s3_server.endpoint in text


def test_missing_bucket_is_a_storage_error(s3_server: S3Server) -> None:
    target = S3Target(
        "no-such-bucket-here",
        endpoint=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )
    with pytest.raises(StorageError) as err:
        list(target.list("itsup/"))
    assert "no-such-bucket-here" in err.value.message
    assert s3_server.secret_key not in err.value.message


def test_local_target_on_an_unusable_path_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a folder")
    target = LocalTarget(blocker)
    with pytest.raises(StorageError) as err:
        target.put("itsup/x", b"x")
    assert str(blocker) in err.value.message
    with pytest.raises(StorageError):
        target.open_writer("itsup/big")
    assert blocker.read_bytes() == b"not a folder"


def test_local_target_refuses_keys_that_escape_its_folder(tmp_path: Path) -> None:
    target = LocalTarget(tmp_path / "base")
    for key in ("../escape", "a/../../escape", "/etc/passwd", "", "a//b", "a/./b"):
        with pytest.raises(StorageError):
            target.put(key, b"x")
    assert sorted(os.listdir(tmp_path)) in ([], ["base"])
    assert not (tmp_path / "escape").exists()


def test_s3_cleanup_incomplete_follows_pages(s3_server: S3Server) -> None:
    """More uploads than fit in one listing page are all aborted (pages of 1 here)."""
    import functools

    prefix = f"conformance/{uuid.uuid4().hex[:12]}/"
    target = S3Target(
        s3_server.bucket,
        endpoint=s3_server.endpoint,
        access_key_id=s3_server.access_key,
        secret_access_key=s3_server.secret_key,
    )
    client = s3_server.client()
    for i in range(3):
        client.create_multipart_upload(Bucket=s3_server.bucket, Key=f"{prefix}stale-{i}")
    target.client.list_multipart_uploads = functools.partial(  # type: ignore[method-assign]
        target.client.list_multipart_uploads, MaxUploads=1
    )
    assert target.cleanup_incomplete(prefix) == 3
    left = client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=prefix)
    assert not left.get("Uploads")
