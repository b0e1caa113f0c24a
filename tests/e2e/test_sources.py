"""The source tree misbehaves while `itsup backup` reads it.

Files grow, shrink, are rewritten, vanish and appear while the real command
runs; files turn into folders, FIFOs, sockets and symlinks between the walk
and the read; a folder turns into a file; a read fails with EIO; files and
folders cannot be read. Beside those: a socket and a FIFO in the tree,
folders nested 300 and 1000 deep, names of 255 bytes and paths of 3000,
paths beyond PATH_MAX, and hundreds of hard links to one file.

Every mutation is driven deterministically: the backup runs as the real
command in a child process whose archive writer stops at chosen points (before
a path is added, after the first chunk of a file is read) and waits on a FIFO
until the test has changed the tree and says "go". Each case then checks what
the operator gets: exit 0 or 3 with every damaged path listed (on stderr and
in the manifest), and a generation that restores to exactly what its file
index says, never a hang (every step has a timeout).
(tests/e2e/test_failures.py holds the in-process archive-layer versions of the
change/vanish cases and the unreadable-path and special-file basics.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import select
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    MiB,
    Store,
    generations,
    itsup,
    read_index,
    read_manifest,
    setup_host,
)
from reliability import record

from itsup.errors import ExitCode

pytestmark = pytest.mark.faults

DATA = "upstream/app/volumes/data"
TOPS = ("upstream", "proxy")

# Runs `python -m itsup ARGS` with the archive writer gated: ITSUP_TEST_GATES names a
# JSON file {"events": FIFO, "resume": FIFO, "gates": {path: [event, ...]}}. At each
# gate the child writes "EVENT<TAB>PATH" to `events` and waits for a line on `resume`.
# Events: "before" (TarWriter.add is about to store the path), "after-first-read" (the
# first chunk of the file was read), "read-error" (the second read fails with EIO).
GATED_ITSUP = r"""
import errno, json, os, runpy, sys, types
spec = json.load(open(os.environ["ITSUP_TEST_GATES"]))
gates = {path: set(events) for path, events in spec["gates"].items()}
from itsup.pipeline import archive
channel = []
def gate(event, path):
    if not channel:
        channel.append(open(spec["events"], "w", buffering=1))
        channel.append(open(spec["resume"], "r"))
    channel[0].write(f"{event}\t{path}\n")
    channel[1].readline()
current = {"path": None, "reads": 0}
real_add = archive.TarWriter.add
def add(self, rel, absolute, st, stats):
    if "before" in gates.get(rel, ()):
        gate("before", rel)
    current["path"], current["reads"] = rel, 0
    return real_add(self, rel, absolute, st, stats)
archive.TarWriter.add = add
class Os(types.ModuleType):
    def __getattr__(self, name):
        return getattr(os, name)
proxy = Os("os")
def read(fd, n):
    events = gates.get(current["path"], ())
    current["reads"] += 1
    if "read-error" in events and current["reads"] == 2:
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    data = os.read(fd, n)
    if "after-first-read" in events and current["reads"] == 1:
        gate("after-first-read", current["path"])
    return data
