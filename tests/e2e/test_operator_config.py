"""What a new operator hit (issue 9): configuration and logging, through the real command.

- a misspelt section (`bakup:`) or an itsup.yml without `backup:` must not quietly
  back up, unencrypted and without S3, to the local default: exit 4, nothing written;
- a run that fails on its configuration still leaves its ERROR record in
  logs/backup.log, and under cron's `>> logs/backup.log 2>&1` every event is
  written once;
- a successful run whose alert could not be delivered says nothing on stderr;
- a drill under cron prints one line;
- "no" at a prompt is exit 1, Ctrl-C there stays 130;
- a key prefix without its trailing `/` still names a folder.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from gitsops import PROJECTS_FILES, bare_remote, new_age_key, seed_remote, sops_config
from helpers import ITSUP, make_host, run_itsup, s3_config, s3_secrets, write_config
from s3server import S3Server, free_port

from itsup.config import misspelt_section
from itsup.errors import ExitCode

# What itsUP itself keeps at the top level of the same file: never taken for a typo.
ITSUP_KEYS = (
    "router_ip",
    "versions",
    "letsencrypt",
    "trusted_ips",
    "traefik",
    "middleware",
    "dns",
    "api",
    "backend",
)
ITSUP_SETTINGS = (
    "router_ip: 192.168.1.1\n"
    "versions:\n  traefik: v3.1\n  crowdsec: v1.6\n"
    "letsencrypt:\n  email: ops@example.test\n  staging: false\n"
    "trusted_ips: [10.0.0.0/8]\n"
    "traefik:\n  log_level: info\n"
    "middleware:\n  rateLimit: {average: 100}\n"
    "dns:\n  provider: cloudflare\n"
    "api:\n  port: 8888\n"
    "backend: {}\n"
)
COMMANDS_THAT_OPEN_A_TARGET = (
    ("backup",),
    ("backup", "list"),
    ("backup", "status"),
    ("backup", "check"),
    ("backup", "verify"),
    ("backup", "drill", "--no-git"),
    ("restore", "all", "--to", "restored"),
)


def log_text(root: Path) -> str:
    path = root / "logs" / "backup.log"
    return path.read_text(errors="replace") if path.exists() else ""


def nothing_backed_up(root: Path) -> None:
    assert not (root / "backups").exists(), sorted(p.name for p in (root / "backups").rglob("*"))


def local_generations(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "backups" / "itsup").glob("backup-*.manifest.json"))


# -- 1. a typo must not silently move the backups -------------------------------------


@pytest.mark.parametrize(
    ("key", "meant"),
    [
        ("backup", None),
        ("notify", None),
        ("Backup", "backup"),
        ("BACKUP", "backup"),
        ("bakup", "backup"),
        ("backups", "backup"),
        ("backpu", "backup"),  # a transposition is one edit
        ("bckp", None),  # 4 characters: one edit at most, this is two
        ("back", None),
        ("notfy", "notify"),
        ("Notify", "notify"),
        ("notifiy", "notify"),
        ("notif", "notify"),
        ("NOTIFY", "notify"),
        *((key, None) for key in ITSUP_KEYS),
        ("backups_old_server", None),
        ("x" * 100_000, None),
    ],
)
def test_which_top_level_keys_are_taken_for_a_misspelt_section(key: str, meant: str | None) -> None:
    assert misspelt_section(key) == meant


@pytest.mark.parametrize("typo", ["bakup", "Backup", "backups", "notfy"])
def test_misspelt_section_is_exit_4_with_its_line_and_nothing_written(
    tmp_path: Path, typo: str
) -> None:
    root = make_host(tmp_path / "host")
    body = "  include_volumes: true\n" if typo != "notfy" else "  - json://127.0.0.1:9/x\n"
    write_config(root, f"router_ip: 10.0.0.1\n# the operator's own settings\n{typo}:\n{body}")
    res = run_itsup("backup", root=root)
    assert res.code == ExitCode.CONFIG, res.err
    meant = "notify" if typo == "notfy" else "backup"
    assert f"projects/itsup.yml:3: {typo}: unknown section (did you mean '{meant}'?)" in res.err
    assert res.err.startswith("itsup: error: ") and "Traceback" not in res.err
    assert "itsup: hint: " in res.err
    nothing_backed_up(root)
    # The run left its failure where cron's operator looks.
    assert re.search(
        rf" ERROR itsup: \S*projects/itsup.yml:3: {typo}: unknown section", log_text(root)
    )


def test_itsup_settings_beside_the_backup_section_are_accepted(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host")
    write_config(root, ITSUP_SETTINGS + "backup:\n  include_volumes: false\n")
    res = run_itsup("backup", root=root)
    assert res.code == 0, res.err
    assert res.err == ""
    assert len(local_generations(root)) == 1


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "# itsup.yml: to be filled in\n# backup:\n", ITSUP_SETTINGS, "notify: []\n"],
    ids=["empty", "blank", "comments", "itsup-only", "notify-only"],
)
def test_no_backup_section_is_exit_4_with_the_hint(tmp_path: Path, text: str) -> None:
    root = make_host(tmp_path / "host")
    write_config(root, text)
    res = run_itsup("backup", root=root)
    assert res.code == ExitCode.CONFIG, res.err
    assert "backup: section is missing" in res.err
    assert "itsup: hint: add `backup: {}` to select the local default" in res.err
    assert "Traceback" not in res.err
    nothing_backed_up(root)
    assert " ERROR " in log_text(root)


@pytest.mark.parametrize("args", COMMANDS_THAT_OPEN_A_TARGET, ids=" ".join)
def test_every_command_that_opens_a_target_wants_the_section(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    root = make_host(tmp_path / "host")
    write_config(root, "# nothing here yet\n")
    res = run_itsup(*args, root=root)
    assert res.code == ExitCode.CONFIG, res.err
    assert "backup: section is missing" in res.err and "`backup: {}`" in res.err
    nothing_backed_up(root)
    assert not (root / "restored").exists()


@pytest.mark.parametrize("section", ["backup: {}\n", "backup:\n", "backup: # local\nnotify: []\n"])
def test_an_empty_backup_section_selects_the_local_default(tmp_path: Path, section: str) -> None:
    root = make_host(tmp_path / "host")
    write_config(root, ITSUP_SETTINGS + section)
    res = run_itsup("backup", root=root)
    assert res.code == 0, res.err
    assert res.out == "" and res.err == ""
    [manifest] = local_generations(root)
    listing = run_itsup("backup", "list", root=root)
    assert listing.code == 0 and manifest.removesuffix(".manifest.json") in listing.out


def _new_setup(tmp_path: Path, home: Path, itsup_yml: str) -> tuple[Path, Path, Path]:
    """A brand-new host root with projects/ and secrets/ remotes, itsup.yml as given."""
    base = tmp_path / "remotes"
    base.mkdir()
    key = home / ".config" / "sops" / "age" / "keys.txt"
    secrets_src = base / "secrets-src"
    sops_config(secrets_src, new_age_key(key))
    projects = bare_remote(base, "projects")
    secrets = bare_remote(base, "secrets")
    seed_remote(projects, {**PROJECTS_FILES, "itsup.yml": itsup_yml}, base / "seed-projects")
    seed_remote(secrets, {".sops.yaml": (secrets_src / ".sops.yaml").read_text()}, base / "s")
    root = tmp_path / "host"
    root.mkdir()
    return root, projects, secrets


def test_init_on_a_new_setup_does_not_need_the_section(tmp_path: Path, isolated_home: Path) -> None:
    """init checks itsup.yml but opens no target: a file with itsUP's keys only is fine."""
    root, projects, secrets = _new_setup(tmp_path, isolated_home, ITSUP_SETTINGS)
    res = run_itsup("init", "--projects-url", projects, "--secrets-url", secrets, root=root)
    assert res.code == 0, res.out + res.err
    assert "projects/itsup.yml: present and valid" in res.out
    # The first backup is where the section is needed.
    backup = run_itsup("backup", root=root)
    assert backup.code == ExitCode.CONFIG and "`backup: {}`" in backup.err
    nothing_backed_up(root)


