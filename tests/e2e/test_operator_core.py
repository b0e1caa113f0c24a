"""What a new operator hit, backup side (issue 9): an empty or shrunken source
replaced `latest`, "no backup at all" had four different exit codes, and a
backup refused by the lock alerted like a failure.

Each test does what the operator did, with the real `itsup` command, on the
local target and the real S3-compatible server.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from helpers import (
    lock_held,
    make_host,
    make_manifest,
    run_itsup,
    s3_config,
    s3_secrets,
    write_config,
)
from s3server import S3Server
from test_notify_metrics import Hook, hook  # noqa: F401  (the loopback webhook fixture)

from itsup.actions.backup import ShrinkRefused, check_shrink
from itsup.errors import ExitCode
from itsup.pipeline.archive import Stats

LOCAL = "backup:\n  include_volumes: true\n"


def local_host(root: Path, extra: str = "") -> Path:
    make_host(root)
    write_config(root, LOCAL + extra)
    return root


def store(root: Path) -> Path:
    return root / "backups" / "itsup"


def objects(root: Path) -> list[str]:
    folder = store(root)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def complete(root: Path) -> list[dict[str, object]]:
    res = run_itsup("backup", "list", "--json", root=root)
    assert res.code == 0, res.err
    return [g for g in json.loads(res.out) if g["status"] == "complete"]


def log_lines(root: Path) -> list[str]:
    path = root / "logs" / "backup.log"
    return path.read_text().splitlines() if path.exists() else []


# -- 1. an empty or shrunken source is not a backup ------------------------------------


def test_new_host_with_nothing_to_back_up_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    """A DR host after `itsup init`, before `restore`: no upstream/, no proxy/."""
    root = tmp_path / "host"
    (root / "logs").mkdir(parents=True)
    write_config(root, LOCAL)
    res = run_itsup("backup", root=root)
    assert res.code == ExitCode.FAILURE, res.err
    assert "backup refused" in res.err and "hold no files" in res.err
    assert "--allow-shrink" in res.err and "Traceback" not in res.err
    assert [n for n in objects(root) if not n.startswith(".")] == []
    assert not (store(root) / "latest.tar.gz").exists()
    end = [line for line in log_lines(root) if "event=end" in line]
    assert len(end) == 1 and " ERROR " in end[0] and "result=failure" in end[0]
    # `check` now says there is no backup, rather than staying green on an empty one
    assert run_itsup("backup", "check", root=root).code == ExitCode.NO_BACKUP


def test_unmounted_volumes_do_not_replace_latest(tmp_path: Path) -> None:
    root = local_host(tmp_path / "host")
    assert run_itsup("backup", root=root).code == 0
    latest = (store(root) / "latest.tar.gz").read_bytes()
    before = objects(root)
    (first,) = complete(root)

    # The volume disk is not mounted: upstream/ is suddenly almost empty.
    shutil.rmtree(root / "upstream")
    (root / "upstream" / "app").mkdir(parents=True)
    (root / "upstream" / "app" / "docker-compose.yml").write_text("services: {}\n")
    res = run_itsup("backup", root=root)
    assert res.code == ExitCode.FAILURE, res.err
    # one line naming both figures and the way out
    assert f"{first['files']:,} files" in res.err and str(first["name"]) in res.err
    assert "under 50%" in res.err and "--allow-shrink" in res.err
    assert objects(root) == before, "a refused run must not store or delete anything"
    assert (store(root) / "latest.tar.gz").read_bytes() == latest
    assert [g["name"] for g in complete(root)] == [first["name"]]

    # The operator knows the data shrank on purpose.
    res = run_itsup("backup", "--allow-shrink", root=root)
    assert res.code == 0, res.err
    assert len(complete(root)) == 2
    assert (store(root) / "latest.tar.gz").read_bytes() != latest


def test_shrink_ratio_is_configurable(tmp_path: Path) -> None:
    root = local_host(tmp_path / "host", "  guard:\n    min_ratio: 0.9\n")
    assert run_itsup("backup", root=root).code == 0
    # a fifth of the bytes (the db.bin volume files) go away: fine at 50%, not at 90%
    for db in root.glob("upstream/*/volumes/data/db.bin"):
        db.unlink()
    res = run_itsup("backup", root=root)
    assert res.code == ExitCode.FAILURE and "under 90%" in res.err, res.err
    write_config(root, LOCAL + "  guard:\n    min_ratio: 0\n")
    assert run_itsup("backup", root=root).code == 0
    # 0 turns the comparison off, never the empty-source refusal
    shutil.rmtree(root / "upstream")
    shutil.rmtree(root / "proxy")
    assert run_itsup("backup", root=root).code == ExitCode.FAILURE


def test_a_bad_ratio_is_a_config_error(tmp_path: Path) -> None:
    root = local_host(tmp_path / "host", "  guard:\n    min_ratio: 5\n")
    res = run_itsup("backup", root=root)
    assert res.code == ExitCode.CONFIG
    assert "backup.guard.min_ratio" in res.err


def test_second_host_sharing_the_bucket_is_refused(
    tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    """The guard compares with the target's newest generation, whoever wrote it."""
    big = make_host(tmp_path / "big")
    s3_secrets(big, s3_server)
    write_config(big, s3_config(s3_server, s3_prefix, "  include_volumes: true\n"))
    assert run_itsup("backup", root=big).code == 0

    small = tmp_path / "small"
    (small / "proxy").mkdir(parents=True)
    (small / "proxy" / "docker-compose.yml").write_text("services: {}\n")
    s3_secrets(small, s3_server)
    write_config(small, s3_config(s3_server, s3_prefix))
    client = s3_server.client()

    def keys() -> list[str]:
        resp = client.list_objects_v2(Bucket=s3_server.bucket, Prefix=s3_prefix)
        return sorted(o["Key"] for o in resp.get("Contents", []))

    before = keys()
    latest = client.get_object(Bucket=s3_server.bucket, Key=f"{s3_prefix}latest.tar.gz")
    etag = latest["Body"].read()
    res = run_itsup("backup", root=small)
    assert res.code == ExitCode.FAILURE, res.err
    assert "backup refused" in res.err and s3_prefix in res.err
    assert keys() == before
    uploads = client.list_multipart_uploads(Bucket=s3_server.bucket, Prefix=s3_prefix)
    assert not uploads.get("Uploads"), "the refused upload must be aborted"
    after = client.get_object(Bucket=s3_server.bucket, Key=f"{s3_prefix}latest.tar.gz")
    assert after["Body"].read() == etag


