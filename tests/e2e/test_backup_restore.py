"""End to end: `itsup backup` then `itsup restore`, as an operator runs them.

Every test drives the real command in a subprocess against the embedded local
target (`<root>/backups/itsup/`) and, where the target matters, the real S3
server the suite starts on loopback. A restored tree is compared with the
original field by field: type, content (SHA-256), mode, owner, mtime to the
nanosecond and symlink target.

The helpers (`Store`, `setup_host`, `tree_state`, ...) live in helpers.py,
shared with test_plain_tools.py and test_failures.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pty
import select
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    ACME,
    NAME_RE,
    GiB,
    HostFactory,
    MiB,
    add_awkward_entries,
    archive_members,
    generations,
    itsup,
    leftovers,
    pin_times,
    read_index,
    read_manifest,
    setup_host,
    tree_state,
)

from itsup.errors import ExitCode

# -- round trips -----------------------------------------------------------------------


def test_round_trip_into_empty_folder(new_host: HostFactory, tmp_path: Path) -> None:
    store = new_host()
    root = store.root
    add_awkward_entries(root)
    pin_times(root)
    before = tree_state(root)

    itsup(root, "backup")
    assert tree_state(root) == before, "a backup must not change the host tree"
    [gen] = generations(root)
    assert NAME_RE.match(gen["name"]) and gen["status"] == "complete"
    members = archive_members(store, f"{gen['name']}.tar.gz")
    assert "upstream/app/volumes/data/db.bin" in members  # include_volumes: true

    out = tmp_path / "out"
    itsup(root, "restore", "all", "--to", out)
    assert sorted(os.listdir(out)) == ["proxy", "upstream"]
    assert tree_state(out) == before
    assert stat.S_IMODE(os.stat(out / ACME).st_mode) == 0o600


def test_restore_all_repairs_a_damaged_live_root(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    add_awkward_entries(root)
    pin_times(root)
    before = tree_state(root)
    itsup(root, "backup")

    # The disaster: deletions, overwrites, changed modes, a symlink turned into a file,
    # a file turned into a folder, an empty folder gone.
    (root / ACME).unlink()
    (root / "proxy/traefik/traefik.yml").write_text("broken: [\n")
    (root / "upstream/app/run.sh").chmod(0o600)
    (root / "upstream/app/private").chmod(0o755)
    (root / "proxy/traefik/current.yml").unlink()
    (root / "proxy/traefik/current.yml").write_text("not a link\n")
    (root / "upstream/app/one-block").unlink()
    (root / "upstream/app/one-block").mkdir()
    (root / "upstream/app/empty").rmdir()
    shutil.rmtree(root / "upstream/app/deep")
    os.utime(root / "upstream/blog/docker-compose.yml", ns=(5, 5))
    # Something made after the backup that the backup cannot know about stays.
    (root / "proxy/traefik/added-later.yml").write_text("new\n")

    itsup(root, "restore", "all", "--yes")
    after = tree_state(root)
    added = after.pop("proxy/traefik/added-later.yml")
    assert added[0] == "file"
    assert after == before
    assert leftovers(root) == []


@pytest.mark.parametrize("target", ["all", "app"])
def test_restore_keeps_live_volumes(new_host: HostFactory, target: str) -> None:
    store = new_host(include_volumes=False)
    root = store.root
    itsup(root, "backup")
    [gen] = generations(root)
    members = archive_members(store, f"{gen['name']}.tar.gz")
    assert "upstream/app/docker-compose.yml" in members
    assert not [m for m in members if "/volumes" in m], "volumes were backed up"
    assert read_manifest(store, gen["name"])["include_volumes"] is False

    # The databases kept running after the backup; a restore must not touch them.
    volume = root / "upstream/app/volumes/data/db.bin"
    volume.write_bytes(b"newer data written after the backup")
    (root / "upstream/app/volumes/data/new-table.bin").write_bytes(b"t")
    volumes_before = tree_state(root, ("upstream/app/volumes", "upstream/blog/volumes"))
    (root / "upstream/app/docker-compose.yml").write_text("damaged\n")

    itsup(root, "restore", target, "--yes")
    assert (root / "upstream/app/docker-compose.yml").read_text().startswith("services:")
    assert tree_state(root, ("upstream/app/volumes", "upstream/blog/volumes")) == volumes_before


@pytest.mark.slow
def test_sparse_file_over_8_gib_round_trips(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    big = root / "upstream/app/volumes/data/disk.img"
    size = 8 * GiB + 4321  # past the 8 GiB ustar size limit: needs a pax size record
    with open(big, "wb") as fh:
        fh.write(b"head" * 1024)
        fh.seek(3 * GiB + 12345)
        fh.write(bytes(range(256)) * 4096)
        fh.seek(size - 100)
        fh.write(b"tail" * 25)
    assert os.stat(big).st_size == size
    assert os.stat(big).st_blocks * 512 < 16 * MiB, "the test file should be sparse"

    itsup(root, "backup", timeout=900)
    [gen] = generations(root)
    assert gen["archive_bytes"] < 64 * MiB
    recorded = read_index(store, gen["name"])["upstream/app/volumes/data/disk.img"]

    out = tmp_path / "out"
    itsup(root, "restore", "all", "--to", out, timeout=900)
    copy = out / "upstream/app/volumes/data/disk.img"
    st = os.stat(copy)
    assert st.st_size == size
    assert st.st_blocks * 512 < 64 * MiB, "the restored copy should stay sparse"
    assert st.st_mtime_ns == os.stat(big).st_mtime_ns

    # One pass: the copy equals the original chunk by chunk, and its SHA-256 is the one
    # the backup recorded while reading the original.
    restored = hashlib.sha256()
    offset = 0
    with open(big, "rb", buffering=0) as a, open(copy, "rb", buffering=0) as b:
        while chunk := a.read(8 * MiB):
            same = b.read(8 * MiB) == chunk
            assert same, f"restored copy differs from the original in the 8 MiB at {offset}"
            restored.update(chunk)
            offset += len(chunk)
        assert b.read(1) == b""
    assert offset == size
    assert restored.hexdigest() == recorded["sha256"]


# -- partial restores ------------------------------------------------------------------


def test_restore_single_file_into_live_root(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    acme = root / ACME
    acme.write_text('{"letsencrypt": {"Certificates": [{"domain": "example.com"}]}}\n')
    acme.chmod(0o600)
    good = tree_state(root, (ACME,))
    itsup(root, "backup")
    # Later live changes elsewhere must survive a single-file restore.
    (root / "proxy/traefik/traefik.yml").write_text("changed after the backup\n")

    acme.unlink()
    itsup(root, "restore", "--path", ACME, "--yes")
    assert tree_state(root, (ACME,)) == good
    assert stat.S_IMODE(acme.stat().st_mode) == 0o600

    acme.write_text("{garbage")
    acme.chmod(0o644)
    itsup(root, "restore", "--path", ACME, "--yes")
    assert tree_state(root, (ACME,)) == good
    assert (root / "proxy/traefik/traefik.yml").read_text() == "changed after the backup\n"
    assert leftovers(root) == []


def test_restore_path_to_another_folder(new_host: HostFactory, tmp_path: Path) -> None:
    store = new_host()
    root = store.root
    itsup(root, "backup")

    out = tmp_path / "scratch"
    itsup(root, "restore", "--path", ACME, "--to", out)
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir())
    assert files == [ACME]
    assert (out / ACME).read_bytes() == (root / ACME).read_bytes()
    assert tree_state(out, (ACME,)) == tree_state(root, (ACME,))

    # A subtree by path, given as an absolute path inside the host root.
    out2 = tmp_path / "scratch2"
    itsup(root, "restore", "--path", root / "proxy/traefik", "--to", out2)
    assert tree_state(out2, ("proxy/traefik",)) == tree_state(root, ("proxy/traefik",))
    assert not (out2 / "proxy/docker-compose.yml").exists()
    assert not (out2 / "upstream").exists()


def test_restore_project_and_proxy(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    before = tree_state(root)
    itsup(root, "backup")
    for rel in (
        "upstream/app/docker-compose.yml",
        "upstream/blog/docker-compose.yml",
        "proxy/docker-compose.yml",
    ):
        (root / rel).write_text("damaged\n")
    (root / ACME).unlink()

    itsup(root, "restore", "app", "--yes")
    assert tree_state(root, ("upstream/app",)) == {
        k: v for k, v in before.items() if k.startswith("upstream/app")
    }
    assert (root / "upstream/blog/docker-compose.yml").read_text() == "damaged\n"
    assert (root / "proxy/docker-compose.yml").read_text() == "damaged\n"
    assert not (root / ACME).exists()

    itsup(root, "restore", "proxy", "--yes")
    assert tree_state(root, ("proxy",)) == {
        k: v for k, v in before.items() if k.startswith("proxy")
    }
    assert (root / "upstream/blog/docker-compose.yml").read_text() == "damaged\n"


def test_restore_in_place_leaves_unchanged_files_alone(new_host: HostFactory) -> None:
    """Files already as backed up are not rewritten (same inode afterwards); one whose
    content changed behind an unchanged size, mode and mtime is restored all the same."""
    store = new_host()
    root = store.root
    add_awkward_entries(root)
    pin_times(root)
    before = tree_state(root)
    itsup(root, "backup")

    untouched = root / "proxy/traefik/traefik.yml"
    inode = os.lstat(untouched).st_ino
    # Rot behind the metadata's back: same length, mode and mtime, other bytes.
    rotten = root / "upstream/blog/docker-compose.yml"
    st = os.lstat(rotten)
    data = rotten.read_bytes()
    rotten.write_bytes(bytes([data[0] ^ 0x20]) + data[1:])
    os.utime(rotten, ns=(st.st_atime_ns, st.st_mtime_ns))
    (root / ACME).unlink()

    res = itsup(root, "restore", "all", "--yes")
    assert tree_state(root) == before
    assert os.lstat(untouched).st_ino == inode, "an unchanged file was rewritten"
    assert os.lstat(rotten).st_ino != st.st_ino  # replaced by the backed-up copy
    assert leftovers(root) == []
    assert "Traceback" not in res.err


def test_restore_in_place_replaces_a_folder_turned_symlink_whole(
    new_host: HostFactory, tmp_path: Path
) -> None:
    """A project folder replaced by a symlink to an identical copy: its files look
    unchanged through the link, yet the restored folder must hold every one of them."""
    store = new_host()
    root = store.root
    pin_times(root)
    before = tree_state(root)
    itsup(root, "backup")

    elsewhere = tmp_path / "blog-copy"
    shutil.copytree(root / "upstream/blog", elsewhere, symlinks=True)
    for path in (elsewhere, *elsewhere.rglob("*")):  # same metadata: only the link differs
        src = root / "upstream/blog" / path.relative_to(elsewhere)
        st = os.lstat(src)
        os.chmod(path, stat.S_IMODE(st.st_mode)) if not path.is_symlink() else None
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    shutil.rmtree(root / "upstream/blog")
    (root / "upstream/blog").symlink_to(elsewhere)

    itsup(root, "restore", "all", "--yes")
    assert not (root / "upstream/blog").is_symlink()
    assert tree_state(root) == before
    assert leftovers(root) == []


def add_many_small_files(root: Path, count: int) -> None:
    """`count` small files in a few folders, with assorted modes, owners and mtimes:
    enough for the restore to write them from its writer process."""
    base = root / "upstream/app/volumes/mail"
    for i in range(count):
        folder = base / f"d{i // 400:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"m{i:05d}"
        path.write_bytes(os.urandom(i % 700) if i % 2 else b"line\n" * (i % 90))
        os.chmod(path, (0o644, 0o600, 0o444, 0o4755, 0o640)[i % 5])
        if os.geteuid() == 0:
            os.chown(path, 1000 + i % 3, 100 + i % 2)
        os.utime(path, ns=(0, 1_736_910_000_000_000_000 + i * 1_000_001))


def test_many_small_files_round_trip_through_the_writer_process(
    new_host: HostFactory, tmp_path: Path
) -> None:
    """From WRITER_PROCESS_FROM paths on, small files are written by a process of
    their own, and read by reader processes when backed up: contents, modes (setuid
    included), owners and mtimes all come back."""
    from itsup.actions.restore import WRITER_PROCESS_FROM
    from itsup.pipeline.archive import reader_processes

    store = new_host()
    root = store.root
    add_many_small_files(root, WRITER_PROCESS_FROM + 500)
    pin_times(root)
    before = tree_state(root)
    itsup(root, "backup")

    out = tmp_path / "out"
    itsup(root, "restore", "all", "--to", out)
    assert tree_state(out) == before
    log = (root / "logs" / "backup.log").read_text()
    assert "small files written by 1 writer process(es)" in log
    readers = reader_processes()  # two here; none on a single core
    assert f"(read by {readers} reader processes)" in log or not readers
    # In place, after damage to a few: the rest are left alone, the few repaired.
    mail = root / "upstream/app/volumes/mail/d01"
    for victim in sorted(mail.iterdir())[:3]:
        victim.unlink()
    itsup(root, "restore", "all", "--yes")
    assert tree_state(root) == before
    assert leftovers(root) == []
    last = (root / "logs" / "backup.log").read_text().splitlines()
    restored = [line for line in last if "restored everything" in line][-1]
    assert "left alone" in restored and "writer process" in restored


def test_dry_run_lists_changes_and_writes_nothing(new_host: HostFactory, tmp_path: Path) -> None:
    store = new_host()
    root = store.root
    itsup(root, "backup")
    (root / ACME).unlink()
    (root / "proxy/traefik/traefik.yml").write_text("changed\n")
    before = tree_state(root)

    res = itsup(root, "restore", "all", "--dry-run")
    lines = res.out.splitlines()
    assert f"+ {ACME}" in lines
    assert "~ proxy/traefik/traefik.yml" in lines
    assert "~ proxy/docker-compose.yml" not in lines  # unchanged paths are not listed
    assert "1 new, 1 to overwrite" in res.out
    assert tree_state(root) == before
    assert leftovers(root) == []

    fresh = tmp_path / "not-yet"
    res = itsup(root, "restore", "all", "--dry-run", "--to", fresh)
    assert f"+ {ACME}" in res.out.splitlines()
    assert not fresh.exists()


def test_overwrite_without_yes_refused_off_a_terminal(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    itsup(root, "backup")
    (root / ACME).write_text("{damaged")
    (root / "upstream/app/docker-compose.yml").unlink()
    before = tree_state(root)

    for args in (("all",), ("proxy",), ("--path", ACME)):
        res = itsup(root, "restore", *args, expect=ExitCode.USAGE, stdin="y\n")
        assert "--yes" in res.err
        assert tree_state(root) == before
    assert leftovers(root) == []


def _restore_on_a_terminal(root: Path, answer: bytes) -> tuple[int, str]:
    """Run `itsup restore all` with a terminal as stdin and stderr; answer its prompt."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "itsup", "--root", str(root), "restore", "all"],
        stdin=terminal,
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env=env,
        cwd=root,
    )
    os.close(terminal)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"Overwrite?" not in seen and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.5)[0]:
                try:
                    seen += os.read(controller, 4096)
                except OSError:  # the other side closed: the command ended
                    break
        os.write(controller, answer + b"\n")
        code = proc.wait(timeout=60)
        with contextlib.suppress(OSError):
            while select.select([controller], [], [], 0.2)[0]:
                chunk = os.read(controller, 4096)
                if not chunk:
                    break
                seen += chunk
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    return code, seen.decode(errors="replace")


