"""The command as cron and operators meet it: bin/backup.py, silence, excludes, logs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import REPO, archive_members, dead_pid, generations, itsup, setup_host

BIN_BACKUP = REPO / "bin" / "backup.py"


def _cron(args: list[str], root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ITSUP_ROOT": str(root)}
    return subprocess.run(
        [sys.executable, str(BIN_BACKUP), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_bin_backup_help_never_starts_a_backup(tmp_path: Path) -> None:
    setup_host(tmp_path / "host", "local", None, "")
    for args in (["--help"], ["-h"], ["now"]):
        proc = _cron(args, tmp_path / "host")
        assert "no arguments" in proc.stdout
        assert proc.returncode == (0 if args[0] in ("-h", "--help") else 2)
    assert not (tmp_path / "host" / "backups").exists()
    assert generations(tmp_path / "host") == []


def test_bin_backup_with_no_arguments_backs_up_silently(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    proc = _cron([], store.root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""  # cron mails any output
    [gen] = generations(store.root)
    assert gen["status"] == "complete"
    log = (store.root / "logs" / "backup.log").read_text()
    assert f"backup {gen['name']} finished" in log


def test_backup_failure_reaches_stderr_and_the_log(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    (store.root / "backups").write_text("not a folder")  # the local target cannot be created
    proc = _cron([], store.root)
    assert proc.returncode != 0
    assert "itsup: error:" in proc.stderr and "Traceback" not in proc.stderr
    assert "ERROR" in (store.root / "logs" / "backup.log").read_text()


def test_exclude_patterns_leave_paths_out(tmp_path: Path) -> None:
    store = setup_host(
        tmp_path / "host",
        "local",
        None,
        "",
        extra='  exclude: ["*.log", "upstream/*/volumes/cache"]\n',
    )
    root = store.root
    (root / "upstream/app/volumes/cache").mkdir(parents=True)
    (root / "upstream/app/volumes/cache/blob").write_bytes(b"x" * 1000)
    (root / "proxy/traefik/access.log").write_text("GET /\n")
    itsup(root, "backup")
    [gen] = generations(root)
    members = archive_members(store, f"{gen['name']}.tar.gz")
    assert "proxy/traefik/acme.json" in members
    assert not any(m.endswith(".log") for m in members)
    assert not any(m.startswith("upstream/app/volumes/cache") for m in members)
    assert "upstream/app/volumes/data/db.bin" in members


def test_verbose_prints_a_summary_off_a_terminal(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    res = itsup(store.root, "-v", "backup")
    assert "files" in res.out and "backup-" in res.out
    quiet = itsup(store.root, "backup")
    assert quiet.out == "" and quiet.err == ""


def test_restore_clears_staging_left_by_a_killed_restore(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    itsup(store.root, "backup")
    dest = tmp_path / "dest"
    dest.mkdir()
    dead = dead_pid()
    stale = dest / f".itsup-restore-{dead}-0badc0de"
    (stale / "proxy").mkdir(parents=True)
    running = dest / f".itsup-restore-{os.getpid()}-00c0ffee"  # its owner is alive: kept
    running.mkdir()
    itsup(store.root, "restore", "all", "--to", dest)
    assert not stale.exists()
    assert running.exists()
    assert (dest / "proxy/traefik/acme.json").exists()