def test_refused_backup_sends_a_failure_alert(tmp_path: Path, hook: Hook) -> None:  # noqa: F811
    root = tmp_path / "host"
    (root / "logs").mkdir(parents=True)
    write_config(
        root,
        LOCAL
        + f"  monitoring:\n    healthchecks: {hook.url('/ping/abc')}\n"
        + f"notify:\n  - {hook.url('/alert', 'json')}\n",
    )
    assert run_itsup("backup", root=root).code == ExitCode.FAILURE
    (alert,) = hook.seen("/alert")
    assert "FAILED" in alert.json()["title"] and "backup refused" in alert.json()["message"]
    assert [r.path for r in hook.seen("/ping/abc")] == ["/ping/abc/start", "/ping/abc/fail"]


@pytest.mark.parametrize(
    ("files", "size", "ref", "ratio", "refused"),
    [
        (0, 0, None, 0.5, True),  # empty, nothing to compare with: still refused
        (0, 0, (10, 10), 0.0, True),  # empty, comparison off: still refused
        (5, 5, None, 0.5, False),  # first backup of a small host
        (5, 5, (10, 10), 0.5, False),  # exactly half: kept
        (4, 10, (10, 10), 0.5, True),  # fewer files
        (10, 4, (10, 10), 0.5, True),  # fewer bytes
        (4, 4, (10, 10), 0.0, False),  # comparison off
        (1000, 10**9, (10, 10), 0.5, False),  # growth is always fine
        (1, 1, (0, 0), 0.5, False),  # the reference itself was empty
    ],
)
def test_shrink_rule(
    files: int, size: int, ref: tuple[int, int] | None, ratio: float, refused: bool
) -> None:
    stats = Stats()
    stats.files, stats.bytes = files, size
    reference = make_manifest(files=ref[0], source_bytes=ref[1]) if ref else None
    if refused:
        with pytest.raises(ShrinkRefused):
            check_shrink(stats, reference, ratio, "there", "upstream/ and proxy/")
    else:
        check_shrink(stats, reference, ratio, "there", "upstream/ and proxy/")


# -- 4. exit codes mean one thing -------------------------------------------------------


def test_no_backup_at_all_is_exit_10_everywhere_local(tmp_path: Path) -> None:
    root = local_host(tmp_path / "host")
    where = str(store(root))
    for args in (
        ("restore", "all", "--to", str(tmp_path / "out")),
        ("backup", "verify"),
        ("backup", "drill", "--no-git"),
        ("backup", "check"),
    ):
        res = run_itsup(*args, root=root)
        assert res.code == ExitCode.NO_BACKUP, (args, res.code, res.err)
        assert "no complete backup generation in" in res.err and where in res.err, res.err
        assert "Traceback" not in res.err


