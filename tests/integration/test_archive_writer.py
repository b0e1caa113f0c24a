"""The archive writer on a real tree: what it streams, tarfile and GNU tar read back.

Small files take a path of their own (one read asking for one byte more than
the size, framed into a batch; lines handed to the index without an Entry),
large ones are copied in chunks and hashed on a thread: both must give the
same members, the same index and the same account of files that change
while being read, and the stream must stay a tar archive plain tools read.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import subprocess
import tarfile
import types
from pathlib import Path
from typing import Any

import pytest

from itsup.manifest import Entry, IndexWriter
from itsup.pipeline import archive
from itsup.pipeline.archive import BLOCK, CHUNK, SMALL, Selection, Stats, write_archive

NS = 1_000_000_000
NON_UTF8 = os.fsdecode(b"latin1-\xe9t\xe9.txt")
SIZES = [0, 1, 511, 512, 513, 4096, SMALL - 1, SMALL, SMALL + 1, 3 * CHUNK + 5]


def make_tree(root: Path) -> None:
    top = root / "proxy"
    (top / "sub" / "deeper").mkdir(parents=True)
    for i, size in enumerate(SIZES):
        (top / f"size-{size}").write_bytes(os.urandom(size) if i % 2 else b"t" * size)
    (top / "sub" / ("long-" + "n" * 120)).write_text("a long name\n")
    (top / "sub" / "données-文件.txt").write_text("non-ASCII\n")
    (top / "sub" / 'quote"back\\slash').write_text("needs JSON escapes\n")
    (top / "sub" / "deeper" / "leaf").write_text("leaf\n")
    os.symlink("../size-1", top / "sub" / "link")
    with open(os.path.join(os.fsencode(top / "sub"), os.fsencode(NON_UTF8)), "wb") as fh:
        fh.write(b"not UTF-8\n")
    for i, path in enumerate(sorted(top.rglob("*"))):
        os.utime(path, ns=(1_700_000_000_123_456_789 + i * NS,) * 2, follow_symlinks=False)


def run(root: Path, on_entry: Any = None, sink: Any = None, **kw: Any) -> tuple[Stats, bytes, Any]:
    sink = sink if sink is not None else io.BytesIO()
    index = IndexWriter()
    stats = write_archive(root, Selection(("proxy",)), sink, on_entry or index.add, **kw)
    return stats, sink.getvalue(), index


def members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return [
            (info, tf.extractfile(info).read() if info.isreg() else b"")  # type: ignore[union-attr]
            for info in tf
        ]


def test_stream_and_index_agree_with_the_tree(tmp_path: Path) -> None:
    make_tree(tmp_path)
    stats, data, index = run(tmp_path)
    lines = gzip.decompress(index.finish()).decode().splitlines()
    entries = [Entry.from_json(line) for line in lines]
    got = members(data)
    assert [info.name for info, _ in got] == [e.path for e in entries]
    assert not stats.problems and stats.files == len(SIZES) + 5 and stats.symlinks == 1
    assert len(data) % tarfile.RECORDSIZE == 0
    for (info, content), entry in zip(got, entries, strict=True):
        st = os.lstat(os.fsencode(tmp_path / entry.path))
        assert entry.mtime_ns == st.st_mtime_ns  # the exact time: the index's
        assert info.mtime == st.st_mtime_ns // NS  # whole seconds in the header
        assert "mtime" not in info.pax_headers
        assert (info.mode, entry.mode) == (stat_mode(st), stat_mode(st))
        if entry.type == "file":
            with open(os.fsencode(tmp_path / entry.path), "rb") as fh:
                assert content == fh.read()
            assert entry.sha256 == hashlib.sha256(content).hexdigest()
            assert info.size == entry.size == len(content)


def stat_mode(st: os.stat_result) -> int:
    return st.st_mode & 0o7777


def test_plain_names_take_one_header_block(tmp_path: Path) -> None:
    (tmp_path / "proxy").mkdir()
    (tmp_path / "proxy" / "a").write_bytes(b"x" * 700)
    os.utime(tmp_path / "proxy" / "a", ns=(1_700_000_000_999_999_999,) * 2)
    _, data, _ = run(tmp_path)
    # folder header, file header, 2 data blocks, end of archive: no pax header anywhere
    assert data[BLOCK : BLOCK + 100].rstrip(b"\0") == b"proxy/a"
    assert data[4 * BLOCK :] == bytes(len(data) - 4 * BLOCK)


def test_index_lines_equal_with_and_without_an_index_writer(tmp_path: Path) -> None:
    """`index.add` gets lines with each batch; any other callable gets Entry objects."""
    make_tree(tmp_path)
    _, fast, index = run(tmp_path)
    entries: list[Entry] = []
    _, slow, _ = run(tmp_path, entries.append)
    assert fast == slow
    lines = gzip.decompress(index.finish()).decode().splitlines()
    assert lines == [e.to_json() for e in entries]


def test_gnu_tar_extracts_the_stream(tmp_path: Path) -> None:
    make_tree(tmp_path / "src")
    _, data, _ = run(tmp_path / "src")
    (tmp_path / "a.tar").write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", tmp_path / "a.tar", "-C", out], check=True, timeout=60)
    for path in sorted((tmp_path / "src").rglob("*")):
        rel = path.relative_to(tmp_path / "src")
        st, copy = os.lstat(path), os.lstat(out / rel)
        assert copy.st_mtime_ns == st.st_mtime_ns // NS * NS  # whole seconds with plain tar
        if path.is_file() and not path.is_symlink():
            assert (out / rel).read_bytes() == path.read_bytes()


class _Os(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)


@pytest.mark.parametrize("size", [1, 700, SMALL])
@pytest.mark.parametrize("how", ["grew", "shrank", "read-error", "short-reads"])
def test_small_file_changing_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int, how: str
) -> None:
    """The one read of a small file tells growth (more than asked) and shrinking (less);
    a read error stores zeros; reads that come short but complete are no change."""
    (tmp_path / "proxy").mkdir()
    content = os.urandom(size)
    victim = tmp_path / "proxy" / "victim"
    victim.write_bytes(content)
    (tmp_path / "proxy" / "z-after").write_bytes(b"after\n")
    real_read = os.read
    proxy = _Os("os")
    victim_fd: list[int] = []
    reads: list[int] = []

    def read(fd: int, n: int) -> bytes:
        if not victim_fd or fd != victim_fd[0]:
            return real_read(fd, n)
        if how == "grew":
            return real_read(fd, n) + b"more"[: max(0, n - size)]
        reads.append(n)
        if how == "shrank":  # half of it, then the end
            return real_read(fd, size // 2) if len(reads) == 1 else b""
        if how == "read-error":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_read(fd, min(n, 100))  # short-reads

    real_open = os.open

    def open_(path: Any, flags: int, *args: Any, **kw: Any) -> int:
        fd = real_open(path, flags, *args, **kw)
        victim_fd[:] = [fd] if str(path).endswith("victim") else []  # fds are reused
        return fd

    proxy.read = read  # type: ignore[attr-defined]
    proxy.open = open_  # type: ignore[attr-defined]
    monkeypatch.setattr(archive, "os", proxy)
    stats, data, index = run(tmp_path)
    monkeypatch.undo()
    got = {info.name: body for info, body in members(data)}
    entries = {
        e.path: e for e in map(Entry.from_json, gzip.decompress(index.finish()).decode().split())
    }
    stored = got["proxy/victim"]
    assert len(stored) == size and got["proxy/z-after"] == b"after\n"
    assert entries["proxy/victim"].sha256 == hashlib.sha256(stored).hexdigest()
    problems = {p.path: p.problem for p in stats.problems}
    if how == "short-reads":
        assert stored == content and not problems
        assert not entries["proxy/victim"].changed
        return
    assert entries["proxy/victim"].changed
    if how == "grew":
        assert stored == content  # cut at the size first seen
        assert "changed while being read" in problems["proxy/victim"]
    elif how == "shrank":
        assert stored == content[: size // 2] + bytes(size - size // 2)
        assert "changed while being read" in problems["proxy/victim"]
    else:
        assert stored == bytes(size)
        assert problems["proxy/victim"].startswith("read error: Input/output error")


class _MemberSink(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.new_member_at: list[int] = []

    def new_member(self) -> None:
        self.new_member_at.append(len(self.getvalue()))


def test_extras_start_where_the_sink_starts_a_new_member(tmp_path: Path) -> None:
    make_tree(tmp_path)
    dump = tmp_path / "dump.sql"
    dump.write_bytes(b"-- a dump\n" * 3)
    digest = hashlib.sha256(dump.read_bytes()).hexdigest()
    sink = _MemberSink()
    stats, data, _ = run(tmp_path, sink=sink, extras=lambda: [("dumps/db.sql", str(dump), digest)])
    assert sink.new_member_at == [stats.extras_at]  # all of the tree reached the sink first
    assert stats.extras_at is not None
    ((info, body),) = members(data[stats.extras_at :])
    assert (info.name, body) == ("dumps/db.sql", dump.read_bytes())


# -- reader processes ---------------------------------------------------------------


def outcome(stats: Stats) -> tuple[Any, ...]:
    return (
        stats.files, stats.dirs, stats.symlinks, stats.bytes,
        [p.as_dict() for p in stats.problems], [p.as_dict() for p in stats.skipped],
    )  # fmt: skip


def add_specials(root: Path) -> None:
    """Entries a reader process notes rather than stores, between ordinary files."""
    top = root / "proxy"
    os.mkfifo(top / "sub" / "fifo")
    os.symlink("/etc/hostname", top / "sub" / "outward")
    for i in range(40):  # enough for several batches and frames
        (top / "sub" / f"many-{i:03}").write_bytes(os.urandom(i * 97))


@pytest.mark.parametrize("readers", [1, 2])
def test_reader_processes_store_the_very_same_archive_and_index(
    tmp_path: Path, readers: int
) -> None:
    """Large trees are read by reader processes: the same bytes, index and account as in
    one process, large files (handed back to the backup's process) in their place."""
    make_tree(tmp_path)
    add_specials(tmp_path)
    alone, data, index = run(tmp_path, readers=0)
    spread, spread_data, spread_index = run(tmp_path, readers=readers, readers_from=3)
    assert spread_data == data
    assert gzip.decompress(spread_index.finish()) == gzip.decompress(index.finish())
    assert outcome(spread) == outcome(alone)
    assert any("FIFO skipped" in p["problem"] for p in outcome(spread)[5])
    assert any("outside the backup" in p["problem"] for p in outcome(spread)[5])


def test_reader_processes_hand_entries_to_any_on_entry(tmp_path: Path) -> None:
    """Without an IndexWriter the lines from the readers become the same Entries."""
    make_tree(tmp_path)
    alone: list[Entry] = []
    spread: list[Entry] = []
    _, data, _ = run(tmp_path, alone.append, readers=0)
    _, spread_data, _ = run(tmp_path, spread.append, readers=2, readers_from=1)
    assert spread_data == data
    assert spread == alone and len(alone) > 10


def readers_for(tmp_path: Path, processes: int = 1) -> tuple[Any, Stats, io.BytesIO, IndexWriter]:
    sink = io.BytesIO()
    index = IndexWriter()
    writer = archive.TarWriter(sink, index.add)
    stats = Stats()
    return archive._Readers(writer, stats, processes), stats, sink, index


def test_a_file_gone_before_a_reader_opens_it_is_a_problem_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "here").write_bytes(b"here\n")
    pool, stats, sink, _ = readers_for(tmp_path)
    try:
        pool.add("proxy/gone", str(tmp_path / "gone"), None, stats)
        pool.add("proxy/here", str(tmp_path / "here"), None, stats)
        pool.finish()
    finally:
        pool.close()
    assert [p.as_dict() for p in stats.problems] == [
        {"path": "proxy/gone", "problem": "vanished before it could be read"}
    ]
    assert (stats.files, stats.bytes) == (1, 5)
    pool.writer.flush()
    ((info, content),) = members(sink.getvalue() + bytes(2 * BLOCK))
    assert (info.name, content) == ("proxy/here", b"here\n")


