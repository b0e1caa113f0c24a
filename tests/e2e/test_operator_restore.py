"""What a new operator hit when restoring (issue 9), done again through `itsup`.

- A volume holding `localtime -> /usr/share/zoneinfo/UTC` must not block a
  restore of acme.json or of proxy/; a restore that does hold it creates the
  link as a link (never followed) and names it; `--refuse-external-links`
  keeps the strict rule for the scope it restores.
- Hostile members outside the scope still refuse the whole archive.
- The drill lists such links as one line that never fails it.
- `itsup restore` with no scope is a usage error listing the choices.
- `--to` inside the host's upstream/ or proxy/ is refused.
- A restore into the live root holds the host lock, as a backup does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import (
    ACME,
    LOCK_FILE,
    HostFactory,
    generations,
    itsup,
    leftovers,
    lock_held,
    make_host,
    read_manifest,
    run_itsup,
    setup_host,
    start_itsup,
    tree_state,
    write_config,
)
from test_hostile import (
    LINK_TARGET_ONLY,
    World,
    assert_refused,
    make_world,
    publish_members,
    snapshot,
)
from test_hostile import (
    _cases as hostile_cases,
)

from itsup.errors import ExitCode

LOCALTIME = "upstream/app/volumes/data/localtime"
ZONE = "/usr/share/zoneinfo/UTC"
NOTE = "itsup: note: restored 1 symlink pointing outside the tree as a link (never followed): "


def stat_of(path: str) -> tuple[int, int, int] | None:
    """What writing through a link would change in its target (None: no such file)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def log_lines(root: Path, text: str) -> list[str]:
    return [line for line in (root / "logs/backup.log").read_text().splitlines() if text in line]


# -- a symlink pointing outside the tree -------------------------------------------------


def test_a_link_out_of_the_tree_blocks_nothing_and_comes_back_as_a_link(
    new_host: HostFactory,
) -> None:
    store = new_host()
    root = store.root
    (root / LOCALTIME).symlink_to(ZONE)
    zone_before = stat_of(ZONE)
    itsup(root, "backup")
    [gen] = generations(root)
    assert gen["status"] == "complete"
    notes = {p["path"]: p["problem"] for p in read_manifest(store, gen["name"])["problems"]}
    assert "--refuse-external-links" in notes[LOCALTIME]
    assert "--allow-external-links" not in notes[LOCALTIME]
    backed_up = tree_state(root)

    # The certificates, as the spec's Option 1: the link elsewhere plays no part.
    (root / ACME).write_text("{lost}")
    res = itsup(root, "restore", "--path", ACME, "--yes")
    assert (root / ACME).read_text().startswith('{"letsencrypt"')
    assert "symlink" not in res.err, res.err

    (root / "proxy/traefik/traefik.yml").write_text("broken: [\n")
    res = itsup(root, "restore", "proxy", "--yes")
    assert "symlink" not in res.err, res.err
    # The strict rule counts only what is restored: proxy/ holds no such link.
    (root / "proxy/traefik/traefik.yml").write_text("broken: [\n")
    itsup(root, "restore", "proxy", "--yes", "--refuse-external-links")
    assert tree_state(root) == backed_up

    # Strict, and the scope holds the link: refused whole, nothing changed.
    (root / LOCALTIME).unlink()
    (root / ACME).write_text("{lost}")
    before = tree_state(root)
    res = itsup(root, "restore", "all", "--yes", "--refuse-external-links", expect=5)
    assert LOCALTIME in res.err and ZONE in res.err
    assert tree_state(root) == before
    assert leftovers(root) == []

    # By default: restored as the very link it was, named on stderr and in the log.
    res = itsup(root, "restore", "all", "--yes")
    assert os.readlink(root / LOCALTIME) == ZONE
    assert f"{NOTE}{LOCALTIME} -> {ZONE}\n" in res.err
    assert tree_state(root) == backed_up
    assert stat_of(ZONE) == zone_before, "something was written through the link"
    [logged] = log_lines(root, "pointing outside the tree")
    assert f"{LOCALTIME} -> {ZONE}" in logged

    # The same for that project alone; and a dry run says what it would do.
    (root / LOCALTIME).unlink()
    res = itsup(root, "restore", "app", "--dry-run")
    assert f"+ {LOCALTIME}" in res.out
    assert "would restore 1 symlink pointing outside the tree as a link" in res.err
    itsup(root, "restore", "app", "--yes")
    assert os.readlink(root / LOCALTIME) == ZONE
    itsup(root, "restore", "blog", "--yes", "--refuse-external-links")  # not in blog/


