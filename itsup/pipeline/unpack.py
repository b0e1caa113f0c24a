"""Write a tar stream's members below a staging folder, checked against the file index.

The restore's extraction (docs/design.md, "The restore pipeline", step 2).
Each member passes the hostile-archive rules (`members.PathRules`) and must
be, in order, the next entry of the file index (path, type, size, link);
modes, owners and mtimes (to the nanosecond) are taken from that entry.
Where a link points is checked for the links written (`link_leaves`, then
chains through other links once all are known).

Small files are written by a pool of threads, in batches bounded by bytes
in flight; large ones by a thread of their own, in order, with runs of
zeros left as holes. Memory does not grow with the number of files: one
record per folder written (its metadata is set last) and per symlink.

With `only_changed` (a restore into a live tree), a file whose current copy
already has the member's size, mode, mtime and content is not written: the
swap then leaves it alone. Its content is compared byte for byte with the
member's, never assumed from the metadata.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import posixpath
import queue
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from itsup.errors import IntegrityError, ItsupError
from itsup.manifest import Record, parse_record
from itsup.pipeline import child
from itsup.pipeline.extract import link_leaves, outward_links, refuse_outward, refused_link
from itsup.pipeline.members import DIR, FILE, SYMLINK, PathRules, TarScanner
from itsup.pipeline.writer import write_files

CHUNK = 1 << 20
SMALL = 1 << 20  # files up to this size are written by the pool, in batches
BATCH_FILES = 256
BATCH_BYTES = 4 << 20
INFLIGHT_BYTES = 16 << 20  # bounds memory held by queued writes
_ZEROS = bytes(CHUNK)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class _ByteBudget:
    """A counting limit on bytes held by queued writes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.cond = threading.Condition()

    def acquire(self, n: int) -> None:
        with self.cond:
            while self.used and self.used + n > self.limit:
                self.cond.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


@dataclass
class ExtractStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    members: int = 0
    unchanged: int = 0  # files left as they were (only_changed)


# (path below staging, data, mode, mtime_ns, uid, gid, live copy or None) of one small file
_Job = tuple[str, bytes, int, int, int, int, bytes | None]