def test_a_reader_process_that_dies_fails_the_archive_with_a_clear_error(tmp_path: Path) -> None:
    from itsup.errors import ItsupError

    (tmp_path / "f").write_bytes(b"x")
    pool, stats, _, _ = readers_for(tmp_path)
    try:
        pool.procs[0].kill()
        pool.procs[0].wait()
        with pytest.raises((ItsupError, BrokenPipeError)) as caught:
            for _ in range(3):
                pool.add("proxy/f", str(tmp_path / "f"), None, stats)
            pool.finish()
    finally:
        pool.close()
    assert isinstance(caught.value, ItsupError)
    assert "file reader process stopped (exit -9)" in str(caught.value)


def test_without_reader_processes_the_backup_reads_in_its_own_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A host that cannot start a process (limits, memory) still gets its backup."""
    make_tree(tmp_path)
    _, data, _ = run(tmp_path, readers=0)

    def refuse(module: str) -> Any:
        raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(archive.child, "start", refuse)
    stats, same, _ = run(tmp_path, readers=2, readers_from=1)
    assert same == data and not stats.problems
    assert "file reader processes did not start" in caplog.text


def test_reader_processes_read_a_tree_given_by_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readers run in "/": the tree's paths reach them absolute, whatever the caller gave."""
    make_tree(tmp_path)
    _, data, _ = run(tmp_path, readers=0)
    monkeypatch.chdir(tmp_path)
    stats, same, _ = run(Path("."), readers=1, readers_from=1)
    assert same == data and not stats.problems