def test_init_reports_a_misspelt_section(tmp_path: Path, isolated_home: Path) -> None:
    text = ITSUP_SETTINGS + "Backup:\n  include_volumes: true\n"
    root, projects, secrets = _new_setup(tmp_path, isolated_home, text)
    res = run_itsup("init", "--projects-url", projects, "--secrets-url", secrets, root=root)
    assert res.code == ExitCode.CONFIG, res.out + res.err
    line = ITSUP_SETTINGS.count("\n") + 1
    assert f"projects/itsup.yml:{line}: Backup: unknown section (did you mean 'backup'?)" in res.err


# -- 2. cron sees every failure in the log -----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("backup:\n  s3: [unclosed\n", "broken YAML"),
        ("bakup:\n  include_volumes: true\n", "bakup: unknown section"),
        ("backup:\n  s3:\n    bucket: ${NO_SUCH_BUCKET}\n", "${NO_SUCH_BUCKET} is not defined"),
    ],
    ids=["broken-yaml", "typo", "placeholder"],
)
def test_a_broken_config_still_writes_its_error_record(
    tmp_path: Path, text: str, expected: str
) -> None:
    root = make_host(tmp_path / "host")
    write_config(root, text)
    res = run_itsup("backup", root=root)
    assert res.code == ExitCode.CONFIG
    assert res.err.startswith("itsup: error: ") and expected in res.err
    [record] = [line for line in log_text(root).splitlines() if " ERROR " in line]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} ERROR itsup: ", record)
    assert expected in record and "(exit 4)" in record


