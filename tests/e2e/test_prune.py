"""`itsup backup prune` as an operator runs it: the plan for every generation,
--dry-run, --json, what is removed and what never is, the leftovers of failed
runs, and `prune_after_backup`.

Older generations are written straight into the local target (tiny objects,
a real manifest each: retention decides from the listing alone); the newest
ones are real backups, so `latest` and a restore are real too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import itsup, make_host, run_itsup, write_config, write_generation

from itsup.errors import ExitCode
from itsup.generation import generation_name
from itsup.storage.local import PARTIAL_MARK

POLICY = "  retention:\n    keep_daily: 3\n    timezone: UTC\n"


def day(days_ago: int, hour: int = 3) -> str:
    """The name of a generation `days_ago` days before today, at `hour`:00 UTC."""
    today = datetime.now(UTC).replace(hour=hour, minute=0, second=0, microsecond=0)
    return generation_name(today - timedelta(days=days_ago))


def names(folder: Path, suffix: str = ".manifest.json") -> list[str]:
    """The generations with an object of that kind, newest first."""
    found = (p.name.removesuffix(suffix) for p in folder.glob(f"backup-*{suffix}"))
    return sorted(found, reverse=True)


def lines(out: str) -> dict[str, str]:
    """generation -> the rest of its line in prune's listing."""
    found = {}
    for line in out.splitlines():
        if line.startswith("backup-"):
            name, _, rest = line.partition(" ")
            found[name] = " ".join(rest.split())
    return found


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """One real backup today, older generations on the six days before (two on
    yesterday), policy keep_daily 3 in UTC."""
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, "backup:\n" + POLICY)
    folder = root / "backups" / "itsup"
    for days_ago in range(1, 7):
        write_generation(folder, day(days_ago))
    write_generation(folder, day(1, hour=1))
    itsup(root, "backup")
    return root


def test_dry_run_lists_every_generation_and_removes_nothing(host: Path) -> None:
    folder = host / "backups" / "itsup"
    before = sorted(p.name for p in folder.iterdir())
    (real,) = [n for n in names(folder) if n > day(1)]

    res = itsup(host, "backup", "prune", "--dry-run")
    assert "(dry run: nothing is removed)" in res.out
    assert "policy: keep_daily 3; time zone UTC" in res.out
    plan = lines(res.out)
    assert plan == {
        real: "keep daily; protected: newest complete, latest",
        day(1): "keep daily",
        day(1, hour=1): "remove",
        day(2): "keep daily",
        day(3): "remove",
        day(4): "remove",
        day(5): "remove",
        day(6): "remove",
    }
    assert list(plan) == sorted(plan, reverse=True), "newest first"
    assert "dry run: would remove 5 generation(s) and keep 3" in res.out
    assert sorted(p.name for p in folder.iterdir()) == before


def test_json_shape(host: Path) -> None:
    res = itsup(host, "backup", "prune", "--dry-run", "--json")
    data = json.loads(res.out)
    assert set(data) == {"where", "dry_run", "policy", "generations", "summary"}
    assert data["dry_run"] is True
    assert data["policy"]["keep_daily"] == 3 and data["policy"]["timezone"] == "UTC"
    newest, *_ = data["generations"]
    assert set(newest) == {"name", "time", "complete", "action", "rules", "protected", "note"}
    assert newest["action"] == "keep" and newest["rules"] == ["daily"]
    assert newest["protected"] == ["newest complete", "latest"]
    assert newest["complete"] is True and newest["time"].endswith("+00:00")
    assert [g["action"] for g in data["generations"]].count("remove") == 5
    assert data["summary"] == {
        "generations": 8,
        "kept": 3,
        "removed": 5,
        "removed_incomplete": 0,
        "objects_deleted": 0,
        "uploads_aborted": 0,
        "seconds": data["summary"]["seconds"],
    }


def test_prune_removes_what_the_policy_drops_and_spares_latest(host: Path, tmp_path: Path) -> None:
    folder = host / "backups" / "itsup"
    (real,) = [n for n in names(folder) if n > day(1)]
    # `latest` still names an old generation (its update failed, say): it stays.
    pointer = {"generation": day(5), "archive": f"itsup/{day(5)}.tar.gz"}
    (folder / "latest.json").write_text(json.dumps(pointer))

    res = itsup(host, "backup", "prune")
    plan = lines(res.out)
    assert plan[day(5)] == "keep protected: latest"
    assert plan[real] == "keep daily; protected: newest complete"
    assert "prune: removed 4 generation(s) (12 object(s)), kept 4" in res.out
    assert names(folder) == [real, day(1), day(2), day(5)]
    assert names(folder, ".tar.gz") == [real, day(1), day(2), day(5)]
    assert names(folder, ".index.jsonl.gz") == [real, day(1), day(2), day(5)]
    log = (host / "logs" / "backup.log").read_text()
    assert f"removed {day(6)} (not kept by backup.retention): 3 object(s)" in log

    listed = json.loads(itsup(host, "backup", "list", "--json").out)
    assert [g["name"] for g in listed] == [real, day(1), day(2), day(5)]
    itsup(host, "restore", "all", "--to", tmp_path / "out", "--yes")  # the newest still restores
    assert lines(itsup(host, "backup", "prune").out)[day(5)] == "keep protected: latest"