def test_links_out_of_the_tree_are_never_written_through(tmp_path: Path) -> None:
    """Links to a real folder with files in it: a restore into a fresh folder and over
    the live tree replaces the links themselves, and the folder stays as it was."""
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "db.bin").write_text("not the backup's\n")
    data = root / "upstream/app/volumes/data"
    (data / "shared").symlink_to(outside)
    (data / "db-link").symlink_to(outside / "db.bin")
    for i in range(12):  # more than the note lists one by one
        (data / f"zone-{i:02d}").symlink_to(f"/usr/share/zoneinfo/Zone{i}")
    itsup(root, "backup")
    before = snapshot(outside)

    out = tmp_path / "check"
    res = itsup(root, "restore", "all", "--to", out)
    assert os.readlink(out / "upstream/app/volumes/data/shared") == str(outside)
    assert "itsup: note: restored 14 symlinks pointing outside the tree as links" in res.err
    assert "upstream/app/volumes/data/db-link -> " in res.err
    assert " and 4 more" in res.err
    (data / "db-link").unlink()
    (data / "db-link").write_text("a file where the link was\n")
    itsup(root, "restore", "all", "--yes")
    assert os.readlink(data / "db-link") == str(outside / "db.bin")
    assert snapshot(outside) == before, "a restore wrote through a link"


# -- hostile members outside the scope -----------------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> World:
    """As test_hostile's: a host whose local target gets hand-made archives."""
    return make_world(tmp_path)


HOSTILE = sorted(set(hostile_cases(Path("/x"))) - LINK_TARGET_ONLY)


@pytest.mark.parametrize("case", HOSTILE)
def test_a_hostile_member_outside_the_scope_still_refuses_the_archive(
    world: World, case: str
) -> None:
    members, named = hostile_cases(world.outside)[case]
    publish_members(world.target, members)
    before = snapshot(world.tmp, skip=world.target)
    for args in (("--path", ACME), ("--path", ACME, "--refuse-external-links")):
        assert_refused(world, world.restore(*args), named, before)


@pytest.mark.parametrize("case", sorted(LINK_TARGET_ONLY))
def test_a_link_out_of_the_tree_outside_the_scope_is_no_reason_to_refuse(
    world: World, case: str
) -> None:
    members, named = hostile_cases(world.outside)[case]
    publish_members(world.target, members)
    before = snapshot(world.outside)
    res = world.restore("--path", ACME, "--refuse-external-links")
    assert res.code == 0, res.err
    assert (world.dest / ACME).read_bytes() == b"{}\n"
    assert not os.path.lexists(world.dest / named), "a link outside the scope was written"
    assert "note:" not in res.err
    assert snapshot(world.outside) == before
    # Restoring what holds it, strictly: refused, naming it.
    res = world.restore("--refuse-external-links")
    assert res.code == 5 and named in res.err, res.err


# -- the drill ---------------------------------------------------------------------------------


def test_the_drill_lists_links_out_of_the_tree_in_one_line_that_passes(
    new_host: HostFactory, tmp_path: Path
) -> None:
    store = new_host()
    root = store.root
    (root / LOCALTIME).symlink_to(ZONE)
    (root / "upstream/blog/volumes/data/hosts").symlink_to("/etc/hosts")
    itsup(root, "backup")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    res = itsup(root, "backup", "drill", "--no-git", env={"TMPDIR": str(scratch)})
    assert " passed: " in res.out and "1 info" in res.out  # the one line off a terminal
    [path] = (root / "logs").glob("drill-*.json")
    report = json.loads(path.read_text())
    assert report["ok"] is True and report["exit_code"] == 0 and report["failed"] == 0
    lines = [c for c in report["checks"] if "outside the tree" in c["detail"]]
    assert lines == [
        {
            "item": "external symlinks",
            "status": "info",
            "detail": "2 symlink(s) point outside the tree, restored as links: "
            f"{LOCALTIME} -> {ZONE}, upstream/blog/volumes/data/hosts -> /etc/hosts",
        }
    ]
    assert "--allow-external-links" not in res.out + path.read_text()
    assert list(scratch.iterdir()) == []