class Unpacker:
    """Writes the selected members of a tar stream below `staging`."""

    def __init__(
        self,
        staging: Path,
        index: Callable[[], Iterator[bytes]],
        selected: Callable[[str], bool] | None = None,
        *,
        restore_owner: bool,
        external_links: bool = False,
        only_changed: Path | None = None,
        workers: int = 2,
        processes: int = 0,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        """`index()`: the file index's JSON lines, in archive order. `selected`: which
        paths are written (None: all). `only_changed`: the live tree whose unchanged
        files are not rewritten. `processes`: writer processes for the small files
        (`writer.py`; worth their start for many files), else `workers` threads."""
        self.staging = os.fsencode(staging)
        self.index = index()
        self.selected = selected
        self.restore_owner = restore_owner
        self.owner = (os.geteuid(), os.getegid())
        umask = os.umask(0o022)
        os.umask(umask)
        self.umask = umask
        self.external_links = external_links
        self.external: list[tuple[str, str]] = []
        self.live = os.fsencode(only_changed) if only_changed is not None else None
        self.live_parent: str | None = None  # the last live folder found to be a real one
        self.rules = PathRules(
            lambda: (parse_record(line, "the manifest's index")[0] for line in index())
        )
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="restore-write")
        self.writers = [child.start("itsup.pipeline.writer") for _ in range(processes)]
        self.turn = 0
        self.budget = _ByteBudget(INFLIGHT_BYTES)
        self.large: queue.SimpleQueue[tuple[str, Any, int]] = queue.SimpleQueue()
        self.large_error: BaseException | None = None
        self.large_thread = threading.Thread(
            target=self._large_writer, name="restore-large", daemon=True
        )
        self.large_thread.start()
        self.batch: list[_Job] = []
        self.batch_bytes = 0
        self.futures: list[Future[int]] = []
        self.dirs: list[tuple[str, int, int, int, int]] = []  # path, mode, mtime, uid, gid
        self.link_targets: dict[str, str] = {}
        self.made_dirs: set[str] = set()
        self.current: str | None = None  # the member being read, for error messages
        self.stats = ExtractStats()
        self.on_bytes = on_bytes or (lambda n: None)

    # -- writing -----------------------------------------------------------
    def _dest(self, path: str) -> bytes:
        return self.staging + b"/" + os.fsencode(path)

    def _ensure_parent(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent and parent not in self.made_dirs:
            os.makedirs(self._dest(parent), mode=0o700, exist_ok=True)
            p = parent
            while p and p not in self.made_dirs:
                self.made_dirs.add(p)
                p = posixpath.dirname(p)

    def _write_batch(self, batch: list[_Job], size: int) -> int:
        try:
            owner = self.owner if self.restore_owner else None
            return write_files(self.staging + b"/", owner, batch, self.umask)
        finally:
            self.budget.release(size)

    def _flush_batch(self) -> None:
        if self.batch and self.writers:
            owner = self.owner if self.restore_owner else None
            proc = self.writers[self.turn]
            self.turn = (self.turn + 1) % len(self.writers)
            try:
                assert proc.stdin is not None
                child.send(proc.stdin.fileno(), (self.staging + b"/", owner, self.batch))
            except BrokenPipeError:  # it stopped: its answer says why
                self._stop_writers()
                raise ItsupError("the restore's writer process stopped early") from None
            self.on_bytes(self.batch_bytes)
            self.batch, self.batch_bytes = [], 0
        elif self.batch:
            self.budget.acquire(self.batch_bytes)
            self.futures.append(self.pool.submit(self._write_batch, self.batch, self.batch_bytes))
            self.on_bytes(self.batch_bytes)
            self.batch, self.batch_bytes = [], 0
            if len(self.futures) > 64:
                self._check_futures()

    def _finish_fd(self, fd: int, mode: int, mtime: int, uid: int, gid: int) -> None:
        if self.restore_owner:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.utime(fd, ns=(mtime, mtime))

    def _write_large(
        self, path: str, meta: tuple[int, int, int, int], size: int, scan: TarScanner
    ) -> None:
        """Queue a large file's chunks for the large-file writer thread, in order."""
        fd = os.open(self._dest(path), _CREATE, 0o600)
        self.large.put(("open", None, fd))
        remaining = size
        while remaining:
            chunk = scan.read(min(CHUNK, remaining))
            if not chunk:
                raise tarfile.ReadError("unexpected end of data: the archive is truncated")
            self.budget.acquire(len(chunk))
            self.large.put(("data", chunk, fd))
            remaining -= len(chunk)
            self.on_bytes(len(chunk))
        self.large.put(("close", (size, *meta), fd))

    def _large_writer(self) -> None:
        failed: BaseException | None = None
        while True:
            op, item, fd = self.large.get()
            if op == "stop":
                break
            try:
                if failed is not None:
                    pass
                elif op == "data":
                    n = len(item)
                    if item == _ZEROS[:n]:
                        os.lseek(fd, n, os.SEEK_CUR)  # leave a hole: sparse files stay sparse
                    else:
                        view = memoryview(item)
                        while view:
                            view = view[os.write(fd, view) :]
                elif op == "close":
                    size, mode, mtime, uid, gid = item
                    os.ftruncate(fd, size)
                    self._finish_fd(fd, mode, mtime, uid, gid)
            except BaseException as exc:
                failed = exc
            finally:
                if op == "data":
                    self.budget.release(len(item))
                elif op == "close":
                    os.close(fd)
        self.large_error = failed

    def _stop_large_writer(self) -> None:
        self.large.put(("stop", None, -1))
        self.large_thread.join()
        if self.large_error is not None:
            raise self.large_error

    def _check_futures(self, wait: bool = False) -> None:
        keep = []
        for fut in self.futures:
            if wait or fut.done():
                self.stats.unchanged += fut.result()
            else:
                keep.append(fut)
        self.futures = keep

    def _live_copy(self, path: str) -> bytes | None:
        """Where the live tree holds `path`, when the writers should compare it there
        first (only_changed, and every live folder above it a real one)."""
        assert self.live is not None
        parent = path.rpartition("/")[0]
        if parent != self.live_parent and not self._real_folders(parent):
            return None
        return self.live + b"/" + os.fsencode(path)

    def _real_folders(self, parent: str) -> bool:
        """Whether every folder on the way to `parent` in the live tree is a real folder:
        a file is left alone only where the swap will merge, never where it replaces a
        symlink (or a file) by the staged folder."""
        assert self.live is not None
        here = self.live
        for part in parent.split("/") if parent else ():
            here += b"/" + os.fsencode(part)
            try:
                if not stat.S_ISDIR(os.lstat(here).st_mode):
                    return False
            except OSError:
                return False
        self.live_parent = parent
        return True

    # -- the stream --------------------------------------------------------
    def run(self, stream: IO[bytes]) -> ExtractStats:
        try:
            try:
                self._run(stream)
                self._flush_batch()
            finally:
                self._stop_large_writer()
            self._check_futures(wait=True)
            self._stop_writers()
            self._apply_dirs()
        except FileExistsError as exc:  # staging starts empty: the archive repeats a path
            name = os.path.relpath(
                os.fsdecode(exc.filename2 or exc.filename), os.fsdecode(self.staging)
            )
            raise IntegrityError(
                f"archive member {name!r} appears twice in the archive; refused"
            ) from None
        except OSError as exc:
            parent = os.path.dirname(os.fsdecode(self.staging))
            if exc.errno == errno.ENOSPC:
                raise ItsupError(f"no space left on the device holding {parent}") from None
            raise ItsupError(f"writing below {parent}: {exc.strerror or exc}") from None
        except tarfile.TarError as exc:
            at = f" (at or after member {self.current!r})" if self.current else ""
            raise IntegrityError(f"the archive is damaged{at}: {exc}") from None
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
            for proc in self.writers:  # stopped by a failure: no answer to wait for
                with contextlib.suppress(OSError):
                    proc.kill()
                proc.wait()
        return self.stats

    def _stop_writers(self) -> None:
        """End the writer processes' input, wait for them, raise the first error."""
        first: BaseException | None = None
        for proc in self.writers:
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                child.send_end(proc.stdin.fileno())
            assert proc.stdin is not None and proc.stdout is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()
            answer = proc.stdout.read()
            code = proc.wait()
            try:
                error, same = pickle.loads(answer)
                self.stats.unchanged += same
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError):
                error = ()
            if first is not None or (error is None and code == 0):
                continue
            if error:
                number, text, name = error
                first = OSError(number, text, name)
            else:
                first = ItsupError(f"the restore's writer process stopped (exit {code})")
        if first is not None:
            raise first

    def _next_entry(self, path: str) -> Record:
        line = next(self.index, None)
        if line is None:
            raise IntegrityError(f"archive member {path!r} is not in the manifest's index")
        return parse_record(line, "the manifest's index")

    def _run(self, stream: IO[bytes]) -> None:
        scan = TarScanner(stream)
        check = self.rules.check
        selected = self.selected
        stats = self.stats
        batch = self.batch
        live = self.live
        while (header := scan.next_header()) is not None:
            name, flag, size, link = header
            path, kind = check(name, flag, size, link)
            e_path, e_kind, mode, mtime, uid, gid, e_size, e_link = self._next_entry(path)
            if (
                e_path != path
                or e_kind != kind
                or e_size != (size if kind == FILE else 0)
                or e_link != (link if kind == SYMLINK else "")
            ):
                raise IntegrityError(
                    f"archive member {path!r} does not match the manifest's index entry {e_path!r}"
                )
            self.current = path
            stats.members += 1
            if kind == SYMLINK:
                self.link_targets[path] = link
            if selected is not None and not selected(path):
                continue
            mode &= 0o7777
            if kind == FILE:
                if size <= SMALL:
                    data = scan.take(size)
                    stats.files += 1
                    stats.bytes += size
                    self._ensure_parent(path)
                    copy = self._live_copy(path) if live is not None else None
                    batch.append((path, data, mode, mtime, uid, gid, copy))
                    self.batch_bytes += size + 512
                    if len(batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
                        self._flush_batch()
                        batch = self.batch
                else:
                    self._ensure_parent(path)
                    self._write_large(path, (mode, mtime, uid, gid), size, scan)
                    stats.files += 1
                    stats.bytes += size
            elif kind == DIR:
                self._ensure_parent(path)
                if path not in self.made_dirs:
                    os.makedirs(self._dest(path), mode=0o700, exist_ok=True)
                    self.made_dirs.add(path)
                self.dirs.append((path, mode, mtime, uid, gid))
                stats.dirs += 1
            else:
                self._symlink(path, link, mtime, uid, gid)
        self._finish_stream(stream)

    def _symlink(self, path: str, link: str, mtime: int, uid: int, gid: int) -> None:
        if not self.external_links:
            why = link_leaves(path, link)
            if why is not None:
                raise refused_link(path, why)
        self._ensure_parent(path)
        dest = self._dest(path)
        os.symlink(link, dest)
        if self.restore_owner:
            os.lchown(dest, uid, gid)
        os.utime(dest, ns=(mtime, mtime), follow_symlinks=False)
        self.stats.symlinks += 1

    def _finish_stream(self, stream: IO[bytes]) -> None:
        self.rules.finish()
        self.external = outward_links(self.link_targets, self.selected or (lambda p: True))
        if not self.external_links:  # only chains are left to find here
            refuse_outward(self.external, self.link_targets)
        extra = next(self.index, None)
        if extra is not None:
            path = parse_record(extra, "the manifest's index")[0]
            raise IntegrityError(f"the manifest's index lists {path!r}, which the archive lacks")
        # Read to the end so compression trailers (CRC, length) are checked.
        with contextlib.suppress(AttributeError):
            while stream.read(CHUNK):
                pass

    def _apply_dirs(self) -> None:
        for path, mode, mtime, uid, gid in sorted(
            self.dirs, key=lambda d: d[0].count("/"), reverse=True
        ):
            dest = self._dest(path)
            if self.restore_owner:
                os.lchown(dest, uid, gid)
            os.chmod(dest, mode)
            os.utime(dest, ns=(mtime, mtime))