proxy.read = read
archive.os = proxy
sys.argv = ["itsup", *sys.argv[1:]]
runpy.run_module("itsup", run_name="__main__", alter_sys=True)
"""

# Root reads anything; dropping these capabilities lets file permissions bind it.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if not os.geteuid() else []

Mutation = Callable[[], None]


@dataclass
class Run:
    code: int
    out: str
    err: str
    fired: list[tuple[str, str]]


def gated_backup(
    root: Path, work: Path, gates: dict[tuple[str, str], Mutation], timeout: float = 90
) -> Run:
    """`itsup backup` in a child; at each (event, path) gate run the mutation, then resume."""
    events, resume = work / "events.fifo", work / "resume.fifo"
    os.mkfifo(events)
    os.mkfifo(resume)
    spec = work / "gates.json"
    by_path: dict[str, list[str]] = {}
    for event, path in gates:
        by_path.setdefault(path, []).append(event)
    spec.write_text(json.dumps({"events": str(events), "resume": str(resume), "gates": by_path}))
    # Both ends held read-write here: the child's opens never block, reads never see EOF.
    ev_fd = os.open(events, os.O_RDWR | os.O_NONBLOCK)
    resume_fd = os.open(resume, os.O_RDWR)
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    env["ITSUP_TEST_GATES"] = str(spec)
    out_path, err_path = work / "stdout", work / "stderr"
    fired: list[tuple[str, str]] = []
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(
            [*NO_DAC, sys.executable, "-c", GATED_ITSUP, "--root", str(root), "backup"],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + timeout
        pending = b""
        while proc.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"the backup did not finish in {timeout} s (gates fired: {fired})")
            ready, _, _ = select.select([ev_fd], [], [], 0.05)
            if not ready:
                continue
            with contextlib.suppress(BlockingIOError):
                pending += os.read(ev_fd, 65536)
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                event, path = os.fsdecode(line).split("\t", 1)
                fired.append((event, path))
                gates[(event, path)]()
                os.write(resume_fd, b"go\n")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        os.close(ev_fd)
        os.close(resume_fd)
    return Run(proc.returncode, out_path.read_text(), err_path.read_text(), fired)


def restore_to(root: Path, out: Path) -> None:
    res = itsup(root, "restore", "all", "--to", out, timeout=120)
    assert res.code == 0


def restored_entries(out: Path) -> dict[str, dict[str, Any]]:
    """The restored tree described as index entries."""
    found: dict[str, dict[str, Any]] = {}
    for top in TOPS:
        base = os.fsencode(out / top)
        if not os.path.lexists(base):
            continue
        stack = [(top.encode(), base)]
        while stack:
            rel, path = stack.pop()
            st = os.lstat(path)
            entry: dict[str, Any] = {
                "mode": stat.S_IMODE(st.st_mode),
                "mtime_ns": st.st_mtime_ns,
                "uid": st.st_uid,
                "gid": st.st_gid,
            }
            if stat.S_ISDIR(st.st_mode):
                entry["type"] = "dir"
                for name in os.listdir(path):
                    stack.append((rel + b"/" + name, path + b"/" + name))
            elif stat.S_ISLNK(st.st_mode):
                entry["type"] = "symlink"
                entry["link"] = os.fsdecode(os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                entry["type"] = "file"
                entry["size"] = st.st_size
                digest = hashlib.sha256()
                with open(path, "rb") as fh:
                    while chunk := fh.read(MiB):
                        digest.update(chunk)
                entry["sha256"] = digest.hexdigest()
            else:
                entry["type"] = f"special {stat.S_IFMT(st.st_mode):o}"
            found[os.fsdecode(rel)] = entry
    return found


def assert_restores_as_indexed(store: Store, generation: str, out: Path) -> dict[str, Any]:
    """Restore the generation; the tree must be exactly what its file index lists."""
    restore_to(store.root, out)
    index = read_index(store, generation)
    restored = restored_entries(out)
    assert sorted(restored) == sorted(index), (
        f"restored but not indexed: {sorted(set(restored) - set(index))[:5]}; "
        f"indexed but not restored: {sorted(set(index) - set(restored))[:5]}"
    )
    for path, entry in index.items():
        got = restored[path]
        keys = ["type", "mode", "uid", "gid"]
        keys += {"file": ["size", "sha256", "mtime_ns"], "symlink": ["link"]}.get(entry["type"], [])
        if entry["type"] == "dir":
            keys.append("mtime_ns")
        want = {k: entry.get(k) for k in keys}
        assert {k: got.get(k) for k in keys} == want, path
    return index


def problems_of(store: Store, generation: str) -> dict[str, str]:
    """The manifest's problems by path; each path is listed once."""
    listed = read_manifest(store, generation)["problems"]
    problems = {p["path"]: p["problem"] for p in listed}
    assert len(problems) == len(listed), f"a path is listed twice: {listed}"
    return problems