# -- no scope --------------------------------------------------------------------------------


def test_restore_without_a_scope_is_a_usage_error_listing_the_choices(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    itsup(root, "backup")
    (root / ACME).write_text("{lost}")
    before = tree_state(root)
    out = tmp_path / "out"
    for args in ((), ("--yes",), ("--to", str(out)), ("--dry-run",), ("--from", "latest")):
        res = itsup(root, "restore", *args, expect=ExitCode.USAGE)
        assert res.err.startswith(
            "itsup: error: say what to restore: all, proxy, a project (e.g. app, blog) "
            "or --path PATH\n"
        ), res.err
        assert tree_state(root) == before
        assert not out.exists()


def test_restore_without_a_scope_needs_no_storage(tmp_path: Path) -> None:
    """The usage error comes at once, even when the configured storage is unreachable."""
    root = make_host(tmp_path / "host")
    write_config(
        root,
        "backup:\n  s3:\n    bucket: nowhere\n    endpoint: http://127.0.0.1:9\n"
        "    access_key_id: x\n    secret_access_key: y\n",
    )
    started = time.monotonic()
    res = itsup(root, "restore", expect=ExitCode.USAGE)
    assert time.monotonic() - started < 20
    assert "all, proxy, a project (e.g. app, blog) or --path PATH" in res.err


# -- --to inside the host's state ----------------------------------------------------------


def test_restore_to_inside_upstream_or_proxy_is_refused(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    itsup(root, "backup")
    alias = tmp_path / "alias"
    alias.symlink_to(root / "upstream")
    before = tree_state(root)
    for to, inside in (
        (root / "upstream/x", root / "upstream"),
        (root / "proxy", root / "proxy"),
        (root / "proxy/traefik/check", root / "proxy"),
        (root / "projects/../upstream/y", root / "upstream"),
        ("upstream/z", root / "upstream"),  # relative to the current folder, the root here
        (alias / "w", root / "upstream"),  # through a symlink
    ):
        for scope in (("all", "--yes"), ("--path", ACME), ("proxy", "--dry-run")):
            res = itsup(root, "restore", *scope, "--to", to, expect=ExitCode.USAGE)
            assert f"--to {to}:" in res.err and f"inside {inside}" in res.err, res.err
            assert "/tmp/check" in res.err
            assert tree_state(root) == before
            assert not [p for p in (root / "upstream").iterdir() if p.name in "xyzw"]
            assert not (root / "proxy/traefik/check").exists()

    # Beside them, and the host root itself, are fine.
    itsup(root, "restore", "proxy", "--to", root / "restore-check")
    assert (root / "restore-check" / ACME).is_file()
    (root / ACME).write_text("{lost}")
    itsup(root, "restore", "--path", ACME, "--to", root, "--yes")
    assert (root / ACME).read_text().startswith('{"letsencrypt"')


# -- the host lock ---------------------------------------------------------------------------


def test_restore_into_the_live_root_waits_for_no_backup(
    new_host: HostFactory, tmp_path: Path
) -> None:
    store = new_host()
    root = store.root
    itsup(root, "backup")
    (root / ACME).write_text("{lost}")
    before = tree_state(root)
    with lock_held(root, "backup pid 4242 on web1 since 2026-01-15T03:00:00Z\n"):
        for args in (("all", "--yes"), ("--path", ACME, "--yes"), ("proxy", "--yes", "--to", root)):
            started = time.monotonic()
            res = itsup(root, "restore", *args, expect=ExitCode.LOCKED)
            assert time.monotonic() - started < 20, "a locked-out restore must fail fast"
            assert "another itsup backup or restore is running for this host root" in res.err
            assert "backup pid 4242 on web1" in res.err
            assert tree_state(root) == before
            assert leftovers(root) == []

        # Meanwhile: a dry run, and a restore elsewhere, need no lock.
        assert f"~ {ACME}" in itsup(root, "restore", "proxy", "--dry-run").out
        out = tmp_path / "elsewhere"
        itsup(root, "restore", "all", "--to", out)
        assert (out / ACME).read_text().startswith('{"letsencrypt"')
        assert tree_state(root) == before


def two_target_host(root: Path, port: int) -> None:
    """A host backing up locally, with a second (S3) target that never answers."""
    make_host(root)
    (root / "secrets").mkdir(exist_ok=True)
    (root / "secrets/itsup.txt").write_text("KEY_ID=test-key-id\nSECRET=test-secret\n")
    write_config(
        root,
        "backup:\n  target: local\n  local:\n    path: backups\n"
        "  s3:\n    bucket: itsup-test\n    prefix: itsup/\n"
        f"    endpoint: http://127.0.0.1:{port}\n"
        "    access_key_id: ${KEY_ID}\n    secret_access_key: ${SECRET}\n",
    )


def wait_for_lock(root: Path, proc: subprocess.Popen[str], record: str) -> None:
    lock = root / LOCK_FILE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if lock.exists() and lock.read_text().startswith(record):
            return
        if proc.poll() is not None:
            pytest.fail(f"it ended (exit {proc.returncode}) first:\n{proc.communicate()[1]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"timed out waiting for {record!r} in the lock file")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err
    assert "Traceback" not in err
    return err


def test_a_running_backup_and_a_restore_of_the_live_root_exclude_each_other(
    tmp_path: Path, blackhole: int
) -> None:
    root = tmp_path / "host"
    two_target_host(root, blackhole)
    itsup(root, "backup")
    (root / ACME).write_text("{lost}")
    before = tree_state(root)

    # A real backup, stuck on storage that never answers, holds the lock.
    backup = start_itsup(root, "backup", "--target", "s3")
    try:
        wait_for_lock(root, backup, f"backup pid {backup.pid} ")
        res = itsup(root, "restore", "all", "--yes", expect=ExitCode.LOCKED)
        assert f"backup pid {backup.pid} on " in res.err
        assert tree_state(root) == before
        itsup(root, "restore", "all", "--to", tmp_path / "check")  # elsewhere: no lock
        assert (tmp_path / "check" / ACME).read_text().startswith('{"letsencrypt"')
    finally:
        stop(backup)

    # A real restore into the live root, stuck the same way, holds it against a backup.
    restore = start_itsup(root, "restore", "all", "--yes", "--target", "s3")
    try:
        wait_for_lock(root, restore, f"restore pid {restore.pid} ")
        res = itsup(root, "backup", expect=ExitCode.LOCKED)
        assert "another itsup backup or restore is running" in res.err
        assert f"restore pid {restore.pid} on " in res.err
        res = itsup(root, "restore", "proxy", "--yes", expect=ExitCode.LOCKED)
        assert f"restore pid {restore.pid} on " in res.err
        itsup(root, "restore", "proxy", "--to", tmp_path / "check2")
    finally:
        stop(restore)
    assert tree_state(root) == before
    assert len(generations(root)) == 1

    # Once both are gone, the live root restores.
    itsup(root, "restore", "all", "--yes")
    assert (root / ACME).read_text().startswith('{"letsencrypt"')


# -- the old flag --------------------------------------------------------------------------


def test_allow_external_links_is_a_hidden_no_op(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    (root / LOCALTIME).symlink_to(ZONE)
    itsup(root, "backup")
    help_text = itsup(root, "restore", "--help").out
    assert "--refuse-external-links" in help_text
    assert "--allow-external-links" not in help_text
    (root / LOCALTIME).unlink()
    res = itsup(root, "restore", "all", "--yes", "--allow-external-links")
    assert os.readlink(root / LOCALTIME) == ZONE
    assert f"{NOTE}{LOCALTIME} -> {ZONE}" in res.err
    res = run_itsup(
        "restore", "all", "--allow-external-links", "--refuse-external-links", root=root
    )
    assert res.code == ExitCode.USAGE, res.err
