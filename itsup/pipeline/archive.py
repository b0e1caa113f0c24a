"""Walk the host tree and write it as a POSIX (pax) tar stream.

Files are read once: each chunk goes to the per-file SHA-256 and on into the
tar stream. A file that shrinks while being read is padded with zeros (the
tar header already promised its size), one that grows is cut at the promised
size; both are recorded as changed, so the run reports a partial backup, as
GNU tar does with "file changed as we read it".

Per-file cost is what a tree of many small files pays for: a small file is
read with one call (asking one byte more than its size tells whether it
grew), framed with its one-block header into a batch, and the batch goes to
the sink every FLUSH bytes; a file the folder listing shows as regular is
not stat-ed before it is opened (the fstat of the open file is its stat).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fnmatch
import functools
import hashlib
import logging
import operator
import os
import pickle
import posixpath
import queue
import re
import stat
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from itsup.errors import ItsupError
from itsup.layout import DUMP_FOLDER
from itsup.manifest import Entry, IndexWriter, entry_line
from itsup.pipeline import child
from itsup.pipeline.tarformat import encode_header

log = logging.getLogger("itsup.backup")

CHUNK = 1 << 20
BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE
_ZEROS = bytes(CHUNK)
_NOATIME = getattr(os, "O_NOATIME", 0)
# A folder held open only to open files in it: O_PATH needs no read permission.
_FOLDER_FLAGS = os.O_DIRECTORY | os.O_CLOEXEC | getattr(os, "O_PATH", os.O_RDONLY)
ASYNC_HASH_FROM = 256 * 1024  # smaller files are hashed inline: a thread hop costs more
SMALL = ASYNC_HASH_FROM  # files up to this size: read in one call, framed in the batch
FLUSH = 256 * 1024  # the tar stream goes to the sink in batches of about this size
READER_PROCESS_FROM = 1000  # entries stored in this process before reader processes start
READERS = 2  # reader processes, on a machine with two cores or more
READER_BATCH = 256  # entries sent to a reader at a time (fewer if they fill its pipe)
_REGTYPE = tarfile.REGTYPE
_sha256 = hashlib.sha256


def _update_now(digest: Any, data: bytes) -> None:
    digest.update(data)


def _no_update(digest: Any, data: bytes) -> None:
    pass


class Sink(Protocol):
    def write(self, data: bytes) -> int: ...


@dataclass
class Problem:
    path: str
    problem: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "problem": self.problem}


@dataclass
class Stats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)
    skipped: list[Problem] = field(default_factory=list)  # special files: noted, not partial
    # Where the extras (the database dumps) start: in the tar stream, and in the
    # stored object when a reader can start there (set by codec.encode).
    extras_at: int | None = None
    extras_offset: int | None = None
    readers: int = 0  # reader processes that read the tree beside this one


@dataclass(frozen=True)
class Selection:
    """Which paths below the host root go into a backup."""

    roots: tuple[str, ...]
    excludes: tuple[str, ...] = ()
    include_volumes: bool = False
    # Exact paths left out: the live data folders of engines that are dumped.
    paths: frozenset[str] = frozenset()

    def excluded(self, rel: str) -> bool:
        if rel.count("/") == 2 and rel.startswith("upstream/"):
            leaf = rel[rel.rindex("/") + 1 :]
            if leaf == DUMP_FOLDER:  # dumps are added by the run itself, never read here
                return True
            if leaf == "volumes" and not self.include_volumes:
                return True
        if rel in self.paths:
            return True
        return bool(self.excludes) and _matcher(self.excludes)(rel) is not None


@functools.lru_cache(maxsize=8)
def _matcher(patterns: tuple[str, ...]) -> Callable[[str], Any]:
    """One regex for all the exclude patterns: what any(fnmatchcase) says, in one call."""
    return re.compile("|".join(fnmatch.translate(p) for p in patterns)).match


def walk(
    root: Path, selection: Selection, stats: Stats
) -> Iterator[tuple[str, str, os.stat_result | None]]:
    """Yield (relative path, absolute path, lstat) depth-first, parents first, sorted.

    The lstat is None where the folder listing says "regular file": the writer
    opens it and takes the open file's fstat, so a stat here would be a syscall
    spent for nothing (a file replaced in between is caught there, as ever)."""
    for top in selection.roots:
        absolute = os.path.join(root, top)
        try:
            st = os.lstat(absolute)
        except FileNotFoundError:
            continue
        if selection.excluded(top):
            continue
        yield top, absolute, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(top, absolute, selection, stats)


_by_name = operator.attrgetter("name")


def _listing(rel: str, absolute: str, stats: Stats) -> Iterator[os.DirEntry[str]]:
    """The entries of one folder, sorted by name (none, with a problem, if it cannot be read)."""
    try:
        with os.scandir(absolute) as it:
            entries = sorted(it, key=_by_name)
    except FileNotFoundError:
        stats.problems.append(Problem(rel, "folder vanished while being read"))
        return iter(())
    except OSError as exc:
        stats.problems.append(Problem(rel, f"cannot list folder: {exc.strerror}"))
        return iter(())
    return iter(entries)


def _walk_dir(
    rel: str, absolute: str, selection: Selection, stats: Stats
) -> Iterator[tuple[str, str, os.stat_result | None]]:
    # A stack of listings in progress rather than recursion: a tree may be nested
    # deeper than Python's recursion limit (about 1000) long before its paths
    # reach PATH_MAX.
    stack = [(rel, _listing(rel, absolute, stats))]
    while stack:
        parent, entries = stack[-1]
        prefix = parent + "/"
        for entry in entries:  # left at a folder to go into, resumed when it is done
            child_rel = prefix + entry.name
            if selection.excluded(child_rel):
                continue
            try:
                is_file = entry.is_file(follow_symlinks=False)  # the listing's type: no syscall
                st = None if is_file else entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                stats.problems.append(Problem(child_rel, "vanished before it could be read"))
                continue
            except OSError as exc:
                stats.problems.append(Problem(child_rel, f"cannot stat: {exc.strerror}"))
                continue
            yield child_rel, entry.path, st
            if st is not None and stat.S_ISDIR(st.st_mode):
                stack.append((child_rel, _listing(child_rel, entry.path, stats)))
                break
        else:
            stack.pop()


def _header(rel: str, kind: bytes, st: os.stat_result, size: int = 0, link: str = "") -> bytes:
    return encode_header(
        rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, st.st_mtime_ns, link
    )


def _entry(rel: str, kind: str, st: os.stat_result, **extra: Any) -> Entry:
    return Entry(
        rel,
        kind,
        mode=stat.S_IMODE(st.st_mode),
        mtime_ns=st.st_mtime_ns,
        uid=st.st_uid,
        gid=st.st_gid,
        **extra,
    )


def _leaves_tree(rel: str, link: str) -> bool:
    """Whether symlink `rel` -> `link` points outside the tree (restore's rule)."""
    if link.startswith("/"):
        return True
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
    return resolved == ".." or resolved.startswith("../")


class _Hasher:
    """SHA-256 of large files on a thread of its own.

    hashlib releases the GIL on large updates, so hashing runs beside the
    tar framing and the compressors instead of in series with them. Chunks
    are queued in order; `hexdigest` waits until a file's chunks are done.
    """

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[Any, bytes | None, threading.Event | None]] = queue.Queue(32)
        # Also checked on a timer: a signal raised in the main thread in the middle
        # of a queue operation can lose the wake-up of the sentinel below.
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="file-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                digest, data, done = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if digest is None:
                return
            if data is not None:
                digest.update(data)
            if done is not None:
                done.set()

    def update(self, digest: Any, data: bytes) -> None:
        self.queue.put((digest, data, None))

    def hexdigest(self, digest: Any) -> str:
        done = threading.Event()
        self.queue.put((digest, None, done))
        done.wait()
        return str(digest.hexdigest())

    def close(self) -> None:
        # Every digest that matters was waited for (hexdigest): nothing queued now
        # is needed, so stop without draining, and never wait on a full queue.
        self.stopping.set()
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait((None, None, None))
        self.thread.join(timeout=5)