def random_file(path: Path, size: int, seed: int) -> bytes:
    """`size` bytes of seeded noise, with a fixed mtime (so any rewrite shows)."""
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    ns = 1_600_000_000_000_000_000 + seed
    os.utime(path, ns=(ns, ns))
    return data


# -- the tree changes while the real command reads it ---------------------------------------


@pytest.fixture
def unix_socket() -> Iterator[list[socket.socket]]:
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def test_tree_changing_during_the_run(tmp_path: Path, unix_socket: list[socket.socket]) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    data = root / DATA
    size = 3 * MiB
    original = {
        name: random_file(data / name, size, seed)
        for seed, name in enumerate(
            (
                "a-grows.bin",
                "b-shrinks.bin",
                "c-rewritten.bin",
                "d-unlinked-open.bin",
                "j-read-error.bin",
            )
        )
    }
    for name in ("e-vanishes", "f-becomes-dir", "g-becomes-fifo", "h-becomes-socket"):
        (data / name).write_text(f"{name}\n")
    (data / "i-becomes-symlink").write_text("i\n")
    (data / "k-dir-becomes-file").mkdir()
    (data / "k-dir-becomes-file" / "inside.txt").write_text("k\n")
    locked = data / "l-unreadable.bin"
    locked.write_bytes(b"no one may read this")
    locked.chmod(0)
    private = data / "m-private"
    private.mkdir()
    (private / "inside.txt").write_text("m\n")
    private.chmod(0)
    os.mkfifo(data / "n-standing.fifo")  # special files that were there all along
    standing = socket.socket(socket.AF_UNIX)
    unix_socket.append(standing)
    with contextlib.chdir(data):
        standing.bind("o-standing.sock")
    new = random_file(tmp_path / "new-content", size, 99)

    def grows() -> None:
        with open(data / "a-grows.bin", "ab") as fh:
            fh.write(b"appended while being read" * 40000)
        # Appearing beside it: in folders already listed (not stored), and not yet (stored).
        (data / "0-appeared-early.txt").write_text("too late for this run\n")
        (root / "upstream/app/aaa-appeared.txt").write_text("too late\n")
        (root / "upstream/blog/appeared.txt").write_text("in time\n")
        (root / "proxy/appeared.txt").write_text("in time\n")

    def shrinks() -> None:
        os.truncate(data / "b-shrinks.bin", MiB + MiB // 2)

    def rewritten() -> None:
        with open(data / "c-rewritten.bin", "r+b") as fh:  # same size, other content
            fh.write(new)

    def unlinked_open() -> None:
        (data / "d-unlinked-open.bin").unlink()

    def vanishes() -> None:
        (data / "e-vanishes").unlink()

    def becomes_dir() -> None:
        (data / "f-becomes-dir").unlink()
        (data / "f-becomes-dir").mkdir()
        (data / "f-becomes-dir" / "inside.txt").write_text("f\n")

    def becomes_fifo() -> None:
        (data / "g-becomes-fifo").unlink()
        os.mkfifo(data / "g-becomes-fifo")  # no writer ever: a blocking open would hang

    def becomes_socket() -> None:
        (data / "h-becomes-socket").unlink()
        sock = socket.socket(socket.AF_UNIX)
        unix_socket.append(sock)
        with contextlib.chdir(data):
            sock.bind("h-becomes-socket")

    def becomes_symlink() -> None:
        (data / "i-becomes-symlink").unlink()
        (data / "i-becomes-symlink").symlink_to("/etc/passwd")

    def dir_becomes_file() -> None:
        shutil.rmtree(data / "k-dir-becomes-file")
        (data / "k-dir-becomes-file").write_text("now a file\n")

    gates: dict[tuple[str, str], Mutation] = {
        ("after-first-read", f"{DATA}/a-grows.bin"): grows,
        ("after-first-read", f"{DATA}/b-shrinks.bin"): shrinks,
        ("after-first-read", f"{DATA}/c-rewritten.bin"): rewritten,
        ("after-first-read", f"{DATA}/d-unlinked-open.bin"): unlinked_open,
        ("before", f"{DATA}/e-vanishes"): vanishes,
        ("before", f"{DATA}/f-becomes-dir"): becomes_dir,
        ("before", f"{DATA}/g-becomes-fifo"): becomes_fifo,
        ("before", f"{DATA}/h-becomes-socket"): becomes_socket,
        ("before", f"{DATA}/i-becomes-symlink"): becomes_symlink,
        ("read-error", f"{DATA}/j-read-error.bin"): lambda: None,  # never fires: fails inline
        ("before", f"{DATA}/k-dir-becomes-file"): dir_becomes_file,
    }
    started = time.monotonic()
    run = gated_backup(root, tmp_path, gates)
    assert run.code == ExitCode.PARTIAL, run.err
    assert "Traceback" not in run.err and "internal error" not in run.err
    assert sorted(run.fired) == sorted(k for k in gates if k[0] != "read-error"), run.fired
    assert time.monotonic() - started < 60

    [gen] = generations(root)
    assert gen["status"] == "partial"
    name = gen["name"]
    problems = problems_of(store, name)
    expected = {
        "a-grows.bin": "changed while being read",
        "b-shrinks.bin": "changed while being read",
        "c-rewritten.bin": "changed while being read",
        "e-vanishes": "vanished before it could be read",
        "f-becomes-dir": "changed into a non-regular file",
        "g-becomes-fifo": "changed into a non-regular file",
        "h-becomes-socket": "cannot open: No such device or address",
        "i-becomes-symlink": "cannot open: symlink appeared",
        "j-read-error.bin": "read error: Input/output error; rest stored as zeros",
        "k-dir-becomes-file": "cannot list folder: Not a directory",
        "l-unreadable.bin": "cannot open: Permission denied",
        "m-private": "cannot list folder: Permission denied",
        "n-standing.fifo": "FIFO skipped",
        "o-standing.sock": "socket skipped",
    }
    for short, fragment in expected.items():
        path = f"{DATA}/{short}"
        assert fragment in problems.get(path, ""), (path, problems.get(path))
        if "skipped" not in fragment:  # special files are notes, not damage
            assert f"  {path}: " in run.err, f"{path} not listed on stderr:\n{run.err}"
    assert f"{DATA}/d-unlinked-open.bin" not in problems  # read whole through its open fd
    damaged = [p for p in problems if "skipped" not in problems[p]]
    assert f"{len(damaged)} path(s) could" in run.err

    index = assert_restores_as_indexed(store, name, tmp_path / "out")
    out = tmp_path / "out" / DATA
    # What each file holds is what the stream could consistently say about it.
    assert (out / "a-grows.bin").read_bytes() == original["a-grows.bin"]
    kept = MiB + MiB // 2
    assert (out / "b-shrinks.bin").read_bytes() == original["b-shrinks.bin"][:kept] + bytes(
        size - kept
    )
    assert (out / "c-rewritten.bin").read_bytes() == original["c-rewritten.bin"][:MiB] + new[MiB:]
    assert (out / "d-unlinked-open.bin").read_bytes() == original["d-unlinked-open.bin"]
    assert (out / "j-read-error.bin").read_bytes() == original["j-read-error.bin"][:MiB] + bytes(
        size - MiB
    )
    for short in ("a-grows.bin", "b-shrinks.bin", "c-rewritten.bin", "j-read-error.bin"):
        assert index[f"{DATA}/{short}"]["changed"] is True
    assert not index[f"{DATA}/d-unlinked-open.bin"].get("changed")
    assert (out / "k-dir-becomes-file").is_dir() and not any((out / "k-dir-becomes-file").iterdir())
    for gone in ("e-vanishes", "f-becomes-dir", "g-becomes-fifo", "h-becomes-socket"):
        assert not os.path.lexists(out / gone)
    assert not os.path.lexists(out / "i-becomes-symlink")
    assert "upstream/blog/appeared.txt" in index and "proxy/appeared.txt" in index
    assert f"{DATA}/0-appeared-early.txt" not in index
    assert "upstream/app/aaa-appeared.txt" not in index

    stored = "partial (exit 3), path listed; restores exactly as indexed"
    for fault, outcome in {
        "file grows while being read": stored + "; cut at the size first seen",
        "file shrinks while being read": stored + "; padded with zeros",
        "file rewritten in place while being read": stored + "; marked changed",
        "file unlinked while being read": "stored whole through its open fd; restores exactly",
        "files appear while the tree is read": "stored if their folder was not yet listed",
        "file vanishes between walk and read": stored + "; not stored",
        "file replaced by a folder between walk and read": stored + "; not stored",
        "file replaced by a FIFO between walk and read": stored + "; no hang",
        "file replaced by a socket between walk and read": stored + "; not stored",
        "file replaced by a symlink between walk and read": stored + "; never followed",
        "folder replaced by a file between walk and listing": stored + "; folder kept empty",
        "read error (EIO) in the middle of a file": stored + "; rest stored as zeros",
        "unreadable file and folder (permissions bind root)": stored,
        "a FIFO and a socket in the tree": "noted in the manifest, not partial; no hang",
    }.items():
        record("source", fault, outcome)


# -- shapes of trees -------------------------------------------------------------------------


def make_deep(base: Path, levels: int, name: Callable[[int], str]) -> str:
    """Folders nested `levels` deep below `base` (made relative to each other, so no
    path is ever longer than one name), a file at the bottom; its path below `base`."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    parts = []
    try:
        for level in range(levels):
            part = name(level)
            os.mkdir(part, dir_fd=fd)
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            parts.append(part)
        leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o640, dir_fd=fd)
        os.write(leaf, b"at the bottom\n")
        os.close(leaf)
    finally:
        os.close(fd)
    return "/".join([*parts, "leaf.txt"])


def remove_deep(path: Path) -> None:
    """Remove a tree of any depth: shutil.rmtree recurses once per level, and paths below
    may be longer than PATH_MAX, so walk it with relative chdir steps."""
    if not os.path.lexists(path):
        return
    home = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(path)
        names: list[str] = []
        while True:
            sub = None
            for entry in os.scandir("."):
                if entry.is_dir(follow_symlinks=False):
                    sub = sub or entry.name
                else:
                    os.unlink(entry.name)
            if sub is not None:
                os.chdir(sub)
                names.append(sub)
            elif names:
                os.chdir("..")
                os.rmdir(names.pop())
            else:
                break
    finally:
        os.fchdir(home)
        os.close(home)
    os.rmdir(path)


@pytest.fixture
def deep_trees(tmp_path: Path) -> Iterator[None]:
    """Removes what the test nested too deep for pytest's own clean-up."""
    yield
    for path in (tmp_path / "host/upstream", tmp_path / "out/upstream", tmp_path / ("h" * 200)):
        remove_deep(path)


@pytest.mark.usefixtures("deep_trees")
def test_deep_trees_and_long_names_restore_byte_exact(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    app = root / "upstream/app"
    leaf300 = make_deep(app, 300, lambda i: f"level-{i:03d}")  # 300 levels, 3000-byte path
    leaf1000 = make_deep(root / "upstream/blog", 1000, lambda i: "d")  # beyond recursion limits
    long_names = app / "long-names"
    long_names.mkdir()
    ascii_name = "n" * 251 + ".txt"
    utf8_name = "é" * 127 + "x"  # 255 bytes of UTF-8
    latin1_name = b"\xe9" * 255  # 255 bytes, not UTF-8
    (long_names / ascii_name).write_bytes(os.urandom(5000))
    (long_names / utf8_name).mkdir()
    (long_names / utf8_name / ascii_name).symlink_to(f"../{ascii_name}")
    with open(os.path.join(os.fsencode(long_names), latin1_name), "wb") as fh:
        fh.write(b"latin-1 name\n")
    long_path = long_names
    for i in range(11):  # a 2800-byte path of 250-byte names
        long_path = long_path / (chr(ord("a") + i) * 250)
    long_path.mkdir(parents=True)
    (long_path / "end.bin").write_bytes(os.urandom(70_000))
    before = restored_entries(root)  # (iterative: tree_state recurses once per level)

    itsup(root, "backup", timeout=120)
    [gen] = generations(root)
    assert gen["status"] == "complete"
    index = assert_restores_as_indexed(store, gen["name"], tmp_path / "out")
    assert f"upstream/app/{leaf300}" in index and f"upstream/blog/{leaf1000}" in index
    assert restored_entries(tmp_path / "out") == before  # contents, modes, owners, mtimes
    record("source", "300 folders deep (3000-byte path)", "complete (exit 0); restores byte-exact")
    record(
        "source",
        "1000 folders deep (beyond Python's recursion limit)",
        "complete (exit 0); restores byte-exact",
    )
    record(
        "source",
        "255-byte names (ASCII, UTF-8, not UTF-8) and 2800-byte paths",
        "complete (exit 0); restores byte-exact",
    )


@pytest.mark.usefixtures("deep_trees")
def test_paths_beyond_path_max_are_listed(tmp_path: Path) -> None:
    # The source holds paths longer than PATH_MAX (4096 bytes) from /: they cannot be
    # opened by name; the run is partial and says where. The rest restores exactly
    # (into a destination with room for its longest path plus the staging folder).
    store = setup_host(tmp_path / ("h" * 200), "local", None, "")
    root = store.root
    leaf = make_deep(root / "upstream/app", 20, lambda i: f"{i:02d}" + "p" * 198)
    assert len(str(root / "upstream/app" / leaf)) > 4096

    res = itsup(root, "backup", expect=ExitCode.PARTIAL, timeout=120)
    problems = problems_of(store, generations(root)[0]["name"])
    [(too_long, problem)] = problems.items()
    assert problem == "cannot stat: File name too long"
    assert f"upstream/app/{leaf}".startswith(too_long + "/") or too_long == f"upstream/app/{leaf}"
    assert too_long in res.err
    index = assert_restores_as_indexed(store, generations(root)[0]["name"], tmp_path / "o")
    assert too_long not in index
    record(
        "source",
        "paths longer than PATH_MAX",
        "partial (exit 3), first path too long listed; the rest restores exactly",
    )


def test_many_hard_links_restore_as_separate_files(tmp_path: Path) -> None:
    store = setup_host(tmp_path / "host", "local", None, "")
    root = store.root
    shared = root / DATA / "shared.bin"
    content = os.urandom(64 * 1024)
    shared.write_bytes(content)
    links = root / DATA / "links"
    for folder in range(4):
        (links / str(folder)).mkdir(parents=True)
        for i in range(125):
            os.link(shared, links / str(folder) / f"link-{i:03d}.bin")
    assert shared.stat().st_nlink == 501
    before = restored_entries(root)

    started = time.monotonic()
    itsup(root, "backup", timeout=120)
    [gen] = generations(root)
    assert gen["status"] == "complete" and gen["files"] >= 501
    assert_restores_as_indexed(store, gen["name"], tmp_path / "out")
    assert restored_entries(tmp_path / "out") == before
    restored = tmp_path / "out" / DATA / "links/3/link-124.bin"
    assert restored.read_bytes() == content and restored.stat().st_nlink == 1
    assert time.monotonic() - started < 60
    record(
        "source",
        "500 hard links to one file",
        "complete (exit 0); restored byte-exact as separate files",
    )
