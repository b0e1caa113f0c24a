"""Running out of space, on a real (small) filesystem: a tmpfs mounted for the test.

A restore into a destination without room fails with one line naming the
destination and ENOSPC, leaves the previous data byte for byte and no staging
folders; a backup whose local target fills up mid-archive fails cleanly,
leaves nothing that looks complete, and the next run after space is freed
succeeds. (test_failures.py simulates a full target with a file size limit;
here the kernel really runs out of blocks.)

These tests need root (mount); without it they fail, never skip.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import MiB, generations, itsup, leftovers, setup_host, tree_state
from reliability import record

from itsup.errors import ExitCode

pytestmark = pytest.mark.faults

Mount = Callable[[Path, int], Path]


@pytest.fixture
def small_fs() -> Iterator[Mount]:
    """Mount a tmpfs of `size` bytes on a folder; unmounted at teardown, even on failure."""
    mounted: list[Path] = []

    def mount(where: Path, size: int) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        cmd = ["mount", "-t", "tmpfs", "-o", f"size={size // 1024}k,mode=0755", "tmpfs", str(where)]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            pytest.fail("these tests mount a small tmpfs, but there is no `mount` command")
        if res.returncode != 0:
            pytest.fail(
                f"cannot mount a {size // 1024} KiB tmpfs on {where}: {res.stderr.strip()} "
                "(these tests need root, or CAP_SYS_ADMIN, to mount a small filesystem)"
            )
        mounted.append(where)
        return where

    try:
        yield mount
    finally:
        for where in reversed(mounted):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(where)], capture_output=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def one_error_line(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("itsup: error:")]
    assert len(errors) == 1, err
    others = [line for line in err.splitlines() if not line.startswith("itsup: ")]
    assert not others, f"unexpected output:\n{err}"
    return errors[0]


@pytest.mark.parametrize("scope", [["all"], ["app"]], ids=["all", "project"])
def test_restore_into_a_full_filesystem_keeps_the_previous_data(
    tmp_path: Path, small_fs: Mount, scope: list[str]
) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    itsup(root, "backup")  # the previous version: about 0.4 MiB
    big = root / "upstream/app/volumes/data/big.bin"
    big.write_bytes(os.urandom(3 * MiB // 2))
    itsup(root, "backup")  # the newer one does not fit
    newer, older = (g["name"] for g in generations(root))

    dest = small_fs(tmp_path / "small", 1 * MiB)
    itsup(root, "restore", "all", "--from", older, "--to", dest)
    (dest / "proxy/traefik/acme.json").write_text('{"edited": "after the restore"}\n')
    before = tree_state(dest)
    assert free_bytes(dest) < big.stat().st_size, "the test's premise: the new data cannot fit"

    res = itsup(root, "restore", *scope, "--to", dest, "--yes", expect=ExitCode.FAILURE)
    line = one_error_line(res.err)
    assert str(dest) in line and "no space" in line.lower() and "ENOSPC" in line, line
    assert tree_state(dest) == before, "the previous data changed"
    assert leftovers(dest) == [], "the failed restore left its staging folder"
    assert sorted(p.name for p in dest.iterdir()) == ["proxy", "upstream"]
    record(
        "disk",
        f"restore {scope[0] if scope == ['all'] else 'PROJECT'} into a full filesystem",
        "failed cleanly (ENOSPC named), previous data byte-identical, no leftovers",
    )
    _ = newer


def test_many_small_files_into_a_full_filesystem(tmp_path: Path, small_fs: Mount) -> None:
    """Enough files for the restore's writer process: the ENOSPC it meets is reported
    the same way (one line, the destination named), and nothing is left behind."""
    from itsup.actions.restore import WRITER_PROCESS_FROM

    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    mail = root / "upstream/app/volumes/mail"
    mail.mkdir(parents=True)
    for i in range(WRITER_PROCESS_FROM + 1000):
        (mail / f"m{i:05d}").write_bytes(os.urandom(1500))
    itsup(root, "backup")

    dest = small_fs(tmp_path / "small", 2 * MiB)  # room for a few hundred of them
    res = itsup(root, "restore", "all", "--to", dest, "--yes", expect=ExitCode.FAILURE)
    line = one_error_line(res.err)
    assert str(dest) in line and "no space" in line.lower() and "ENOSPC" in line, line
    assert leftovers(dest) == [] and list(dest.iterdir()) == []
    record(
        "disk",
        "restore of many small files (writer process) into a full filesystem",
        "failed cleanly (ENOSPC named), nothing left",
    )


def test_full_local_target_mid_archive_then_space_freed(tmp_path: Path, small_fs: Mount) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    (root / "upstream/app/volumes/data/big.bin").write_bytes(os.urandom(2 * MiB))
    small_fs(root / "backups", 6 * MiB)
    itsup(root, "backup")
    [first] = generations(root)
    archive = store.read(f"{first['name']}.tar.gz")
    # Leave room for half an archive: the next run fills the disk in the middle of it.
    filler = root / "backups/filler.bin"
    filler.write_bytes(b"\xff" * max(0, free_bytes(root / "backups") - len(archive) // 2))
    free_before = free_bytes(root / "backups")
    assert free_before < len(archive), "the test's premise: the archive cannot fit"

    res = itsup(root, "backup", expect=ExitCode.STORAGE)
    line = one_error_line(res.err)
    assert "No space left on device" in line and ".tar.gz" in line, line
    assert [g["name"] for g in generations(root)] == [first["name"]], "a failed run is listed"
    assert not [n for n in store.names() if ".partial-" in n], store.names()
    assert free_bytes(root / "backups") == free_before, "the partial archive still takes space"

    filler.unlink()  # the operator frees space
    itsup(root, "backup")
    rows = generations(root)
    assert [g["status"] for g in rows] == ["complete", "complete"]
    out = tmp_path / "check"
    itsup(root, "restore", "all", "--to", out)
    assert tree_state(out) == tree_state(root)
    record(
        "disk",
        "local backup target full mid-archive",
        "failed cleanly (exit 6), nothing offered, next run after freeing space ok",
    )
