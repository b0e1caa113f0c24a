"""Retention at scale (itsup/actions/prune.py): thousands of generations on a real
target, the kept set equal to the policy function's answer, nothing else deleted.

The generations are written cheaply, as tiny objects straight into the target
(a real manifest each, the archive and index a few bytes): prune decides from
the listing alone, so their content never matters, and the test checks that
no manifest but the newest complete one is read. Timings are printed
(`pytest -s`), never asserted.
"""

from __future__ import annotations

import json
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from helpers import make_host, make_manifest, s3_config, s3_secrets, write_config
from s3server import S3Server

from itsup.actions.prune import run_prune
from itsup.generation import generation_name, scan
from itsup.host import load_host
from itsup.layout import Layout
from itsup.retention import Policy, apply_policy

POLICY = (
    "  orphan_grace: 1h\n"
    "  retention:\n"
    "    keep_last: 5\n"
    "    keep_hourly: 24\n"
    "    keep_daily: 14\n"
    "    keep_weekly: 8\n"
    "    keep_monthly: 12\n"
    "    keep_yearly: 3\n"
    "    keep_within: 2d\n"
    "    timezone: Europe/Amsterdam\n"
)
PLAN = Policy(
    keep_last=5,
    keep_hourly=24,
    keep_daily=14,
    keep_weekly=8,
    keep_monthly=12,
    keep_yearly=3,
    keep_within=2 * 86400,
)
AMS = ZoneInfo("Europe/Amsterdam")


def irregular_times(count: int, newest: datetime, seed: int) -> list[datetime]:
    """`count` distinct generation times going back from `newest`: mostly hours
    apart, sometimes several in one hour, sometimes days without one."""
    rng = random.Random(seed)
    times, when = [], newest
    while len(times) < count:
        times.append(when)
        gap = rng.choice([60, 600, 3600, 3 * 3600, 3 * 3600, 6 * 3600, 30 * 3600, 4 * 86400])
        when -= timedelta(seconds=gap + rng.randrange(1, 59))
    return times


def objects(name: str, prefix: str) -> dict[str, bytes]:
    manifest = make_manifest(generation=name)
    return {
        f"{prefix}{name}.tar.gz": b"a",
        f"{prefix}{name}.index.jsonl.gz": b"i",
        f"{prefix}{name}.manifest.json": manifest.to_bytes(),
    }


def pointer(name: str, prefix: str) -> bytes:
    return json.dumps({"generation": name, "archive": f"{prefix}{name}.tar.gz"}).encode()


class CountingGets:
    """Wraps a target's `get` to count the objects read."""

    def __init__(self, target: Any) -> None:
        self.keys: list[str] = []
        inner = target.get

        def get(key: str) -> bytes:
            self.keys.append(key)
            return bytes(inner(key))

        target.get = get


def expected_kept(names: list[str], times: list[datetime]) -> set[str]:
    decisions = apply_policy(zip(names, times, strict=True), PLAN, AMS)
    return {d.name for d in decisions if d.keep}