def test_newest_complete_is_kept_when_no_rule_keeps_it(tmp_path: Path) -> None:
    """A newer generation whose manifest does not parse counts for the rules
    (its manifest is listed), but the newest one that restores is protected."""
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, "backup:\n  retention:\n    keep_last: 1\n")
    folder = root / "backups" / "itsup"
    write_generation(folder, day(2))
    write_generation(folder, day(1))
    write_generation(folder, day(0, hour=0), manifest=b"{not json")

    plan = lines(itsup(root, "backup", "prune").out)
    assert plan == {
        day(0, hour=0): "keep last",
        day(1): "keep protected: newest complete",
        day(2): "remove",
    }
    assert names(folder) == [day(0, hour=0), day(1)]


def test_leftovers_of_failed_runs(tmp_path: Path) -> None:
    """Archives without a manifest older than backup.orphan_grace go, younger ones
    stay (another host's run may be writing them); unfinished uploads go at once."""
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, "backup:\n  orphan_grace: 30m\n" + POLICY)
    folder = root / "backups" / "itsup"
    write_generation(folder, day(3))
    write_generation(folder, day(2), manifest=False, age=3600)
    write_generation(folder, day(1), manifest=False)
    (folder / f"{day(1)}.tar.gz{PARTIAL_MARK}0a1b2c3d").write_bytes(b"half")

    res = itsup(root, "backup", "prune", "--dry-run")
    plan = lines(res.out)
    assert plan[day(2)] == "remove incomplete: no manifest, left by a run that did not finish"
    assert plan[day(1)].startswith("keep incomplete: younger than backup.orphan_grace (30m)")
    assert plan[day(3)] == "keep daily; protected: newest complete"
    assert "would remove 1 generation(s) (1 incomplete) and keep 2" in res.out

    res = itsup(root, "backup", "prune")
    assert "(1 incomplete; 2 object(s); 1 unfinished upload(s) discarded)" in res.out
    kept = [f"{day(3)}.{s}" for s in ("tar.gz", "index.jsonl.gz", "manifest.json")]
    young = [f"{day(1)}.{s}" for s in ("tar.gz", "index.jsonl.gz")]
    assert sorted(p.name for p in folder.iterdir()) == sorted(kept + young)


def test_target_option_prunes_only_that_target(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host", volumes=False)
    one, two = tmp_path / "one", tmp_path / "two"
    write_config(
        root,
        f"backup:\n  targets:\n    one: file://{one}/itsup\n    two: file://{two}/itsup\n"
        "  retention:\n    keep_last: 1\n",
    )
    for folder in (one / "itsup", two / "itsup"):
        write_generation(folder, day(2))
        write_generation(folder, day(1))
    itsup(root, "backup", "prune", "--target", "two")
    assert names(one / "itsup") == [day(1), day(2)]
    assert names(two / "itsup") == [day(1)]
    res = run_itsup("backup", "prune", "--target", "tow", root=root, expect=ExitCode.USAGE)
    assert "did you mean 'two'?" in res.err


def test_no_policy_and_an_empty_policy_are_configuration_errors(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, "backup: {}\n")
    write_generation(root / "backups" / "itsup", day(1))
    res = run_itsup("backup", "prune", root=root, expect=ExitCode.CONFIG)
    assert "backup.retention is not set" in res.err
    assert "itsup: hint: add e.g. `retention: {keep_daily: 7" in res.err
    assert "--dry-run" in res.err

    for empty in ("  retention:\n", "  retention:\n    keep_last: 0\n    keep_daily: 0\n"):
        write_config(root, "backup:\n" + empty)
        for command in (("backup", "prune"), ("backup",)):
            res = run_itsup(*command, root=root, expect=ExitCode.CONFIG)
            assert "itsup.yml:2: backup.retention: keeps nothing" in res.err
    assert names(root / "backups" / "itsup") == [day(1)]


def test_prune_after_backup(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, "backup:\n  retention:\n    keep_last: 2\n    prune_after_backup: true\n")
    folder = root / "backups" / "itsup"
    write_generation(folder, day(3))
    write_generation(folder, day(2))
    first = itsup(root, "backup")
    assert first.out == "" and first.err == "", "silent under cron, as any good backup"
    time.sleep(1.1)
    itsup(root, "backup")
    real = [n for n in names(folder) if n > day(1)]
    assert len(real) == 2 and names(folder) == real
    log = (root / "logs" / "backup.log").read_text()
    assert f"removed {day(3)} (not kept by backup.retention)" in log
    assert "prune of " in log


FAILING_PRUNE = """
import sys
import itsup.actions.prune
from itsup.errors import StorageError

def broken(*args, **kwargs):
    raise StorageError("the target refused the delete")

itsup.actions.prune.run_prune = broken
from itsup.cli.main import main
sys.exit(main(["--root", sys.argv[1], "backup"]))
"""


def test_a_failed_prune_after_backup_is_a_warning(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, "backup:\n  retention:\n    keep_last: 1\n    prune_after_backup: true\n")
    proc = subprocess.run(
        [sys.executable, "-c", FAILING_PRUNE, str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "itsup: WARNING: prune after the backup failed (the backup is stored" in proc.stderr
    assert "the target refused the delete" in proc.stderr
    assert len(names(root / "backups" / "itsup")) == 1
    log = (root / "logs" / "backup.log").read_text()
    assert "result=success exit=0" in log and "WARNING itsup.prune" in log