class Evil:
    """Unpickling this makes a folder: a file holding its pickle must never be loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.mkdir, (str(self.marker),))


def test_a_stopped_readers_pipe_is_read_as_frames_never_file_bytes(tmp_path: Path) -> None:
    """What a reader that stopped left in its pipe is read for its error frame, as
    the protocol has it: the tar bytes after a data frame (a backed-up file's content,
    here crafted to look like a frame) are skipped, never unpickled."""
    import pickle

    from itsup.pipeline import child

    marker = tmp_path / "unpickled"
    crafted = pickle.dumps(Evil(marker))
    content = child.LENGTH.pack(len(crafted)) + crafted
    read_fd, write_fd = os.pipe()
    child.send(write_fd, ("data", len(content), [], len(content), [], []), content)
    child.send(write_fd, ("error", None, "RuntimeError: boom", None))
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as stdout:
        said = archive._last_word(types.SimpleNamespace(stdout=stdout))  # type: ignore[arg-type]
    assert said == ("error", None, "RuntimeError: boom", None)
    assert not marker.exists()


def test_readers_keep_moving_when_their_pipes_cannot_be_enlarged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host where pipes stay at the kernel's 64 KiB (enlarging refused): a batch of long
    names that did not fit a reader's pipe would block the backup and the reader on each
    other for ever. Batches are sent in halves until they fit."""
    import threading

    from itsup.pipeline import child

    top = tmp_path / "proxy" / ("d" * 100)
    top.mkdir(parents=True)
    for i in range(600):
        (top / f"{'n' * 200}{i:04}").write_bytes(b"x" * (i % 50))
    _, data, _ = run(tmp_path, readers=0)
    monkeypatch.setattr(child, "_SET_PIPE_SIZE", -1)  # every F_SETPIPE_SZ fails
    got: dict[str, Any] = {}

    def spread() -> None:
        got["out"] = run(tmp_path, readers=2, readers_from=1)

    worker = threading.Thread(target=spread, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "the backup and its readers wait on each other"
    stats, same, _ = got["out"]
    assert same == data and stats.files == 600
