"""What goes wrong, end to end: damaged objects, unfinished and interrupted
backups, the lock, unreachable storage, files that cannot be read.

Each test checks what the operator sees (exit code, one clear message, no
traceback) and what is left behind (nothing restored over good data, nothing
that looks like a complete generation, nothing that blocks the next run).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import resource
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    ACME,
    ITSUP,
    LOCK_FILE,
    HostFactory,
    MiB,
    Store,
    generations,
    itsup,
    leftovers,
    lock_held,
    make_host,
    read_index,
    read_manifest,
    run_itsup,
    setup_host,
    start_itsup,
    tree_state,
    write_config,
)

from itsup.errors import ExitCode, LockedError
from itsup.lock import host_lock
from itsup.manifest import Entry
from itsup.pipeline.archive import Selection, write_archive

INTERRUPTED = int(ExitCode.INTERRUPTED)


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """256 MiB of incompressible data, made once and hard-linked into hosts that need it."""
    folder = tmp_path_factory.mktemp("bulk")
    files = []
    for i in range(4):
        path = folder / f"blob-{i}.bin"
        path.write_bytes(os.urandom(64 * MiB))
        files.append(path)
    return files


def add_bulk(root: Path, bulk: list[Path]) -> None:
    for path in bulk:
        os.link(path, root / "upstream/app/volumes/data" / path.name)


def start_backup(root: Path) -> subprocess.Popen[str]:
    return start_itsup(root, "backup")


def wait_until(
    check: Callable[[], bool], proc: subprocess.Popen[str], what: str, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            _, err = proc.communicate()
            pytest.fail(f"the backup ended (exit {proc.returncode}) before {what}:\n{err}")
        time.sleep(0.02)
    proc.kill()
    proc.communicate()
    pytest.fail(f"timed out waiting until {what}")


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


# -- damaged objects ----------------------------------------------------------------------


def flip(data: bytes, at: int) -> bytes:
    """Invert 16 bytes at `at`: bit rot."""
    damaged = bytearray(data)
    damaged[at : at + 16] = bytes(b ^ 0xFF for b in damaged[at : at + 16])
    return bytes(damaged)


def damage(store: Store, name: str, how: str) -> None:
    """Flip bytes in the middle of an object, or cut it in half, where it is stored."""
    if store.kind == "local":
        path = store.base / name  # edited in place, as a failing disk would
        size = path.stat().st_size
        if how == "truncate":
            os.truncate(path, size // 2)
            return
        with open(path, "r+b") as fh:
            fh.seek(size // 2)
            chunk = fh.read(16)
            fh.seek(size // 2)
            fh.write(flip(chunk, 0))
        return
    data = store.read(name)
    damaged = data[: len(data) // 2] if how == "truncate" else flip(data, len(data) // 2)
    store.write(name, damaged)  # a new body under the same key


def fixed_volumes(root: Path) -> None:
    """Same archive bytes on every run, so a flip lands in the same place each time."""
    for seed, project in enumerate(("app", "blog")):
        data = random.Random(seed).randbytes(200_000)
        (root / f"upstream/{project}/volumes/data/db.bin").write_bytes(data)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_damaged_archive_is_refused(new_host: HostFactory, how: str, tmp_path: Path) -> None:
    store = new_host()
    root = store.root
    fixed_volumes(root)
    itsup(root, "backup")
    [gen] = generations(root)
    damage(store, f"{gen['name']}.tar.gz", how)
    # A disaster happened since: the restore would have things to fix.
    (root / ACME).write_text("{lost}")
    (root / "upstream/app/docker-compose.yml").unlink()
    before = tree_state(root)

    for args in (("all", "--yes"), ("--path", ACME, "--yes"), ("app", "--yes")):
        res = itsup(root, "restore", *args, expect=ExitCode.DAMAGED)
        assert res.err.startswith("itsup: error:")
        assert "damaged" in res.err or "SHA-256" in res.err
        assert tree_state(root) == before, f"restore {args} changed the destination"
        assert leftovers(root) == []

    out = tmp_path / "elsewhere"
    itsup(root, "restore", "all", "--to", out, expect=ExitCode.DAMAGED)
    assert not out.exists() or not [p for p in out.rglob("*") if not p.is_dir()]


def test_bit_rot_anywhere_is_refused(tmp_path: Path) -> None:
    # Wherever the damage lands (gzip header, deflate data, a stored block of random
    # bytes, the CRC trailer) the answer is the same: exit 5, nothing written.
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    fixed_volumes(root)
    itsup(root, "backup")
    [gen] = generations(root)
    path = store.base / f"{gen['name']}.tar.gz"
    good = path.read_bytes()
    size = len(good)
    for at in (4, 200, size // 5, size // 3, size // 2, 4 * size // 5, size - 40, size - 8):
        path.unlink()  # not through the hard link `latest` shares
        path.write_bytes(flip(good, at))
        out = tmp_path / f"out-{at}"
        res = itsup(root, "restore", "all", "--to", out, expect=ExitCode.DAMAGED)
        assert res.err.startswith("itsup: error:"), f"damage at {at}"
        assert not out.exists() or not [p for p in out.rglob("*") if not p.is_dir()]


def test_generation_without_manifest_is_never_chosen(new_host: HostFactory, tmp_path: Path) -> None:
    store = new_host()
    root = store.root
    for version in (1, 2, 3):
        (root / ACME).write_text(f'{{"v": {version}}}\n')
        itsup(root, "backup")
    newest, middle, oldest = (g["name"] for g in generations(root))
    store.delete(f"{middle}.manifest.json")  # as if that run died before its commit marker
    store.write(f"{newest}.manifest.json", b"{not json")

    rows = {r["name"]: r for r in generations(root)}
    assert rows[oldest]["status"] == "complete"
    assert rows[middle]["status"] == "incomplete"
    assert rows[newest]["status"] == "damaged"
    table = itsup(root, "backup", "list").out
    assert "incomplete" in table and "damaged" in table

    itsup(root, "restore", "--path", ACME, "--to", tmp_path / "default")
    assert (tmp_path / "default" / ACME).read_text() == '{"v": 1}\n'

    for name in (middle, newest):
        res = run_itsup("restore", "all", "--from", name, "--to", tmp_path / "named", root=root)
        assert res.code in (ExitCode.FAILURE, ExitCode.DAMAGED), res.err
        assert name in res.err and "not complete" in res.err
        no_traceback(res.err)
        assert not (tmp_path / "named").exists()


# -- interrupted runs --------------------------------------------------------------------


def test_sigterm_mid_upload_leaves_nothing(
    s3_prefix: str, tmp_path: Path, s3_server: Any, bulk: list[Path]
) -> None:
    store = setup_host(tmp_path / "host", "s3", s3_server, s3_prefix)
    root = store.root
    add_bulk(root, bulk)

    proc = start_backup(root)
    wait_until(lambda: bool(store.multipart_uploads()), proc, "its multipart upload started")
    # While it runs, it holds the host's backup lock.
    with pytest.raises(LockedError), host_lock(root / ".itsup-backup.lock"):
        pass
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == INTERRUPTED, err
    assert "SIGTERM" in err
    no_traceback(err)

    assert store.multipart_uploads() == [], "the interrupted run left its upload behind"
    assert store.names() == [], "the interrupted run left objects behind"
    assert generations(root) == []

    itsup(root, "backup")
    [gen] = generations(root)
    assert gen["status"] == "complete" and gen["files"] >= len(bulk)


def test_sigkill_mid_upload_then_next_backup(new_host: HostFactory, bulk: list[Path]) -> None:
    store = new_host()
    root = store.root
    add_bulk(root, bulk)

    def started() -> bool:
        if store.kind == "s3":
            return bool(store.multipart_uploads())
        return any(".partial-" in n for n in store.names())

    proc = start_backup(root)
    wait_until(started, proc, "it started writing the archive")
    proc.kill()
    proc.communicate(timeout=30)
    assert started(), "the kill should leave an unfinished upload for the next run"
    assert generations(root) == []
    res = itsup(root, "restore", "all", "--to", root / "out", expect=ExitCode.NO_BACKUP)
    assert "no complete backup generation in" in res.err

    itsup(root, "backup")  # the lock died with the killed run
    [gen] = generations(root)
    assert gen["status"] == "complete"
    assert not started(), "the next run should discard the unfinished upload"
    if store.kind == "local":
        assert not [n for n in store.names() if ".partial-" in n]


def test_target_full_mid_backup_fails_cleanly(tmp_path: Path, bulk: list[Path]) -> None:
    # A full backup disk, simulated with a file size limit: writes fail with EFBIG.
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    add_bulk(root, bulk)
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (32 * MiB, 32 * MiB))

    proc = subprocess.run(
        [*ITSUP, "--root", str(root), "backup"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # a compressor left waiting would hang here
        preexec_fn=small_disk,
    )
    assert proc.returncode == ExitCode.STORAGE, proc.stderr
    assert proc.stderr.startswith("itsup: error:") and "File too large" in proc.stderr
    no_traceback(proc.stderr)
    assert store.names() == [], "the failed run left a partial object behind"

    itsup(root, "backup")
    assert [g["status"] for g in generations(root)] == ["complete"]


# -- the lock ----------------------------------------------------------------------------


def test_lock_held_second_backup_exits_11(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    with lock_held(root):
        started = time.monotonic()
        res = itsup(root, "backup", expect=ExitCode.LOCKED)
        assert time.monotonic() - started < 15
        assert "another itsup backup or restore is running" in res.err
        assert store.names() == [], "a locked-out run must not write anything"
    itsup(root, "backup")
    assert len(generations(root)) == 1


def s3_host(root: Path, endpoint: str) -> None:
    make_host(root)
    (root / "secrets").mkdir(exist_ok=True)
    (root / "secrets/itsup.txt").write_text("KEY_ID=test-key-id\nSECRET=do-not-print-this-1234\n")
    write_config(
        root,
        "backup:\n  s3:\n    bucket: itsup-test\n    prefix: itsup/\n"
        f"    endpoint: {endpoint}\n"
        "    access_key_id: ${KEY_ID}\n    secret_access_key: ${SECRET}\n",
    )


def test_running_backup_holds_the_lock(tmp_path: Path, blackhole: int) -> None:
    root = tmp_path / "host"
    s3_host(root, f"http://127.0.0.1:{blackhole}")
    first = start_backup(root)
    lock = root / LOCK_FILE
    wait_until(
        lambda: lock.exists() and f"pid {first.pid} " in lock.read_text(),
        first,
        "it took the lock",
    )

    started = time.monotonic()
    res = itsup(root, "backup", expect=ExitCode.LOCKED)
    assert time.monotonic() - started < 15, "a locked-out run must fail fast"
    assert "another itsup backup or restore is running" in res.err
    assert f"backup pid {first.pid}" in res.err

    # The stuck run (waiting on storage that never answers) stops cleanly on SIGTERM.
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=30)
    assert first.returncode == INTERRUPTED, err
    no_traceback(err)


def test_unreachable_storage_exits_6(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tmp_path / "host"
    s3_host(root, f"http://127.0.0.1:{port}")
    # A restore into the host root and a backup exclude each other (the host lock):
    # this one restores elsewhere, so the three can run side by side.
    restore = ["restore", "all", "--yes", "--to", str(tmp_path / "out")]
    commands = [["backup"], ["backup", "list"], restore]
    # Each retries with backoff before giving up: run them side by side.
    procs = [start_itsup(root, *args) for args in commands]
    for args, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == ExitCode.STORAGE, f"{args}: {err}"
        assert err.startswith("itsup: error:") and f"127.0.0.1:{port}" in err
        no_traceback(err)
        leaked = "do-not-print-this-1234" in out + err
        assert not leaked, "the secret access key was printed"


# -- partial backups ---------------------------------------------------------------------


def run_without_dac_override(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run itsup so that file permissions bind it (root normally reads anything)."""
    prefix = [] if os.geteuid() else ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    return subprocess.run(
        [*prefix, *ITSUP, "--root", str(root), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_unreadable_paths_make_a_partial_backup(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    locked = root / "upstream/app/volumes/data/locked.bin"
    locked.write_bytes(b"secret data")
    locked.chmod(0)
    private = root / "proxy/private"
    private.mkdir()
    (private / "inside.txt").write_text("x\n")
    private.chmod(0)
    latin1 = os.path.join(os.fsencode(root / "upstream/app"), b"caf\xe9.db")  # not UTF-8
    with open(latin1, "wb") as fh:
        fh.write(b"data")
    os.chmod(latin1, 0)
    latin1_rel = "upstream/app/" + os.fsdecode(b"caf\xe9.db")

    res = run_without_dac_override(root, "backup")
    assert res.returncode == ExitCode.PARTIAL, res.stderr
    no_traceback(res.stderr)
    assert "Logging error" not in res.stderr
    assert "PARTIAL" in res.stderr
    assert "upstream/app/volumes/data/locked.bin" in res.stderr
    assert "proxy/private" in res.stderr
    log = (root / "logs/backup.log").read_text(errors="strict")
    assert "partial: upstream/app/volumes/data/locked.bin" in log
    assert "partial: upstream/app/caf" in log  # that line is not lost either

    [gen] = generations(root)
    assert gen["status"] == "partial"
    manifest = read_manifest(store, gen["name"])
    assert manifest["partial"] is True
    problems = {p["path"]: p["problem"] for p in manifest["problems"]}
    assert "upstream/app/volumes/data/locked.bin" in problems
    assert "proxy/private" in problems
    assert latin1_rel in problems
    assert "Permission denied" in problems["upstream/app/volumes/data/locked.bin"]

    # A partial generation is complete as a generation: it restores what it holds.
    out = tmp_path / "out"
    itsup(root, "restore", "all", "--to", out)
    assert (out / ACME).read_bytes() == (root / ACME).read_bytes()
    assert not (out / "upstream/app/volumes/data/locked.bin").exists()
    assert (out / "upstream/app/volumes/data/db.bin").exists()


def test_special_files_are_noted_not_partial(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    os.mkfifo(root / "proxy/traefik/events.fifo")
    sock = socket.socket(socket.AF_UNIX)
    with contextlib.chdir(root / "upstream/app"):  # socket paths are limited to 107 bytes
        sock.bind("app.sock")
    try:
        itsup(root, "backup", timeout=60)  # a FIFO must not block the run
    finally:
        sock.close()
    [gen] = generations(root)
    assert gen["status"] == "complete"
    manifest = read_manifest(store, gen["name"])
    assert manifest["partial"] is False
    notes = {p["path"]: p["problem"] for p in manifest["problems"]}
    assert "FIFO" in notes["proxy/traefik/events.fifo"]
    assert "socket" in notes["upstream/app/app.sock"]
    index = read_index(store, gen["name"])
    assert "proxy/traefik/events.fifo" not in index and "upstream/app/app.sock" not in index

    out = tmp_path / "out"
    itsup(root, "restore", "all", "--to", out)
    assert (out / ACME).exists() and not (out / "proxy/traefik/events.fifo").exists()


def test_symlinks_out_of_the_tree_are_kept_and_restored_as_links(tmp_path: Path) -> None:
    # Volumes hold absolute links (localtime -> /usr/share/zoneinfo/...): they are
    # part of the state and are stored. A restore creates them as links (never
    # followed) and names them; --refuse-external-links refuses them instead.
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    (root / "upstream/app/localtime").symlink_to("/etc/localtime")
    (root / "upstream/app/escape").symlink_to("../../../outside")
    (root / "upstream/app/inside").symlink_to("../blog/docker-compose.yml")

    itsup(root, "backup")  # not partial: nothing was lost
    [gen] = generations(root)
    assert gen["status"] == "complete"

    out = tmp_path / "out"
    refused = itsup(
        root, "restore", "all", "--to", out, "--refuse-external-links", expect=ExitCode.DAMAGED
    )
    assert "upstream/app/" in refused.err and "--refuse-external-links" in refused.err
    assert not out.exists() or not any(out.iterdir())

    restored = itsup(root, "restore", "all", "--to", out)
    assert "upstream/app/localtime -> /etc/localtime" in restored.err
    assert "upstream/app/escape -> ../../../outside" in restored.err
    assert "upstream/app/inside" not in restored.err  # it stays inside: nothing to say
    assert os.readlink(out / "upstream/app/inside") == "../blog/docker-compose.yml"
    assert os.readlink(out / "upstream/app/localtime") == "/etc/localtime"
    assert os.readlink(out / "upstream/app/escape") == "../../../outside"
    assert not (tmp_path / "outside").exists()  # created as a link, never written through


# -- the archive layer, with files that change under it ---------------------------------


def _archive(root: Path, on_bytes: Callable[[int], None]) -> tuple[Any, list[Entry], bytes]:
    sink = io.BytesIO()
    entries: list[Entry] = []
    stats = write_archive(root, Selection(("proxy",)), sink, entries.append, on_bytes)
    return stats, entries, sink.getvalue()


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return {
            m.name: (tf.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
            for m in tf.getmembers()
        }


@pytest.mark.parametrize("change", ["shrinks", "grows"])
def test_file_changing_while_read_is_recorded(tmp_path: Path, change: str) -> None:
    root = tmp_path / "root"
    (root / "proxy").mkdir(parents=True)
    original = os.urandom(3 * MiB)
    victim = root / "proxy/a-volume.img"
    victim.write_bytes(original)
    (root / "proxy/z-after.txt").write_text("the member after it\n")
    calls = 0

    def on_bytes(n: int) -> None:  # called after each chunk read from a file
        nonlocal calls
        calls += 1
        if calls == 1:
            if change == "shrinks":
                os.truncate(victim, MiB + 100)
            else:
                with open(victim, "ab") as fh:
                    fh.write(b"appended while being read")

    stats, entries, data = _archive(root, on_bytes)
    problems = {p.path: p.problem for p in stats.problems}
    assert "changed while being read" in problems["proxy/a-volume.img"]
    [entry] = [e for e in entries if e.path == "proxy/a-volume.img"]
    assert entry.changed is True and entry.size == len(original)

    # The stream stays a valid tar: the header's size holds, later members are intact.
    members = _members(data)
    stored = members["proxy/a-volume.img"]
    assert len(stored) == len(original)
    if change == "shrinks":
        assert stored == original[: MiB + 100] + bytes(len(original) - MiB - 100)
    else:
        assert stored == original
    assert entry.sha256 == hashlib.sha256(stored).hexdigest()
    assert members["proxy/z-after.txt"] == b"the member after it\n"


def test_file_vanishing_before_read_is_recorded(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "proxy").mkdir(parents=True)
    (root / "proxy/a.bin").write_bytes(os.urandom(2 * MiB))
    (root / "proxy/b-goes-away.bin").write_bytes(b"b")
    (root / "proxy/c.txt").write_text("c\n")

    def on_bytes(n: int) -> None:
        (root / "proxy/b-goes-away.bin").unlink(missing_ok=True)

    stats, entries, data = _archive(root, on_bytes)
    problems = {p.path: p.problem for p in stats.problems}
    assert "vanished" in problems["proxy/b-goes-away.bin"]
    members = _members(data)
    assert "proxy/b-goes-away.bin" not in members
    assert members["proxy/c.txt"] == b"c\n"
    assert [e.path for e in entries] == ["proxy", "proxy/a.bin", "proxy/c.txt"]