class TarWriter:
    """Writes tar members to `sink` and index entries to `on_entry`.

    The stream is gathered into batches of about FLUSH bytes (pieces that large
    go straight through); `flush` hands over what is gathered. When `on_entry`
    is an IndexWriter's `add`, that index is handed lines (`entry_line`) with each
    batch, without an Entry for each file: the same lines, for less.
    """

    def __init__(
        self,
        sink: Sink,
        on_entry: Callable[[Entry], None],
        on_bytes: Callable[[int], None] | None = None,
        on_lines: Callable[[list[str]], None] | None = None,
        on_large: Callable[[str, str], None] | None = None,
    ) -> None:
        self.sink = sink
        self.on_entry = on_entry
        self.on_bytes = on_bytes or (lambda n: None)
        self.written = 0
        self.hasher = _Hasher()
        self.folder: str | None = None  # the folder of the file last opened, and its fd
        self.folder_fd: int | None = None
        self.batch: list[bytes] = []  # pieces of the stream not yet handed to the sink
        self.batched = 0  # their bytes
        self.unreported = 0  # bytes read into the batch, not yet told to on_bytes
        index = getattr(on_entry, "__self__", None)
        is_add = getattr(on_entry, "__func__", None) is IndexWriter.add
        if on_lines is None and isinstance(index, IndexWriter) and is_add:
            on_lines = index.add_lines
        self.on_lines = on_lines
        # Index lines not yet handed to `on_lines` (with the batch they describe).
        self.lines: list[str] | None = [] if on_lines is not None else None
        # When given (a reader process), a file larger than SMALL is not stored here:
        # what is gathered is flushed, then on_large(path, path on disk) is called.
        self.on_large = on_large

    def _out(self, data: bytes) -> None:
        self.written += len(data)
        if len(data) >= FLUSH:
            self.flush()
            self.sink.write(data)
            return
        self.batch.append(data)
        self.batched += len(data)
        if self.batched >= FLUSH:
            self.flush()

    def flush(self) -> None:
        """Hand what is gathered to the sink, as one piece."""
        if self.batch:
            self.sink.write(b"".join(self.batch))
            self.batch = []
            self.batched = 0
        if self.lines and self.on_lines is not None:
            self.on_lines(self.lines)
            self.lines = []
        if self.unreported:
            self.on_bytes(self.unreported)
            self.unreported = 0

    def take(self, data: bytes, lines: list[str], read: int) -> None:
        """Members stored elsewhere (a reader process): their tar stream, index lines
        and the bytes of file data they read, in order after what came before."""
        if data:
            self._out(data)
        if self.lines is not None:
            self.lines += lines
        else:
            for line in lines:
                self.on_entry(Entry.from_json(line))
        self.unreported += read
        if self.batched >= FLUSH:
            self.flush()

    def _index(self, entry: Entry) -> None:
        if self.lines is not None:
            self.lines.append(entry.to_json())
        else:
            self.on_entry(entry)

    def add(
        self,
        rel: str,
        absolute: str,
        st: os.stat_result | None,
        stats: Stats,
        sha256: str | None = None,
    ) -> None:
        """Write one member. `st` None: a regular file by its folder listing (its fstat
        is taken once open). `sha256`, when the caller already hashed the file (a dump,
        hashed as it was spooled), is taken for the index instead of hashing it again."""
        if st is None:
            self._add_file(rel, absolute, stats, sha256)
            return
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self._out(_header(rel, tarfile.DIRTYPE, st))
            self._index(_entry(rel, "dir", st))
            stats.dirs += 1
        elif stat.S_ISLNK(mode):
            try:
                link = os.readlink(absolute)
            except OSError as exc:
                stats.problems.append(Problem(rel, f"cannot read link: {exc.strerror}"))
                return
            if _leaves_tree(rel, link):
                # Stored as it is (it is part of the host's state); a restore
                # creates it as a link, never followed, and names it.
                stats.skipped.append(
                    Problem(
                        rel,
                        f"symlink to {link!r} points outside the backup; a restore creates "
                        "it as a link (never followed) unless --refuse-external-links",
                    )
                )
            self._out(_header(rel, tarfile.SYMTYPE, st, link=link))
            self._index(_entry(rel, "symlink", st, link=link))
            stats.symlinks += 1
        elif stat.S_ISREG(mode):
            self._add_file(rel, absolute, stats, sha256)
        else:
            kind = (
                "socket"
                if stat.S_ISSOCK(mode)
                else "FIFO"
                if stat.S_ISFIFO(mode)
                else "device node"
            )
            stats.skipped.append(Problem(rel, f"{kind} skipped: it holds no data to back up"))

    def _open(self, absolute: str) -> int:
        """Open a file to read; by its name in its folder, held open while the files of
        one folder come one after another (the kernel then walks one path component,
        not the whole path)."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        folder, slash, name = absolute.rpartition("/")
        if folder != self.folder:
            self._close_folder()
            self.folder = folder
            if slash:
                with contextlib.suppress(OSError):  # then by the whole path, which says why
                    self.folder_fd = os.open(folder or "/", _FOLDER_FLAGS)
        at = self.folder_fd
        if at is None:
            name = absolute
        try:
            return os.open(name, flags | _NOATIME, dir_fd=at)
        except PermissionError:
            if not _NOATIME:
                raise
            return os.open(name, flags, dir_fd=at)  # O_NOATIME needs ownership

    def _close_folder(self) -> None:
        if self.folder_fd is not None:
            os.close(self.folder_fd)
            self.folder_fd = None
        self.folder = None

    def close(self) -> None:
        """Release what the writer holds (the hashing thread, a folder); the stream is
        not finished here (`finish`)."""
        self.hasher.close()
        self._close_folder()

    def _add_file(self, rel: str, absolute: str, stats: Stats, known: str | None = None) -> None:
        try:
            fd = self._open(absolute)
        except FileNotFoundError:
            stats.problems.append(Problem(rel, "vanished before it could be read"))
            return
        except OSError as exc:
            what = "symlink appeared" if exc.errno == errno.ELOOP else exc.strerror
            stats.problems.append(Problem(rel, f"cannot open: {what}"))
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                stats.problems.append(
                    Problem(rel, "changed into a non-regular file while being read")
                )
                return
            size = st.st_size
            if size > SMALL and self.on_large is not None and not known:
                self.flush()
                self.on_large(rel, absolute)
                return
            if size > SMALL or known:
                self._out(_header(rel, _REGTYPE, st, size=size))
                changed, failed, hexdigest = self._copy(rel, fd, size, stats, known)
            else:
                # Header, data and padding into the batch; the data with one read, which,
                # asked for one byte more, also says whether the file grew.
                changed = failed = False
                data = b""
                if size:
                    try:
                        data = os.read(fd, size + 1)
                    except OSError as exc:
                        stats.problems.append(
                            Problem(rel, f"read error: {exc.strerror}; rest stored as zeros")
                        )
                        changed = failed = True
                    if len(data) > size:
                        data, changed = data[:size], True
                    elif len(data) < size:
                        data, short, error = _read_rest(rel, fd, data, size, stats, failed)
                        changed, failed = changed or short, failed or error
                header = encode_header(
                    rel, _REGTYPE, st.st_mode & 0o7777, st.st_uid, st.st_gid, size, st.st_mtime_ns
                )
                batch = self.batch
                batch.append(header)
                batch.append(data)
                tail = -size % BLOCK
                if tail:
                    batch.append(_ZEROS[:tail])
                framed = len(header) + size + tail
                self.written += framed
                self.batched += framed
                self.unreported += size
                hexdigest = _sha256(data).hexdigest()
            after = os.fstat(fd)
            if after.st_size != size or after.st_mtime_ns != st.st_mtime_ns:
                changed = True
            if changed and not failed:
                stats.problems.append(
                    Problem(rel, "changed while being read; stored copy may be inconsistent")
                )
            if self.lines is not None:
                line = entry_line(
                    rel, "file", st.st_mode & 0o7777, st.st_mtime_ns, st.st_uid, st.st_gid,
                    size, hexdigest, changed,
                )  # fmt: skip
                self.lines.append(line)
            else:
                self.on_entry(_entry(rel, "file", st, size=size, sha256=hexdigest, changed=changed))
            stats.files += 1
            stats.bytes += size
        finally:
            os.close(fd)
        if self.batched >= FLUSH:
            self.flush()

    def _copy(
        self, rel: str, fd: int, size: int, stats: Stats, known: str | None
    ) -> tuple[bool, bool, str]:
        """A file's data and padding, in chunks; returns (changed, failed, SHA-256)."""
        digest = hashlib.sha256()
        update = (
            _no_update if known else self.hasher.update if size > ASYNC_HASH_FROM else _update_now
        )
        remaining = size
        changed = False
        failed = False  # a read error, already recorded as this file's problem
        while remaining:
            try:
                chunk = os.read(fd, min(CHUNK, remaining))
            except OSError as exc:
                # The header is out: keep the stream valid, record the damage.
                stats.problems.append(
                    Problem(rel, f"read error: {exc.strerror}; rest stored as zeros")
                )
                chunk = b""
                changed = failed = True
            if not chunk:
                changed = True
                while remaining:
                    pad = _ZEROS[: min(CHUNK, remaining)]
                    update(digest, pad)
                    self._out(pad)
                    remaining -= len(pad)
                break
            update(digest, chunk)
            self._out(chunk)
            remaining -= len(chunk)
            self.on_bytes(len(chunk))
        hexdigest = (
            known
            if known
            else self.hasher.hexdigest(digest)
            if size > ASYNC_HASH_FROM
            else digest.hexdigest()
        )
        tail = size % BLOCK
        if tail:
            self._out(_ZEROS[: BLOCK - tail])
        return changed, failed, hexdigest

    def finish(self) -> None:
        """End-of-archive: two zero blocks, padded to a full record as tar does."""
        end = 2 * BLOCK
        total = self.written + end
        if total % RECORD:
            end += RECORD - total % RECORD
        self._out(bytes(end))
        self.flush()


