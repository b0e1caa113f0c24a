"""Named targets (`backup.targets:`) through the real command, against the real S3 server.

A host with two targets, one `s3://` on the S3 server the suite starts and
one `file://` folder, backs up to each by name (`--target`) and restores from
each (a backup to both at once: tests/e2e/test_targets_multi.py); a
typo in `--target` is one line and exit 2 on every command that takes it;
`backup status` shows every target; and generations written through the old
`local:` section read back through the equivalent `file://` URL.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from conftest import make_host, s3_secrets, write_config
from helpers import generations, itsup, tree_state
from s3server import S3Server

from itsup.errors import ExitCode


def two_targets(root: Path, server: S3Server, usb: Path, default: str | None = None) -> str:
    """itsup.yml with an `offsite` S3 target and a `usb` folder target; returns the S3 prefix."""
    prefix = f"t/targets-{uuid.uuid4().hex[:8]}"
    write_config(
        root,
        "backup:\n"
        "  targets:\n"
        "    offsite:\n"
        f"      url: s3://{server.bucket}/{prefix}\n"
        f"      endpoint: {server.endpoint}\n"
        "      access_key_id: ${S3_KEY_ID}\n"
        "      secret_access_key: ${S3_SECRET}\n"
        "      part_size_mb: 5\n"
        f"    usb: file://{usb}/itsup\n" + (f"  target: {default}\n" if default else ""),
    )
    s3_secrets(root, server)
    return prefix + "/"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    return make_host(tmp_path / "host", volumes=False)


def test_backup_to_each_named_target_and_restore_from_it(
    host: Path, tmp_path: Path, s3_server: S3Server
) -> None:
    usb = tmp_path / "usb"
    prefix = two_targets(host, s3_server, usb)
    before = tree_state(host)

    itsup(host, "backup", "--target", "offsite")  # each by name: only it is written
    itsup(host, "backup", "--target", "usb")
    offsite = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix)
    assert sum(o["Key"].endswith(".manifest.json") for o in offsite["Contents"]) == 1
    assert len(list((usb / "itsup").glob("backup-*.manifest.json"))) == 1
    assert [g["status"] for g in generations(host)] == ["complete"]

    for name in ("offsite", "usb"):
        dest = tmp_path / f"from-{name}"
        itsup(host, "restore", "all", "--to", dest, "--target", name)
        assert tree_state(dest) == before, name
        verified = json.loads(itsup(host, "backup", "verify", "--target", name, "--json").out)
        assert verified["ok"] is True, verified

    listing = itsup(host, "backup", "list", "--target", "usb").out
    assert f"Backups on {usb}/itsup/" in listing


def test_the_default_target_and_every_target_in_status(
    host: Path, tmp_path: Path, s3_server: S3Server
) -> None:
    usb = tmp_path / "usb"
    two_targets(host, s3_server, usb, default="usb")
    itsup(host, "backup")
    assert len(list((usb / "itsup").glob("backup-*.manifest.json"))) == 1
    status = json.loads(itsup(host, "backup", "status", "--json").out)
    rows = {t["name"]: t for t in status["targets"]}
    assert list(rows) == ["offsite", "usb"]
    assert rows["usb"]["kind"] == "local" and rows["usb"]["newest"].startswith("backup-")
    assert rows["usb"]["where"] == f"{usb}/itsup/"
    assert rows["offsite"]["kind"] == "s3" and rows["offsite"]["newest"] is None
    assert rows["offsite"]["where"].startswith(f"s3://{s3_server.bucket}/t/targets-")
    assert s3_server.endpoint in rows["offsite"]["where"]
    human = itsup(host, "backup", "status").out
    assert "offsite" in human and "usb" in human
    itsup(host, "backup", "check", "--max-age", "1h")  # the default target: usb
    itsup(host, "backup", "check", "--target", "offsite", expect=ExitCode.NO_BACKUP)
    # The run's log line names where it wrote, as the opened target says (no credentials).
    log = (host / "logs" / "backup.log").read_text()
    assert f'target="{usb}/itsup/"' in log or f"target={usb}/itsup/" in log
    assert s3_server.secret_key not in log


TYPO_COMMANDS = [
    ("backup",),
    ("backup", "list"),
    ("backup", "status"),
    ("backup", "check"),
    ("backup", "verify"),
    ("backup", "drill", "--no-git"),
    ("restore", "all", "--to", "restored"),
]


@pytest.mark.parametrize("args", TYPO_COMMANDS, ids=" ".join)
def test_a_typo_in_target_is_one_line_and_exit_2(host: Path, args: tuple[str, ...]) -> None:
    write_config(
        host,
        "backup:\n  targets:\n    offsite: s3://b/itsup\n    usb: file:///mnt/usb/itsup\n",
    )
    res = itsup(host, *args, "--target", "offiste", expect=ExitCode.USAGE)
    assert res.err == (
        "itsup: error: --target offiste: no target is named 'offiste' "
        "(known: offsite, usb, local; did you mean 'offsite'?)\n"
    )
    assert not (host / "restored").exists() and not (host / "backups").exists()
    assert not (host / ".itsup" / "state.json").exists()  # no run was recorded, no alert


def test_old_sections_still_work_and_the_embedded_local_is_reachable(
    host: Path, tmp_path: Path
) -> None:
    write_config(host, f"backup:\n  local:\n    path: {tmp_path / 'old'}\n    prefix: itsup/\n")
    itsup(host, "backup")
    itsup(host, "backup", "--target", "local")
    assert len(generations(host)) == 2
    res = itsup(host, "backup", "--target", "s3", expect=ExitCode.USAGE)
    assert "no target is named 's3' (known: local)" in res.err


def test_generations_of_a_local_section_read_back_through_its_url(
    host: Path, tmp_path: Path
) -> None:
    """`local: {path: P, prefix: itsup/}` and `file://P/itsup` are one place, keys and all."""
    old = tmp_path / "old"
    write_config(host, f"backup:\n  local:\n    path: {old}\n")
    itsup(host, "backup")
    before = tree_state(host)
    write_config(host, f"backup:\n  targets:\n    usb: file://{old}/itsup\n")
    assert [g["status"] for g in generations(host)] == ["complete"]
    itsup(host, "restore", "all", "--to", tmp_path / "back")
    assert tree_state(tmp_path / "back") == before
