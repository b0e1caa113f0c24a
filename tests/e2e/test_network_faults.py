"""Network faults between itsup and a real S3 server, injected by a proxy.

Every test runs `itsup` as an operator would, against the real S3-compatible
server the suite starts, through `faultproxy.FaultProxy`, which resets
connections after a number of bytes, stalls them, trickles them or answers
500/503 instead of the server, for chosen requests. What must hold:

- a backup either completes with a generation that `backup verify` passes,
  or fails with exit 6 and one clear line, offers nothing that looks
  complete, and leaves no multipart upload behind;
- a restore either produces the exact tree, or fails and leaves the
  destination as it was, with no staging folder;
- verify never calls an intact generation damaged (exit 5) because the
  network failed: it retries and says ok, or fails with exit 6;
- every run ends in bounded time, whatever the server does.

Hosts hold about 11 MiB, stored in three parts of at most 5 MiB, and use
short network limits (2 s timeouts, 4 attempts). Each variant of a fault gets
a host (or a view of one generation) and a proxy of its own, so the variants
of a test run side by side: most of their time is spent waiting on timeouts
and backoff. Every fault injected is recorded in the fault ledger
(reliability.py) once its outcome was asserted.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from faultproxy import Fault, FaultProxy, Rule, http_error, reset_after, stall, trickle
from helpers import (
    ACME,
    MiB,
    Result,
    Store,
    generations,
    itsup,
    leftovers,
    make_host,
    run_itsup,
    s3_secrets,
    tree_state,
    write_config,
)
from reliability import record
from s3server import S3Server

from itsup.errors import ExitCode

pytestmark = pytest.mark.faults

STORAGE = int(ExitCode.STORAGE)
DAMAGED = int(ExitCode.DAMAGED)
BLOB = 11 * MiB  # with the rest of the host: three parts of at most 5 MiB
NET = {"part_size_mb": 5, "connect_timeout": 2, "read_timeout": 2, "max_attempts": 4}
WORKERS = 6  # variants run side by side: most of their time is spent waiting


# -- where faults go ----------------------------------------------------------------------


def part(number: int | None = None) -> dict[str, Any]:
    """UploadPart requests (of one part number)."""
    if number is None:
        return {"operation": "UploadPart"}
    return {"operation": "UploadPart", "query": rf"(^|&)partNumber={number}(&|$)"}


ARCHIVE_GET = {"operation": "GetObject", "path": r"/backup-[^/]*\.tar\.gz$"}
INDEX_GET = {"operation": "GetObject", "path": r"\.index\.jsonl\.gz$"}
MANIFEST_PUT = {"operation": "PutObject", "path": r"\.manifest\.json$"}
COMPLETE = {"operation": "CompleteMultipartUpload"}
CREATE = {"operation": "CreateMultipartUpload"}


# -- hosts behind a proxy -----------------------------------------------------------------


@pytest.fixture(scope="module")
def blob(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Incompressible data, made once and hard-linked into every host."""
    path = tmp_path_factory.mktemp("blob") / "blob.bin"
    path.write_bytes(os.urandom(BLOB))
    return path


@dataclass
class Host:
    """A host root whose itsup.yml reaches the S3 server through a proxy of its own."""

    root: Path
    store: Store
    proxy: FaultProxy

    def inject(self, fault: Fault, **where: Any) -> Rule:
        return self.proxy.inject(fault, **where)

    def run(self, *args: str | os.PathLike[str], timeout: float = 120) -> tuple[Result, float]:
        """`itsup ARGS`, any outcome; returns the result and its wall time."""
        started = time.monotonic()
        res = run_itsup(*args, root=self.root, timeout=timeout)
        return res, time.monotonic() - started

    def complete(self) -> list[str]:
        """Complete generations, newest first, as the storage holds them (manifest present)."""
        suffix = ".manifest.json"
        names = [n.removesuffix(suffix) for n in self.store.names() if n.endswith(suffix)]
        return sorted(names, reverse=True)

    def backup(self) -> str:
        """A backup that must complete; the faults end with it. Returns the generation."""
        before = self.complete()
        itsup(self.root, "backup")
        self.proxy.clear()
        after = self.complete()
        assert len(after) == len(before) + 1, (before, after)
        return after[0]

    def verify(self, name: str) -> None:
        """`backup verify` passes on the generation (with no fault in the way)."""
        self.proxy.clear()
        res = itsup(self.root, "backup", "verify", name, "--json")
        report = json.loads(res.out)
        assert report["ok"] and [g["result"] for g in report["generations"]] == ["ok"]

    def uploads(self) -> list[dict[str, Any]]:
        return self.store.multipart_uploads()