def cron_run(root: Path, *args: str) -> int:
    """`itsup ARGS >> logs/backup.log 2>&1`, as the README's cron line writes it."""
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    with open(root / "logs" / "backup.log", "ab") as log:
        proc = subprocess.run(
            [*ITSUP, "--root", str(root), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            cwd=root,
            timeout=120,
        )
    return proc.returncode


def count(text: str, words: str) -> int:
    return sum(1 for line in text.splitlines() if words in line)


def test_a_failure_under_the_cron_redirect_is_written_once(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host")
    write_config(root, "bakup:\n  include_volumes: true\n")
    assert cron_run(root, "backup") == ExitCode.CONFIG
    log = log_text(root)
    assert count(log, "bakup: unknown section (did you mean 'backup'?)") == 1, log
    assert count(log, "itsup reads only the backup: and notify: sections") == 1, log  # the hint
    assert "itsup: error:" not in log and "itsup: hint:" not in log, log
    # Every line is a timestamped record.
    for line in log.splitlines():
        assert re.match(r"^\d{4}-\d\d-\d\dT", line), line
    nothing_backed_up(root)


def test_a_warning_under_the_cron_redirect_is_written_once(tmp_path: Path) -> None:
    root = tmp_path / "host"
    for folder in ("projects", "logs"):  # no upstream/ or proxy/ yet
        (root / folder).mkdir(parents=True)
    write_config(root, "backup: {}\n")
    assert cron_run(root, "backup", "--allow-shrink") == 0  # an empty backup, with a warning
    log = log_text(root)
    assert count(log, "holds no files (--allow-shrink)") == 1, log
    assert " WARNING itsup" in log and "itsup: WARNING:" not in log, log
    # The hint of a failure reaches the log too, once: an error record with its hint.
    write_config(root, "# emptied by mistake\n")
    assert cron_run(root, "backup") == ExitCode.CONFIG
    log = log_text(root)
    # One error record (with its hint) besides the run's own end record; no console copy.
    errors = [line for line in log.splitlines() if " ERROR itsup: " in line]
    assert len(errors) == 1 and "backup: section is missing" in errors[0], log
    assert count(log, "add `backup: {}` to select the local default") == 1, log
    assert "itsup: error:" not in log and "itsup: hint:" not in log, log


def test_a_warning_off_the_cron_redirect_still_reaches_stderr(tmp_path: Path) -> None:
    root = tmp_path / "host"
    for folder in ("projects", "logs"):  # no upstream/ or proxy/ yet
        (root / folder).mkdir(parents=True)
    write_config(root, "backup: {}\n")
    res = run_itsup("backup", "--allow-shrink", root=root)  # an empty backup, with a warning
    assert res.code == 0
    assert count(res.err, "holds no files (--allow-shrink)") == 1
    assert count(log_text(root), "holds no files (--allow-shrink)") == 1


def test_an_undelivered_alert_on_a_successful_backup_stays_in_the_log(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host")
    port = free_port()  # nothing listens there
    write_config(
        root,
        "backup: {}\n"
        "notify:\n"
        f"  - url: json://127.0.0.1:{port}/x\n"
        "    events: [success, failure]\n",
    )
    res = run_itsup("backup", root=root)
    assert res.code == 0
    assert res.err == "" and res.out == ""  # nothing for cron to mail
    assert re.search(
        rf" WARNING itsup.run: notification not delivered: json://127.0.0.1:{port}/",
        log_text(root),
    )
    # A failed run still says so on stderr, the undelivered alert included.
    (root / "backups").rename(root / "backups.old")
    (root / "backups").write_text("not a folder\n")
    failed = run_itsup("backup", root=root)
    assert failed.code not in (0, 3)
    assert "notification not delivered" in failed.err
    assert "Connection error occurred" not in failed.err  # apprise's own lines stay off it
    assert "itsup: error:" in failed.err


# -- the drill under cron -------------------------------------------------------------------


DRILL_PASSED = re.compile(
    r"^drill of (backup-\d{4}-\d\d-\d\d-\d{6}) passed: (\d+) checks ok, (?:\d+ skipped, )?"
    r"RTO \d+\.\d s, RPO \d+\.\d s \(report: (logs/drill-\d{8}-\d{6}\.json)\)$"
)


def test_a_drill_off_a_terminal_prints_one_line(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, "backup: {}\n")
    assert run_itsup("backup", root=root).code == 0
    res = run_itsup("backup", "drill", "--no-git", root=root)
    assert res.code == 0, res.err
    assert res.err == ""
    [line] = res.out.splitlines()
    match = DRILL_PASSED.match(line)
    assert match, line
    assert f"{match.group(1)}.manifest.json" in local_generations(root)
    assert int(match.group(2)) >= 2
    assert (root / match.group(3)).is_file()
    # -v: the table, as on a terminal.
    verbose = run_itsup("-v", "backup", "drill", "--no-git", root=root)
    assert verbose.code == 0, verbose.err
    assert "Restore drill:" in verbose.out and "drill PASSED" in verbose.out
    assert len(verbose.out.splitlines()) > 3


def test_a_failed_drill_off_a_terminal_names_the_first_failed_check(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, "backup:\n  monitoring:\n    rpo: 1s\n")
    assert run_itsup("backup", root=root).code == 0
    time.sleep(2.1)
    res = run_itsup("backup", "drill", "--no-git", root=root)
    assert res.code == ExitCode.FAILURE
    [line] = res.out.splitlines()
    assert re.match(
        r"^drill of backup-\S+ FAILED: RPO: the restored data is \d+\.\d s old, over the "
        r"target of 1 s \(report: logs/drill-\S+\.json\)$",
        line,
    ), line
    assert "MISSED its target" in res.err


# -- 3. "no" at a prompt ---------------------------------------------------------------


def _prompted_restore(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`itsup restore all` over changed files, its stdin a terminal; returns at the prompt."""
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*ITSUP, "--root", str(root), "restore", "all"],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=root,
    )
    os.close(slave)
    assert proc.stderr is not None
    seen = b""
    deadline = time.monotonic() + 60
    while b"Overwrite?" not in seen:
        assert time.monotonic() < deadline, seen
        ready, _, _ = select.select([proc.stderr], [], [], 1)
        if ready:
            chunk = os.read(proc.stderr.fileno(), 4096)
            assert chunk, f"itsup ended before asking: {seen!r}"
            seen += chunk
    return proc, master


def _changed_host(tmp_path: Path) -> tuple[Path, Path, bytes]:
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, "backup: {}\n")
    assert run_itsup("backup", root=root).code == 0
    acme = root / "proxy" / "traefik" / "acme.json"
    changed = b'{"changed": "after the backup"}\n'
    acme.write_bytes(changed)
    return root, acme, changed


def test_no_at_the_prompt_is_exit_1(tmp_path: Path) -> None:
    root, acme, changed = _changed_host(tmp_path)
    proc, master = _prompted_restore(root)
    try:
        os.write(master, b"n\n")
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
    assert proc.returncode == ExitCode.FAILURE, err
    assert b"itsup: aborted" in err and b"Traceback" not in err
    assert acme.read_bytes() == changed  # nothing restored
    assert re.search(r" ERROR itsup: aborted at a prompt \(exit 1\)", log_text(root))


def test_ctrl_c_at_the_prompt_stays_exit_130(tmp_path: Path) -> None:
    root, acme, changed = _changed_host(tmp_path)
    proc, master = _prompted_restore(root)
    try:
        # As an operator's Ctrl-C comes: once the prompt waits for the answer. (A
        # signal landing between the prompt's write and its read is only noticed
        # at the next key: Python's input() does not look in between.)
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert b"itsup: aborted" not in err and b"Traceback" not in err
    assert acme.read_bytes() == changed


# -- 4. paths mean what they say ------------------------------------------------------------


def test_an_s3_prefix_without_its_slash_names_a_folder(
    tmp_path: Path, s3_server: S3Server, s3_prefix: str
) -> None:
    root = make_host(tmp_path / "host", volumes=False)
    prefix = s3_prefix.rstrip("/")  # as an operator writes it: `prefix: itsup`
    s3_secrets(root, s3_server)
    write_config(root, s3_config(s3_server, prefix))
    res = run_itsup("backup", root=root)
    assert res.code == 0, res.err
    client = s3_server.client()
    keys = [
        o["Key"]
        for o in client.list_objects_v2(Bucket=s3_server.bucket, Prefix=prefix).get("Contents", [])
    ]
    assert keys and all(k.startswith(f"{prefix}/") for k in keys), keys
    assert not any(k.startswith(f"{prefix}backup") for k in keys), keys
    assert any(re.fullmatch(rf"{re.escape(prefix)}/backup-[\d-]+\.manifest\.json", k) for k in keys)
    assert f"{prefix}/latest.tar.gz" in keys
    listing = run_itsup("backup", "list", "--json", root=root)
    assert listing.code == 0, listing.err
    assert '"status": "complete"' in listing.out


def test_a_local_prefix_without_its_slash_names_a_folder(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, "backup:\n  local:\n    path: store\n    prefix: mine\n")
    assert run_itsup("backup", root=root).code == 0
    names = sorted(p.name for p in (root / "store" / "mine").iterdir())
    assert "latest.tar.gz" in names and any(n.endswith(".manifest.json") for n in names)
    assert not list((root / "store").glob("minebackup*"))
    assert run_itsup("backup", "verify", root=root).code == 0


@pytest.mark.parametrize("where", ["s3", "local"])
def test_a_leading_slash_in_a_prefix_is_refused_with_the_fix(tmp_path: Path, where: str) -> None:
    root = make_host(tmp_path / "host", volumes=False)
    section = "s3:\n    bucket: b\n" if where == "s3" else "local:\n    path: store\n"
    write_config(root, f"backup:\n  {section}    prefix: /itsup\n")
    res = run_itsup("backup", "list", root=root)
    assert res.code == ExitCode.CONFIG
    assert (
        f"projects/itsup.yml:4: backup.{where}.prefix: must be a relative key prefix: "
        "write it without the leading '/', e.g. 'itsup/'"
    ) in res.err


def test_an_empty_prefix_stays_the_bucket_root(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host", volumes=False)
    write_config(root, 'backup:\n  local:\n    path: store\n    prefix: ""\n')
    assert run_itsup("backup", root=root).code == 0
    assert (root / "store" / "latest.tar.gz").is_file()