def _read_rest(
    rel: str, fd: int, data: bytes, size: int, stats: Stats, failed: bool
) -> tuple[bytes, bool, bool]:
    """A small file read short: read on to `size`, then pad with zeros as the header
    promised. Returns (data, short, read error)."""
    parts = [data]
    got = len(data)
    while got < size and not failed:
        try:
            chunk = os.read(fd, size - got)
        except OSError as exc:
            stats.problems.append(Problem(rel, f"read error: {exc.strerror}; rest stored as zeros"))
            failed = True
            break
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    short = got < size
    if short:
        parts.append(bytes(size - got))
    return b"".join(parts), short, failed


class _Readers:
    """Reader processes (`reader.py`): batches of walked entries out, in turn; their
    tar stream, index lines and problems back, taken in the walk's order."""

    def __init__(self, writer: TarWriter, stats: Stats, processes: int) -> None:
        self.writer = writer
        self.stats = stats
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for _ in range(processes):
                self.procs.append(child.start("itsup.pipeline.reader"))
        except OSError:
            self.close()
            raise
        # The most a batch may take in a reader's pipe (see _send).
        self.room = min(child.capacity(p.stdin.fileno()) for p in self.procs if p.stdin)
        self.room -= child.LENGTH.size
        self.turn = 0
        self.pending: collections.deque[tuple[subprocess.Popen[bytes], list[Any]]]
        self.pending = collections.deque()
        self.batch: list[tuple[str, str, os.stat_result | None]] = []

    def add(self, rel: str, absolute: str, st: os.stat_result | None, _stats: Stats) -> None:
        """Store one walked entry (as `TarWriter.add`, for the walk's loop)."""
        self.batch.append((rel, absolute, st))
        if len(self.batch) >= READER_BATCH:
            self._send(self.batch)
            self.batch = []

    def _send(self, batch: list[tuple[str, str, os.stat_result | None]]) -> None:
        """Send `batch` to the next reader, in halves while it would not fit its pipe.

        A reader holds at most two batches: one it stores, one waiting in its pipe.
        A batch that did not fit whole would block this process on the write while
        the reader blocks on giving back the batch before it: neither would move.
        (Pipes are 1 MiB when enlarging them works; the kernel's 64 KiB, or less
        where a user has used up its pipe pages, holds fewer entries with long
        names.)"""
        payload = pickle.dumps(batch, protocol=5)
        if len(payload) > self.room and len(batch) > 1:
            half = len(batch) // 2
            self._send(batch[:half])
            self._send(batch[half:])
            return
        while len(self.pending) >= 2 * len(self.procs):
            self._take_one()
        proc = self.procs[self.turn]
        self.turn = (self.turn + 1) % len(self.procs)
        assert proc.stdin is not None
        try:
            child.send_pickled(proc.stdin.fileno(), payload)
        except BrokenPipeError:
            raise self._failed(proc) from None
        self.pending.append((proc, batch))

    def _take_one(self) -> None:
        """Take the oldest batch's frames, in order, until its end."""
        proc, items = self.pending.popleft()
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        writer, stats = self.writer, self.stats
        while True:
            try:
                message = child.receive(fd)
                kind = message[0]
                if kind == "data":
                    _, size, lines, read, problems, skipped = message
                    writer.take(child.read_exactly(fd, size), lines, read)
                    stats.problems += [Problem(*p) for p in problems]
                    stats.skipped += [Problem(*p) for p in skipped]
                    continue
            except EOFError:  # it ended: what it said last says why
                raise self._failed(proc) from None
            except (TypeError, IndexError, ValueError, pickle.UnpicklingError):
                proc.kill()  # out of step with it: nothing more it sends is read
                raise ItsupError(
                    "the backup's file reader process sent a malformed answer"
                ) from None
            if kind == "large":
                rel, absolute, _st = items[message[1]]
                writer.add(rel, absolute, None, stats)
            elif kind == "end":
                _, files, dirs, symlinks, read = message
                stats.files += files
                stats.dirs += dirs
                stats.symlinks += symlinks
                stats.bytes += read
                return
            else:
                raise self._failed(proc, message)

    def _failed(self, proc: subprocess.Popen[bytes], message: Any = None) -> Exception:
        """The error a reader that stopped early (its input or output closed) is
        reported with: its last word when it said one."""
        if message is None:
            message = _last_word(proc)
        if message is not None and message[0] == "error":
            _, number, text, name = message
            if number is not None:
                return OSError(number, text, name)
            return ItsupError(f"the backup's file reader process failed: {text}")
        proc.kill()
        return ItsupError(f"the backup's file reader process stopped (exit {proc.wait()})")

    def finish(self) -> None:
        """Send what is gathered, take every batch back, end the readers."""
        if self.batch:
            self._send(self.batch)
            self.batch = []
        while self.pending:
            self._take_one()
        for proc in self.procs:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                child.send_end(proc.stdin.fileno())
                proc.stdin.close()
        for proc in self.procs:
            if proc.wait() != 0:
                raise self._failed(proc)

    def close(self) -> None:
        """Stop any reader still running (after a failure: nothing left to wait for)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()


def _last_word(proc: subprocess.Popen[bytes]) -> Any:
    """The error frame a reader that stopped sent, if any: what is left in its pipe is
    read frame by frame as the protocol has it, a data frame's tar bytes skipped
    unread, so no byte of a backed-up file is ever taken for a frame."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    with contextlib.suppress(EOFError, OSError, ValueError, TypeError, pickle.UnpicklingError):
        while (message := child.receive(fd)) is not None:
            if message[0] == "data":
                child.read_exactly(fd, message[1])
            elif message[0] == "error":
                return message
    return None


