"""`backup status`, `backup check`, the run state and the structured log lines."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from helpers import make_host, run_itsup, s3_config, s3_secrets, write_config


def local_host(tmp_path: Path, extra: str = "") -> Path:
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, f"backup:\n  local:\n    path: {tmp_path / 'store'}\n{extra}")
    return root


def run_lines(root: Path, action: str) -> list[dict[str, str]]:
    """The structured `itsup.run` lines of logs/backup.log for one action, parsed."""
    found = []
    for line in (root / "logs" / "backup.log").read_text().splitlines():
        if " itsup.run: " not in line or f"action={action}" not in line:
            continue
        fields = dict(
            re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line.split(" itsup.run: ", 1)[1])
        )
        found.append({k: json.loads(v) if v.startswith('"') else v for k, v in fields.items()})
    return found


def test_status_shows_the_newest_generation_and_the_last_run(tmp_path: Path):
    root = local_host(tmp_path)
    assert run_itsup("backup", root=root).code == 0
    r = run_itsup("backup", "status", "--json", root=root)
    assert r.code == 0, r.err
    st = json.loads(r.out)
    (target,) = st["targets"]
    assert target["newest"].startswith("backup-")
    assert 0 <= target["age_seconds"] < 120
    assert target["files"] > 0 and target["archive_bytes"] > 0
    archive = next((tmp_path / "store").rglob(f"{target['newest']}.tar.gz"))
    assert target["archive_bytes"] == archive.stat().st_size
    backup = st["last_run"]["backup"]
    assert backup["result"] == "success" and backup["generation"] == target["newest"]
    assert st["last_success"]["backup"]["generation"] == target["newest"]
    human = run_itsup("backup", "status", root=root)
    assert human.code == 0 and target["newest"] in human.out


def test_check_passes_when_fresh_and_fails_with_12_when_stale(tmp_path: Path):
    root = local_host(tmp_path)
    assert run_itsup("backup", root=root).code == 0
    assert run_itsup("backup", "check", "--max-age", "1h", root=root).code == 0
    time.sleep(2.1)
    r = run_itsup("backup", "check", "--max-age", "2s", root=root)
    assert r.code == 12
    assert "is 2s old (limit 2s)" in r.err or "old (limit 2s)" in r.err
    assert "Traceback" not in r.err
    state = json.loads((root / ".itsup" / "state.json").read_text())
    assert state["last"]["check"]["result"] == "stale"
    (line,) = [x for x in run_lines(root, "check") if x["event"] == "end" and x["exit"] == "12"]
    assert line["result"] == "stale"


def test_check_default_limit_comes_from_itsup_yml(tmp_path: Path):
    root = local_host(tmp_path, "  monitoring:\n    max_age: 1s\n")
    assert run_itsup("backup", root=root).code == 0
    time.sleep(1.1)
    assert run_itsup("backup", "check", root=root).code == 12


def test_check_without_any_backup_is_exit_10_and_stale(tmp_path: Path):
    root = local_host(tmp_path)
    r = run_itsup("backup", "check", root=root)
    assert r.code == 10  # the same code restore, verify and drill give
    assert "no complete backup generation in" in r.err
    state = json.loads((root / ".itsup" / "state.json").read_text())
    assert state["last"]["check"]["result"] == "stale"


def test_an_incomplete_newer_generation_does_not_count(tmp_path: Path):
    root = local_host(tmp_path)
    assert run_itsup("backup", root=root).code == 0
    time.sleep(1.1)
    assert run_itsup("backup", root=root).code == 0
    manifests = sorted((tmp_path / "store").rglob("backup-*.manifest.json"))
    manifests[-1].unlink()  # the newest run "died" before its manifest
    st = json.loads(run_itsup("backup", "status", "--json", root=root).out)["targets"][0]
    assert st["newest"] == manifests[0].name.removesuffix(".manifest.json")
    assert st["incomplete"] == 1


def test_check_on_unreachable_storage_exits_6(tmp_path: Path):
    root = make_host(tmp_path / "host", volumes=False)
    write_config(
        root,
        "backup:\n  s3:\n    bucket: b\n    endpoint: http://127.0.0.1:9\n"
        "    access_key_id: x\n    secret_access_key: y\n",
    )
    r = run_itsup("backup", "check", root=root, timeout=120)
    assert r.code == 6, r.err
    assert "Traceback" not in r.err


def test_bad_max_age_is_a_usage_error(tmp_path: Path):
    root = local_host(tmp_path)
    r = run_itsup("backup", "check", "--max-age", "two days", root=root)
    assert r.code == 2
    assert "is not a duration" in r.err


def test_each_run_logs_one_start_and_one_end_line(tmp_path: Path):
    root = local_host(tmp_path)
    assert run_itsup("backup", root=root).code == 0
    start, end = run_lines(root, "backup")
    assert start["event"] == "start" and end["event"] == "end"
    assert end["result"] == "success" and end["exit"] == "0"
    assert end["generation"].startswith("backup-")
    assert int(end["bytes"]) > 0 and int(end["files"]) > 0 and float(end["duration_s"]) >= 0

    # A failed run: its end line says why, at ERROR level.
    store = tmp_path / "store"
    shutil.rmtree(store)
    store.write_text("a file where the backup folder should be")
    r = run_itsup("backup", root=root)
    assert r.code != 0
    ends = [x for x in run_lines(root, "backup") if x["event"] == "end"]
    assert len(ends) == 2 and ends[-1]["result"] == "failure"
    assert ends[-1]["exit"] == str(r.code) and ends[-1]["error"]
    log = (root / "logs" / "backup.log").read_text()
    assert re.search(r"ERROR itsup\.run: event=end action=backup result=failure", log)
    state = json.loads((root / ".itsup" / "state.json").read_text())
    assert state["last"]["backup"]["result"] == "failure"
    assert state["last_success"]["backup"]["result"] == "success"  # kept


def test_s3_status_and_check(tmp_path: Path, s3_server, s3_prefix):
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, s3_config(s3_server, s3_prefix))
    s3_secrets(root, s3_server)
    assert run_itsup("backup", root=root).code == 0
    st = json.loads(run_itsup("backup", "status", "--json", root=root).out)
    assert [t["kind"] for t in st["targets"]] == ["s3"]
    assert st["targets"][0]["newest"].startswith("backup-")
    r = run_itsup("backup", "check", "--max-age", "10m", root=root)
    assert r.code == 0, r.err
    assert s3_server.secret_key not in r.out + r.err