Hosts = Callable[..., Host]


@pytest.fixture
def hosts(tmp_path: Path, s3_server: S3Server, s3_prefix: str, blob: Path) -> Iterator[Hosts]:
    """Make hosts: new ones, or views of another's storage (a copy of its tree, or none)."""
    proxies: list[FaultProxy] = []

    numbers = itertools.count(1)

    def make(*, of: Host | None = None, copy: bool = False, **settings: Any) -> Host:
        proxy = FaultProxy(s3_server.endpoint)
        proxies.append(proxy)
        name = f"h{next(numbers)}"
        root = tmp_path / name
        prefix = of.store.prefix if of else f"{s3_prefix}{name}/"
        if of is None:
            make_host(root)
            os.link(blob, root / "upstream/app/volumes/data/blob.bin")
        elif copy:
            shutil.copytree(of.root, root, symlinks=True)
        s3_secrets(root, s3_server)
        network = "".join(f"    {k}: {v}\n" for k, v in {**NET, **settings}.items())
        write_config(
            root,
            "backup:\n"
            "  s3:\n"
            f"    bucket: {s3_server.bucket}\n"
            f"    prefix: {prefix}\n"
            f"    endpoint: {proxy.url}\n"
            "    access_key_id: ${S3_KEY_ID}\n"
            "    secret_access_key: ${S3_SECRET}\n"
            f"{network}"
            "  include_volumes: true\n",
        )
        return Host(root, Store("s3", root, s3_server, prefix), proxy)

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.close()


def side_by_side(jobs: list[Callable[[], None]]) -> None:
    """Run the jobs WORKERS at a time, in order; the first failure is raised."""
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(job) for job in jobs]
        for future in futures:
            future.result()


def failed_cleanly(res: Result, what: str) -> None:
    """Exit 6 (storage), one `itsup: error:` line, no traceback."""
    assert res.code != DAMAGED, f"{what}: a network fault was reported as damage\n{res.err}"
    assert res.code == STORAGE, f"{what}: exit {res.code}, expected {STORAGE}\n{res.err}"
    assert "Traceback" not in res.out + res.err, res.err
    errors = [line for line in res.err.splitlines() if line.startswith("itsup: error:")]
    assert len(errors) == 1, res.err
    assert "itsup: internal error" not in res.err


def disaster(root: Path) -> None:
    """Something for a restore to repair, so that a failed one has something to spoil."""
    (root / ACME).write_text('{"lost": true}\n')
    (root / "upstream/blog/docker-compose.yml").unlink()


# -- the proxy itself ----------------------------------------------------------------------


