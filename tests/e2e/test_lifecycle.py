"""The life of a generation (itsup/lifecycle.py): what killed runs leave behind
is removed by the next backup, deletes go manifest first, and the newest
complete generation and what `latest` copies are never deleted.

The leftover is made the real way: an `itsup backup` process is SIGKILLed
right after its archive was stored, before its index and manifest.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import make_host, run_itsup, s3_config, s3_secrets, write_config
from s3server import S3Server

from itsup.generation import scan
from itsup.lifecycle import GenerationStore, ProtectedGeneration
from itsup.storage.local import LocalTarget

KILL_AFTER_ARCHIVE = """
import os, signal, sys
from itsup.lifecycle import GenerationStore

def die(self, key, data):  # the archive is stored; the index and manifest never come
    os.kill(os.getpid(), signal.SIGKILL)

GenerationStore.put_index = die
from itsup.cli.main import main
sys.exit(main(["--root", sys.argv[1], "backup"]))
"""


def backup_killed_after_archive(root: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_ARCHIVE, str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


class Objects:
    """The objects under the prefix, as the operator would list them."""

    def __init__(self, root: Path, server: S3Server | None, prefix: str) -> None:
        self.root, self.server, self.prefix = root, server, prefix

    def names(self) -> list[str]:
        if self.server is None:
            folder = self.root / "backups" / self.prefix
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        resp = self.server.client().list_objects_v2(Bucket=self.server.bucket, Prefix=self.prefix)
        return sorted(o["Key"][len(self.prefix) :] for o in resp.get("Contents", []))


def host(tmp_path: Path, kind: str, server: S3Server, prefix: str, extra: str = "") -> Objects:
    root = make_host(tmp_path / "host")
    if kind == "local":
        write_config(root, "backup:\n  include_volumes: true\n" + extra)
        return Objects(root, None, "itsup/")
    s3_secrets(root, server)
    write_config(root, s3_config(server, prefix, "  include_volumes: true\n" + extra))
    return Objects(root, server, prefix)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_next_backup_removes_what_a_killed_run_left_and_nothing_else(
    tmp_path: Path, kind: str, s3_server: S3Server, s3_prefix: str
) -> None:
    store = host(tmp_path, kind, s3_server, s3_prefix, "  orphan_grace: 1s\n")
    root = store.root
    assert run_itsup("backup", root=root).code == 0
    good = store.names()
    time.sleep(1.1)  # the killed run gets the next second's name
    backup_killed_after_archive(root)
    orphan = sorted(set(store.names()) - set(good))
    assert len(orphan) == 1 and orphan[0].endswith(".tar.gz"), orphan
    listed = run_itsup("backup", "list", root=root)
    assert "incomplete" in listed.out

    time.sleep(1.1)  # older than the grace period
    res = run_itsup("backup", root=root)
    assert res.code == 0, res.err
    after = store.names()
    assert orphan[0] not in after, "the orphan archive is removed"
    assert set(good) - {"latest.tar.gz"} <= set(after), "earlier generations are untouched"
    assert len([n for n in after if n.endswith(".manifest.json")]) == 2
    log = (root / "logs" / "backup.log").read_text()
    assert "left without a manifest" in log and orphan[0].removesuffix(".tar.gz") in log


def test_a_young_leftover_is_kept(tmp_path: Path, s3_server: S3Server, s3_prefix: str) -> None:
    """Another host may still be between its archive and its manifest."""
    store = host(tmp_path, "local", s3_server, s3_prefix)  # default grace: 1 hour
    root = store.root
    assert run_itsup("backup", root=root).code == 0
    time.sleep(1.1)
    backup_killed_after_archive(root)
    before = set(store.names())
    time.sleep(1.1)
    assert run_itsup("backup", root=root).code == 0
    assert before - {"latest.tar.gz"} <= set(store.names())


class RecordingTarget(LocalTarget):
    """A real local target that remembers the order of its deletes."""

    def __init__(self, base: Path) -> None:
        super().__init__(base)
        self.deleted: list[str] = []

    def delete(self, key: str) -> None:
        self.deleted.append(key)
        super().delete(key)


def test_delete_generation_goes_manifest_first_and_spares_the_protected(tmp_path: Path) -> None:
    root = make_host(tmp_path / "host")
    write_config(root, "backup: {}\n")
    for _ in range(3):
        assert run_itsup("backup", root=root).code == 0
        time.sleep(1.1)
    target = RecordingTarget(root / "backups")
    store = GenerationStore(target, "itsup/")
    found = scan(target, "itsup/", load_manifests=False)
    newest, middle, oldest = found

    with pytest.raises(ProtectedGeneration):
        store.delete_generation(newest, found)
    assert target.deleted == []

    # `latest` copies the middle one (its update failed after a later backup, say)
    store.point_latest(middle.name, f"itsup/{middle.name}.tar.gz", ".tar.gz")
    target.deleted.clear()  # the aliases of other formats it tidied
    with pytest.raises(ProtectedGeneration):
        store.delete_generation(middle, found)
    assert target.deleted == []

    deleted = store.delete_generation(oldest, found)
    assert deleted[0].endswith(".manifest.json"), "the manifest goes first: it un-commits"
    assert deleted[1].endswith(".index.jsonl.gz") and deleted[2].endswith(".tar.gz")
    assert target.deleted == deleted
    remaining = [g.name for g in scan(target, "itsup/", load_manifests=False)]
    assert remaining == [newest.name, middle.name]
    res = run_itsup("restore", "all", "--to", tmp_path / "out", "--yes", root=root)
    assert res.code == 0, res.err