def reader_processes() -> int:
    """How many reader processes a large tree gets: none on a single core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 0 if (cores or 1) < 2 else READERS


def write_archive(
    root: Path,
    selection: Selection,
    sink: Sink,
    on_entry: Callable[[Entry], None],
    on_bytes: Callable[[int], None] | None = None,
    extras: Callable[[], list[tuple[str, str, str | None]]] | None = None,
    readers: int | None = None,
    readers_from: int = READER_PROCESS_FROM,
) -> Stats:
    """Stream the selected tree into `sink` as a tar archive; return what was stored.

    From the `readers_from`-th entry on, `readers` reader processes
    (default: `reader_processes()`) store the walked entries and this process
    takes their output in order (the same bytes, the same index lines).
    `extras`, called once the tree is written, gives more members as (archive
    path, path on disk, SHA-256 if known), added after it in that order: a
    backup's database dumps.
    Before them the sink is asked to start a new member (`new_member`, when it
    has one: the gzip stage), and `stats.extras_at` notes their tar offset.
    """
    stats = Stats()
    root = Path(os.path.abspath(root))  # reader processes run in "/"
    writer = TarWriter(sink, on_entry, on_bytes)
    processes = reader_processes() if readers is None else readers
    pool: _Readers | None = None
    add: Callable[[str, str, os.stat_result | None, Stats], None]
    try:
        add = writer.add
        entries = walk(root, selection, stats)
        if processes:
            for n, (rel, absolute, st) in enumerate(entries):
                add(rel, absolute, st, stats)
                if n + 1 >= readers_from:
                    writer.flush()
                    try:
                        pool = _Readers(writer, stats, processes)
                    except OSError as exc:  # no process to spare: read here, as ever
                        log.warning(
                            "file reader processes did not start (%s); reading in this process",
                            exc.strerror or exc,
                        )
                        break
                    stats.readers = processes
                    add = pool.add
                    break
        for rel, absolute, st in entries:
            add(rel, absolute, st, stats)
        if pool is not None:
            pool.finish()
        more = extras() if extras is not None else []
        if more:
            # The extras begin a stream of their own (a new gzip member), so that a
            # restore of the dumps alone reads from here, not through the whole tree.
            writer.flush()
            stats.extras_at = writer.written
            new_member = getattr(sink, "new_member", None)
            if new_member is not None:
                new_member()
        for rel, absolute, sha256 in more:
            writer.add(rel, absolute, os.lstat(absolute), stats, sha256)
        writer.finish()
    finally:
        if pool is not None:
            pool.close()
        writer.close()
    return stats