def test_fault_proxy_scopes_faults_and_keeps_connections_in_sync(s3_server: S3Server) -> None:
    """Faults hit exactly the requests they are scoped to; the rest pass through intact."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    with FaultProxy(s3_server.endpoint) as proxy:
        client = boto3.client(
            "s3",
            endpoint_url=proxy.url,
            aws_access_key_id=s3_server.access_key,
            aws_secret_access_key=s3_server.secret_key,
            region_name="us-east-1",
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=2),
        )
        key = "t/faultproxy/object"
        body = os.urandom(300_000)

        def put() -> str:
            try:
                client.put_object(Bucket=s3_server.bucket, Key=key, Body=body)
                return "ok"
            except ClientError as exc:
                return str(exc.response["Error"]["Code"])
            except BotoCoreError as exc:
                return type(exc).__name__

        # The 2nd and 3rd PutObject get a 503 on a connection kept alive (the request
        # bodies were read, so the next request is parsed where it starts).
        slow = proxy.inject(http_error(503), operation="PutObject", first=2, last=3)
        assert [put() for _ in range(4)] == ["ok", "SlowDown", "SlowDown", "ok"]
        assert slow.matched == 4 and slow.fired == 2
        assert proxy.connections == 1 and proxy.requests["PUT"] == 4
        # A reset scoped to one more matching request, then nothing.
        proxy.clear()
        reset = proxy.inject(reset_after(1000), method="PUT", path=r"/object$", times=1)
        results = [put() for _ in range(2)]
        assert results[0] != "ok" and results[1] == "ok" and reset.fired == 1
        # Downstream: the body of a GET broken off after 1000 bytes, once.
        proxy.inject(
            reset_after(1000, "downstream", from_body=True), operation="GetObject", times=1
        )
        with pytest.raises(BotoCoreError):
            client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
        got = client.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
        assert got == body
        assert proxy.faults_fired == 4
        assert [s.fault is not None for s in proxy.log()].count(True) == 4


# -- backup --------------------------------------------------------------------------------

# (part number, bytes of the UploadPart request passed before the reset). Its head
# is about 700 bytes; past 5 MiB the whole part reached the server and only the
# answer is lost.
RESET_POINTS = [(1, 0), (2, 300), (2, 64 * 1024), (3, 200_000), (1, 3 * MiB), (2, 6 * MiB)]

SERVER_ERRORS: list[tuple[str, Fault, dict[str, Any], int]] = [
    ("503 SlowDown on the first 3 requests", http_error(503, "SlowDown"), {}, 3),
    (
        "503 SlowDown (Retry-After: 1) on part uploads, 3 times",
        http_error(503, "SlowDown", retry_after=1),
        part(),
        3,
    ),
    ("503 SlowDown on CompleteMultipartUpload, 3 attempts", http_error(503), COMPLETE, 3),
    ("503 SlowDown on the manifest PUT, 3 attempts", http_error(503), MANIFEST_PUT, 3),
    (
        "500 InternalError on a part upload, 2 attempts",
        http_error(500, "InternalError"),
        part(2),
        2,
    ),
    (
        "500 InternalError (connection closed) on CreateMultipartUpload, first attempt",
        http_error(500, "InternalError", close=True),
        CREATE,
        1,
    ),
]

# The server did the work, the client never heard: the retry must not trip on it.
LOST_ANSWERS = [
    ("CompleteMultipartUpload: answer lost (reset), first attempt", COMPLETE, False),
    ("CreateMultipartUpload: answer lost (reset), first attempt", CREATE, True),
    ("manifest PUT: answer lost (reset), first attempt", MANIFEST_PUT, False),
]

STALLS: list[tuple[str, Fault, dict[str, Any]]] = [
    ("stall 5 s mid part upload, first attempt", stall(5, "upstream", MiB), part(2)),
    ("stall 5 s before a part upload's answer, first attempt", stall(5, "downstream"), part(1)),
    ("stall 5 s on CompleteMultipartUpload, first attempt", stall(5), COMPLETE),
    (
        "stall 5 s before CompleteMultipartUpload's answer, first attempt",
        stall(5, "downstream"),
        COMPLETE,
    ),
    ("stall 5 s on the manifest PUT, first attempt", stall(5), MANIFEST_PUT),
]

# Faults no retry gets through; the slowest to fail first.
LASTING_UPLOAD_FAULTS: list[tuple[str, Fault, dict[str, Any]]] = [
    ("stall 20 s mid part upload, every attempt", stall(20, "upstream", MiB), part(2)),
    ("connection reset mid part upload, every attempt", reset_after(MiB), part(2)),
    ("connection reset at connect, every part upload", reset_after(0), part()),
    ("500 InternalError on every part upload", http_error(500, "InternalError"), part()),
    ("connection reset on every CompleteMultipartUpload", reset_after(0), COMPLETE),
    ("503 SlowDown on every CreateMultipartUpload", http_error(503), CREATE),
    ("500 InternalError on every manifest PUT", http_error(500, "InternalError"), MANIFEST_PUT),
]


def completes(host: Host, label: str, outcome: str = "completed, verified") -> str:
    """The backup completes, verifies, leaves no upload; recorded. Returns the generation."""
    started = time.monotonic()
    name = host.backup()
    seconds = time.monotonic() - started
    assert seconds < 30, f"{label}: took {seconds:.1f} s"
    host.verify(name)
    assert host.uploads() == []
    record("network", label, outcome)
    return name


def reset_first_attempt(hosts: Hosts, number: int, offset: int, out: Path) -> None:
    host = hosts()
    rule = host.inject(reset_after(offset), **part(number), last=1)
    name = host.backup()
    assert rule.fired == 1 and rule.matched >= 2, "one reset, then a good attempt"
    host.verify(name)
    assert host.uploads() == []
    itsup(host.root, "restore", "all", "--from", name, "--to", out)
    assert tree_state(out) == tree_state(host.root)
    if offset > 5 * MiB:
        label = "upload part: answer lost (reset after the whole part), first attempt"
    else:
        label = "connection reset mid part upload, first attempt"
    record("network", label, "completed, verified, restored exactly")


def first_attempts_fail(
    hosts: Hosts, label: str, fault: Fault, where: dict[str, Any], count: int
) -> None:
    host = hosts()
    rule = host.inject(fault, **where, last=count)
    completes(host, label)
    assert rule.fired == count, f"{label}: every planned fault happened"


def answer_lost(hosts: Hosts, label: str, where: dict[str, Any], leaves_upload: bool) -> None:
    host = hosts()
    rule = host.inject(reset_after(0, "downstream"), **where, last=1)
    name = host.backup()
    assert rule.fired == 1
    host.verify(name)
    outcome = "completed, verified"
    if leaves_upload:
        # An upload whose creation was never answered is unknown to the run that
        # made it; the next run (holding the lock) aborts it before anything else.
        assert len(host.uploads()) == 1
        host.backup()
        outcome += "; the orphan upload aborted by the next run"
    assert host.uploads() == []
    record("network", label, outcome)


def trickled(hosts: Hosts, out: Path) -> None:
    # On a slow link the client hands a whole send buffer (megabytes, on loopback)
    # to the kernel, then waits for the answer: read_timeout must cover draining
    # it. That is what an operator on a slow uplink raises it for.
    host = hosts(read_timeout=10)
    slow_part = host.inject(trickle(500_000), **part(3))
    small = host.inject(trickle(200_000), operation="PutObject")
    parts = host.inject(trickle(2_000_000, "upstream"), **part())
    started = time.monotonic()
    name = host.backup()
    assert time.monotonic() - started > 2.5, "the trickle did slow the backup down"
    assert slow_part.fired >= 1 and parts.fired >= 2 and small.fired >= 2
    host.verify(name)
    record(
        "network",
        "trickle: parts at 2 MB/s (the last at 500 KB/s), small objects at 200 KB/s",
        "completed, verified",
    )
    archive = host.inject(trickle(2_000_000, "downstream"), **ARCHIVE_GET)
    index = host.inject(trickle(200_000, "downstream"), **INDEX_GET)
    itsup(host.root, "restore", "all", "--from", name, "--to", out)
    assert archive.fired >= 2 and index.fired == 1
    assert tree_state(out) == tree_state(host.root)
    record("network", "trickle: archive reads at 2 MB/s, the index at 200 KB/s", "restored exactly")


def lasting_upload_fault(hosts: Hosts, label: str, fault: Fault, where: dict[str, Any]) -> None:
    host = hosts()
    rule = host.inject(fault, **where)
    res, seconds = host.run("backup")
    failed_cleanly(res, label)
    assert seconds < 45, f"{label}: the failing run took {seconds:.1f} s"
    assert rule.fired >= NET["max_attempts"], "every attempt met the fault"
    host.proxy.clear()
    rows = generations(host.root)
    assert [g for g in rows if g["status"] != "incomplete"] == [], rows
    assert host.complete() == []
    assert host.uploads() == [], "the failed run left its multipart upload"
    host.backup()  # nothing blocks the next run
    assert host.uploads() == []
    record("network", label, "failed cleanly (exit 6), nothing offered, no upload left")


def test_backup_under_network_faults(hosts: Hosts, tmp_path: Path) -> None:
    """Each fault, on a host of its own: the backup completes and verifies, or fails cleanly."""
    jobs = [partial(lasting_upload_fault, hosts, *case) for case in LASTING_UPLOAD_FAULTS]
    jobs.append(partial(trickled, hosts, tmp_path / "trickled"))
    jobs += [partial(first_attempts_fail, hosts, label, f, w, 1) for label, f, w in STALLS]
    jobs += [partial(first_attempts_fail, hosts, *case) for case in SERVER_ERRORS]
    jobs += [partial(answer_lost, hosts, *case) for case in LOST_ANSWERS]
    jobs += [
        partial(reset_first_attempt, hosts, number, offset, tmp_path / f"out{i}")
        for i, (number, offset) in enumerate(RESET_POINTS)
    ]
    side_by_side(jobs)


# -- restore -------------------------------------------------------------------------------

# Faults on the archive's ranged GETs: (label, fault, on how many matching requests;
# None: every one). A reset that lets some bytes through each time is slow
# progress, not a dead server: the range goes on from where it broke.
READ_FAULTS: list[tuple[str, Fault, int | None]] = [
    (
        "connection reset after every 1 MiB of an archive read",
        reset_after(MiB, "downstream", from_body=True),
        None,
    ),
    ("stall 5 s mid archive read, first attempt", stall(5, "downstream", MiB), 1),
    ("connection reset mid archive read, first attempt", reset_after(0, "downstream"), 1),
    ("connection reset mid archive read, first attempt", reset_after(300, "downstream"), 1),
    ("connection reset mid archive read, first attempt", reset_after(64 * 1024, "downstream"), 1),
    ("connection reset mid archive read, first attempt", reset_after(MiB, "downstream"), 2),
    ("connection reset mid archive read, first attempt", reset_after(5 * MiB, "downstream"), 1),
    ("connection reset before an archive read arrives, first attempt", reset_after(0), 2),
    ("500 InternalError on archive reads, first 2", http_error(500, "InternalError"), 2),
    ("503 SlowDown on archive reads, first 3", http_error(503, "SlowDown"), 3),
]

# Faults no retry gets through: nothing (or not one byte of a body) ever arrives.
# The slowest to fail come first.
LASTING_READ_FAULTS: list[tuple[str, Fault, dict[str, Any]]] = [
    ("stall 60 s before every archive read's answer", stall(60, "downstream"), ARCHIVE_GET),
    (
        "connection reset as every archive read's body starts",
        reset_after(0, "downstream", from_body=True),
        ARCHIVE_GET,
    ),
    (
        "connection reset as every index read's body starts",
        reset_after(0, "downstream", from_body=True),
        INDEX_GET,
    ),
    ("500 InternalError on every archive read", http_error(500, "InternalError"), ARCHIVE_GET),
    ("connection reset at connect, every archive read", reset_after(0), ARCHIVE_GET),
]


@pytest.fixture
def generation(hosts: Hosts) -> tuple[Host, str]:
    """A host with one complete generation, made with no fault."""
    host = hosts()
    return host, host.backup()


def restore_through(
    hosts: Hosts, source: Host, name: str, out: Path, label: str, fault: Fault, count: int | None
) -> None:
    view = hosts(of=source)
    rule = view.inject(fault, **ARCHIVE_GET, last=count)
    res, seconds = view.run("restore", "all", "--from", name, "--to", out)
    assert res.code == 0, f"{label}: {res.err}"
    assert rule.fired == (count or rule.matched) and rule.fired >= 1
    assert tree_state(out) == tree_state(source.root), label
    assert leftovers(out) == []
    assert seconds < 40, f"{label}: took {seconds:.1f} s"
    record("network", label, "restored exactly")


def restore_in_place(hosts: Hosts, source: Host) -> None:
    host = hosts(of=source, copy=True)
    expected = tree_state(host.root)
    disaster(host.root)
    index = host.inject(reset_after(50, "downstream", from_body=True), **INDEX_GET, last=1)
    archive = host.inject(reset_after(2 * MiB, "downstream"), **ARCHIVE_GET, last=1)
    itsup(host.root, "restore", "all", "--yes")
    assert index.fired == archive.fired == 1
    assert tree_state(host.root) == expected
    assert leftovers(host.root) == []
    record("network", "connection reset mid index and archive reads, in place", "restored exactly")


def restore_fails_cleanly(
    hosts: Hosts, source: Host, out: Path | None, label: str, fault: Fault, where: dict[str, Any]
) -> None:
    host = hosts(of=source, copy=True)
    disaster(host.root)
    before = tree_state(host.root)
    rule = host.inject(fault, **where)
    res, seconds = host.run("restore", "all", "--yes")
    failed_cleanly(res, label)
    assert seconds < 60, f"{label}: the failing restore took {seconds:.1f} s"
    assert rule.fired >= NET["max_attempts"], "every attempt met the fault"
    assert tree_state(host.root) == before, "a failed restore changed the destination"
    assert leftovers(host.root) == []
    if out is not None:  # into a new folder: nothing is left there either
        res, _ = host.run("restore", "all", "--to", out)
        failed_cleanly(res, label)
        assert not out.exists() or [p.name for p in out.iterdir()] == []
    record("network", label, "restore failed cleanly (exit 6), destination unchanged")


def test_restore_under_network_faults(
    hosts: Hosts, generation: tuple[Host, str], tmp_path: Path
) -> None:
    """Each fault, through a proxy of its own: the exact tree, or the destination untouched."""
    source, name = generation
    jobs = [
        partial(restore_fails_cleanly, hosts, source, tmp_path / f"new{i}" if i == 3 else None, *c)
        for i, c in enumerate(LASTING_READ_FAULTS)
    ]
    jobs += [
        partial(restore_through, hosts, source, name, tmp_path / f"out{i}", *case)
        for i, case in enumerate(READ_FAULTS)
    ]
    jobs.append(partial(restore_in_place, hosts, source))
    side_by_side(jobs)


# -- verify --------------------------------------------------------------------------------


def verify_through(
    hosts: Hosts,
    source: Host,
    name: str,
    label: str,
    fault: Fault,
    where: dict[str, Any],
    count: int | None,
) -> None:
    view = hosts(of=source)
    rule = view.inject(fault, **where, last=count)
    res, seconds = view.run("backup", "verify", name)
    assert res.code != DAMAGED, f"{label}: an intact generation was called damaged\n{res.out}"
    assert seconds < 60, f"{label}: took {seconds:.1f} s"
    if count is not None:
        assert res.code == 0, f"{label}: {res.err}"
        assert rule.fired == count
        record("network", label, "ok (retried)")
    else:
        failed_cleanly(res, label)
        assert rule.fired >= NET["max_attempts"]
        record("network", label, "failed with exit 6, never 'damaged'")


def test_verify_never_calls_a_network_fault_damage(
    hosts: Hosts, generation: tuple[Host, str]
) -> None:
    source, name = generation
    cases: list[tuple[str, Fault, dict[str, Any], int | None]] = [
        (f"verify: {label}", fault, where, None) for label, fault, where in LASTING_READ_FAULTS
    ]
    cases += [
        (
            "verify: connection reset mid archive read, first attempt",
            reset_after(n, "downstream"),
            ARCHIVE_GET,
            1,
        )
        for n in (0, 4096, 512 * 1024, 3 * MiB, 7 * MiB)
    ]
    cases += [
        (
            "verify: connection reset mid index read, first attempt",
            reset_after(50, "downstream", from_body=True),
            INDEX_GET,
            1,
        ),
        (
            "verify: stall 5 s mid archive read, first attempt",
            stall(5, "downstream", 2 * MiB),
            ARCHIVE_GET,
            1,
        ),
    ]
    side_by_side([partial(verify_through, hosts, source, name, *case) for case in cases])
    source.verify(name)