def test_three_thousand_generations_on_a_local_target(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, "backup:\n" + POLICY)
    folder = root / "backups" / "itsup"
    folder.mkdir(parents=True)
    newest = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    times = irregular_times(3000, newest, seed=12)
    names = [generation_name(t) for t in times]
    written = time.monotonic()
    for name in names:
        for key, data in objects(name, "").items():
            (folder / key).write_bytes(data)
    # `latest` names an old generation the policy drops: it stays.
    pinned = names[2500]
    (folder / "latest.json").write_bytes(pointer(pinned, "itsup/"))
    (folder / "latest.tar.gz").write_bytes(b"a")
    # What failed runs left: two old enough to go, one young (another host's run?)
    old = [
        generation_name(times[100] + timedelta(seconds=1)),
        generation_name(times[900] + timedelta(seconds=1)),
    ]
    for name in old:
        (folder / f"{name}.tar.gz").write_bytes(b"partial")
        os.utime(folder / f"{name}.tar.gz", (time.time() - 7200, time.time() - 7200))
    young = generation_name(newest + timedelta(minutes=30))
    (folder / f"{young}.tar.gz").write_bytes(b"being written")
    print(f"\nwrote {len(names)} generations in {time.monotonic() - written:.1f} s")

    want = expected_kept(names, times) | {pinned}
    assert names[0] in want and 30 < len(want) < 300

    host = load_host(Layout(root))
    target, _ = host.target()
    gets = CountingGets(target)
    started = time.monotonic()
    dry = run_prune(host, dry_run=True)
    print(f"dry run: {len(dry.rows)} generations planned in {time.monotonic() - started:.2f} s")
    assert len(dry.rows) == 3000 + 3
    assert {r.name for r in dry.kept if r.complete} == want
    assert {r.name for r in dry.removed if not r.complete} == set(old)
    by_name = {r.name: r for r in dry.rows}
    assert by_name[pinned].protected == ["latest"] and not by_name[pinned].rules
    assert by_name[names[0]].protected == ["newest complete"]
    assert "last" in by_name[names[0]].rules and "within" in by_name[names[0]].rules
    assert by_name[young].action == "keep" and "orphan_grace" in (by_name[young].note or "")
    assert len(list(folder.iterdir())) == 3 * 3000 + 2 + 3  # nothing touched
    # Decided from the listing: latest.json and the newest complete manifest only.
    assert sorted(gets.keys) == sorted(["itsup/latest.json", f"itsup/{names[0]}.manifest.json"])

    started = time.monotonic()
    result = run_prune(host)
    print(
        f"prune: removed {len(result.removed)} generations ({len(result.deleted)} objects), "
        f"kept {len(result.kept)}, in {time.monotonic() - started:.2f} s"
    )
    assert [(r.name, r.action, r.rules) for r in result.rows] == [
        (r.name, r.action, r.rules) for r in dry.rows
    ]
    left = scan(target, "itsup/", load_manifests=False)
    complete = {g.name for g in left if "manifest.json" in g.objects}
    assert complete == want
    assert all(len(g.objects) == 3 for g in left if g.name in want)
    assert {g.name for g in left if "manifest.json" not in g.objects} == {young}
    assert len(result.deleted) == 3 * (3000 - len(want)) + len(old)
    # A second prune finds nothing more to do.
    again = run_prune(host)
    assert not again.removed and {r.name for r in again.kept} == want | {young}


@pytest.mark.slow
def test_listing_pages_on_s3(tmp_path: Path, s3_server: S3Server, s3_prefix: str) -> None:
    """Over 1,000 objects: the listing's second page (the newest generations, as
    keys sort by time) counts as much as the first."""
    root = make_host(tmp_path / "host", volumes=False)
    s3_secrets(root, s3_server)
    write_config(
        root,
        s3_config(s3_server, s3_prefix, "  retention:\n    keep_hourly: 300\n    timezone: UTC\n"),
    )
    newest = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    times = [newest - timedelta(hours=n) for n in range(350)]
    names = [generation_name(t) for t in times]
    client = s3_server.client()

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=s3_server.bucket, Key=item[0], Body=item[1])

    batch = [kv for name in names for kv in objects(name, s3_prefix).items()]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, batch))
    put((f"{s3_prefix}latest.json", pointer(names[0], s3_prefix)))

    host = load_host(Layout(root))
    started = time.monotonic()
    result = run_prune(host)
    print(f"\nS3 prune of {len(names)} generations in {time.monotonic() - started:.2f} s")
    assert len(result.rows) == 350
    assert [r.name for r in result.kept] == names[:300]
    assert result.kept[0].protected == ["newest complete", "latest"]
    target, prefix = host.target()
    left = scan(target, prefix, load_manifests=False)
    assert [g.name for g in left] == names[:300]