def test_wrong_prefix_is_exit_10_naming_bucket_and_prefix(
    tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    root = make_host(tmp_path / "host")
    s3_secrets(root, s3_server)
    write_config(root, s3_config(s3_server, s3_prefix))
    assert run_itsup("backup", root=root).code == 0
    write_config(root, s3_config(s3_server, "wrong-prefix/"))
    for args in (
        ("restore", "all", "--to", str(tmp_path / "out")),
        ("backup", "verify"),
        ("backup", "drill", "--no-git"),
        ("backup", "check"),
    ):
        res = run_itsup(*args, root=root)
        assert res.code == ExitCode.NO_BACKUP, (args, res.code, res.err)
        assert f"s3://{s3_server.bucket}/wrong-prefix/" in res.err, res.err


def test_check_with_no_backup_alerts_as_stale(tmp_path: Path, hook: Hook) -> None:  # noqa: F811
    root = local_host(tmp_path / "host", f"notify:\n  - {hook.url('/alert', 'json')}\n")
    assert run_itsup("backup", "check", root=root).code == ExitCode.NO_BACKUP
    (alert,) = hook.seen("/alert")
    assert "STALE" in alert.json()["title"]


def test_a_key_that_does_not_match_is_exit_4_everywhere(tmp_path: Path) -> None:
    import pyrage

    root = make_host(tmp_path / "host")
    right, wrong = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "right.txt").write_text(str(right) + "\n")
    (keys / "wrong.txt").write_text(str(wrong) + "\n")
    write_config(
        root,
        f"backup:\n  encryption:\n    recipients: [{right.to_public()}]\n"
        f"    identity_file: {keys / 'wrong.txt'}\n",
    )
    assert run_itsup("backup", root=root).code == 0
    for args in (
        ("restore", "all", "--to", str(tmp_path / "out")),
        ("backup", "verify"),
        ("backup", "drill", "--no-git"),
    ):
        res = run_itsup(*args, root=root)
        assert res.code == ExitCode.CONFIG, (args, res.code, res.err)
        assert "Traceback" not in res.err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -- 5. lock contention is not a failure -----------------------------------------------


def test_locked_out_backup_sends_no_alert_and_no_ping(tmp_path: Path, hook: Hook) -> None:  # noqa: F811
    root = local_host(
        tmp_path / "host",
        f"  monitoring:\n    healthchecks: {hook.url('/ping/abc')}\n"
        f"notify:\n  - {hook.url('/alert', 'json')}\n"
        f"  - url: {hook.url('/locked', 'json')}\n    events: [locked]\n",
    )
    with lock_held(root):
        res = run_itsup("backup", root=root)
    assert res.code == ExitCode.LOCKED, res.err
    assert hook.seen("/alert") == [], "a locked-out run is not a failure"
    assert hook.seen("/ping") == [], "no start ping: the running backup owns the check"
    (locked,) = hook.seen("/locked")
    assert "another run holds the lock" in locked.json()["title"]
    lines = log_lines(root)
    assert not [line for line in lines if " ERROR " in line], lines
    assert [line for line in lines if " WARNING " in line and "result=locked" in line]
    state = root / ".itsup" / "state.json"
    assert not state.exists() or "locked" not in state.read_text()

    # the next run, with the lock free, pings start and success
    assert run_itsup("backup", root=root).code == 0
    assert [r.path for r in hook.seen("/ping")] == ["/ping/abc/start", "/ping/abc"]


def test_an_empty_generation_is_skipped_by_fallback(tmp_path: Path) -> None:
    """An empty generation (stored with --allow-shrink, or by an itsup without the
    guard) restores nothing: restore says so, and --fallback passes over it."""
    root = local_host(tmp_path / "host")
    assert run_itsup("backup", root=root).code == 0
    (good,) = complete(root)
    shutil.rmtree(root / "upstream")
    shutil.rmtree(root / "proxy")
    time.sleep(1.1)
    assert run_itsup("backup", "--allow-shrink", root=root).code == 0
    res = run_itsup("restore", "all", "--to", tmp_path / "out", root=root)
    assert res.code == ExitCode.DAMAGED and "holds no files" in res.err, res.err
    res = run_itsup("restore", "all", "--fallback", "--to", tmp_path / "out", root=root)
    assert res.code == 0, res.err
    assert f"restored {good['name']}" in res.err
    assert (tmp_path / "out" / "proxy" / "traefik" / "acme.json").is_file()