def test_restore_asks_on_a_terminal(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    good = tree_state(root)
    itsup(root, "backup")
    (root / ACME).write_text("{damaged")
    damaged = tree_state(root)

    code, screen = _restore_on_a_terminal(root, b"n")
    assert "Overwrite?" in screen and "1 to overwrite" in screen
    assert code != 0
    assert tree_state(root) == damaged

    code, screen = _restore_on_a_terminal(root, b"y")
    assert code == 0, screen
    assert tree_state(root) == good


def test_restore_from_an_older_generation(new_host: HostFactory, tmp_path: Path) -> None:
    store = new_host()
    root = store.root
    (root / ACME).write_text('{"v": 1}\n')
    itsup(root, "backup")
    (root / ACME).write_text('{"v": 2}\n')
    itsup(root, "backup")
    newest, older = (g["name"] for g in generations(root))

    itsup(root, "restore", "--path", ACME, "--from", older, "--to", tmp_path / "old")
    assert (tmp_path / "old" / ACME).read_text() == '{"v": 1}\n'
    itsup(root, "restore", "--path", ACME, "--to", tmp_path / "default")
    assert (tmp_path / "default" / ACME).read_text() == '{"v": 2}\n'
    itsup(root, "restore", "--path", ACME, "--from", newest, "--to", tmp_path / "named")
    assert (tmp_path / "named" / ACME).read_text() == '{"v": 2}\n'

    res = itsup(
        root, "restore", "all", "--from", "backup-1999-01-01-000000", expect=ExitCode.FAILURE
    )
    assert "backup-1999-01-01-000000" in res.err


def test_unknown_project_is_a_usage_error(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    itsup(root, "backup")
    before = tree_state(root)
    res = itsup(root, "restore", "nosuchproject", "--yes", expect=ExitCode.USAGE)
    assert "nosuchproject" in res.err
    assert "app, blog" in res.err  # the hint names what the backup holds
    res = itsup(root, "restore", "--path", "proxy/nothing-here", "--yes", expect=ExitCode.USAGE)
    assert "proxy/nothing-here" in res.err
    assert tree_state(root) == before


# -- listing ---------------------------------------------------------------------------


def test_backup_list_newest_first(new_host: HostFactory) -> None:
    store = new_host()
    root = store.root
    res = itsup(root, "backup", "list")
    assert "no backups" in res.out
    assert generations(root) == []

    itsup(root, "backup")
    (root / "proxy/traefik/extra.conf.yaml").write_text("x: 1\n")
    itsup(root, "backup")  # within the same second: still a new, distinct generation

    rows = generations(root)
    assert len(rows) == 2
    newest, older = rows
    assert newest["name"] != older["name"]
    assert newest["name"] > older["name"] and newest["time"] > older["time"]
    for row in rows:
        assert NAME_RE.match(row["name"])
        assert row["status"] == "complete"
        assert row["archive_bytes"] > 0 and row["encrypted"] is False
    assert newest["files"] == older["files"] + 1

    names = store.names()
    for row in rows:
        for suffix in (".tar.gz", ".index.jsonl.gz", ".manifest.json"):
            assert row["name"] + suffix in names
    assert store.read("latest.tar.gz") == store.read(f"{newest['name']}.tar.gz")

    table = itsup(root, "backup", "list").out
    assert table.index(newest["name"]) < table.index(older["name"])
    assert table.count("complete") == 2


def test_local_target_keeps_backups_private(tmp_path: Path) -> None:
    # acme.json is 0600 on the host; its copy inside a backup must not be world-readable.
    store = setup_host(tmp_path / "host", "local", None, "")
    itsup(store.root, "backup")
    itsup(store.root, "backup")
    assert stat.S_IMODE(store.base.stat().st_mode) & 0o077 == 0
    names = store.names()
    assert "latest.tar.gz" in names and "latest.json" in names and len(names) == 8
    for name in names:
        mode = stat.S_IMODE((store.base / name).stat().st_mode)
        assert mode & 0o077 == 0, f"{name} is readable by others ({mode:o})"
