"""Read a tar stream and write its members into a staging folder.

Every member is checked before anything is written: relative path, no `..`,
no path through a symlink the archive itself created, only files, folders
and symlinks. Any hostile member refuses the whole archive, whether or not
it is one the restore writes. Symlinks that point outside the destination
(`localtime -> /usr/share/zoneinfo/UTC`) are a matter of where they point,
not of what the archive writes: only the ones a restore writes are looked
at, and they are created as links (never followed) or, when the caller asks,
refused. When the manifest's index is given, each member must match its
index entry (path, type, size, link) in order.

Writes overlap the download and decompression: small files go to a pool of
writer threads (bounded by bytes in flight), large ones are written in place
with runs of zeros left as holes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import queue
import tarfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO

from itsup.errors import IntegrityError, ItsupError
from itsup.manifest import Entry
from itsup.pipeline.tarformat import TarReader

CHUNK = 1 << 20
SMALL = 1 << 20  # files up to this size are written by the pool, in batches
BATCH_FILES = 128
BATCH_BYTES = 4 << 20
INFLIGHT_BYTES = 64 << 20  # bounds memory held by queued writes
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
class Member:
    path: str
    type: str
    mode: int
    mtime_ns: int
    uid: int
    gid: int
    size: int
    link: str | None


@dataclass
class ExtractStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    members: int = 0


def _mtime_ns(info: tarfile.TarInfo) -> int:
    exact = info.pax_headers.get("mtime")
    if exact:
        try:
            return int(Decimal(exact) * 1_000_000_000)
        except ArithmeticError:
            pass
    return int(info.mtime) * 1_000_000_000


EXTERNAL_HINT = (
    "without --refuse-external-links such links are created as links (never followed; "
    "nothing is ever written through them)"
)
CHAIN = "symlink leads outside the destination through other symlinks of the archive"


def link_leaves(path: str, target: str) -> str | None:
    """Why the symlink `path -> target` points outside the destination by its own
    text (absolute, or climbing above the top), or None when it stays inside."""
    if target.startswith("/"):
        return f"symlink to absolute path {target!r}"
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        return "symlink pointing outside the destination"
    return None


def refused_link(path: str, why: str) -> IntegrityError:
    """The error for a symlink pointing outside, when such links are refused."""
    return IntegrityError(f"archive member {path!r}: {why}; refused", hint=EXTERNAL_HINT)


def check_member(
    info: tarfile.TarInfo, symlinks: set[str], *, external_links: bool = False
) -> Member:
    """Validate one tar member against the hostile-archive rules; return it normalized.

    `external_links` admits symlinks whose targets lie outside the destination
    (pass it for members that are not written, or when such links are
    restored as links); paths through any symlink of the archive stay refused
    either way.
    """
    name = info.name
    where = f"archive member {name!r}"
    if not name or name.startswith("/") or ("\\" in name and name.startswith("\\")):
        raise IntegrityError(f"{where}: absolute path refused")
    parts = name.rstrip("/").split("/")
    if any(p in ("..",) for p in parts):
        raise IntegrityError(f"{where}: '..' in path refused")
    parts = [p for p in parts if p not in ("", ".")]
    if not parts or "\x00" in name:
        raise IntegrityError(f"{where}: empty or invalid path refused")
    path = "/".join(parts)
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in symlinks:
            raise IntegrityError(
                f"{where}: path goes through a symlink from the same archive; refused"
            )
    if path in symlinks:  # a folder here would be chmod-ed through the link
        raise IntegrityError(f"{where}: replaces a symlink from the same archive; refused")
    if info.isdir():
        kind = "dir"
    elif info.isreg():
        kind = "file"
    elif info.issym():
        kind = "symlink"
        target = info.linkname
        if not target or "\x00" in target:
            raise IntegrityError(f"{where}: empty or invalid symlink target refused")
        if not external_links and (why := link_leaves(path, target)):
            raise refused_link(name, why)
    elif info.islnk():
        raise IntegrityError(f"{where}: hard links are not written by itsup; refused")
    else:
        raise IntegrityError(f"{where}: device nodes, FIFOs and other special files refused")
    if info.size < 0 or (kind != "file" and info.size):
        raise IntegrityError(f"{where}: absurd size {info.size}")
    return Member(
        path,
        kind,
        info.mode & 0o7777,
        _mtime_ns(info),
        info.uid,
        info.gid,
        info.size if kind == "file" else 0,
        info.linkname or None,
    )


_ENTRY_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}


def check_entry(entry: Entry, symlinks: set[str], *, external_links: bool = False) -> None:
    """Apply the member rules to an index entry, so no plan lists a hostile path.

    Adds the entry to `symlinks` when it is one, as the extractor does.
    """
    info = tarfile.TarInfo(entry.path)
    info.type = _ENTRY_TYPES.get(entry.type, tarfile.FIFOTYPE)  # unknown: refused
    info.linkname = entry.link or ""
    info.size = entry.size
    check_member(info, symlinks, external_links=external_links)
    if entry.type == "symlink":
        symlinks.add(entry.path)


def _resolve(
    start: list[str], target: str, links: dict[str, str], hops: list[int]
) -> list[str] | None:
    """Follow `target` from folder `start` as the OS would, through the archive's
    own symlinks; None when it climbs above the top or reaches an absolute path."""
    if target.startswith("/"):
        return None
    here = list(start)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                return None
            here.pop()
            continue
        here.append(part)
        link = links.get("/".join(here))
        if link is not None:
            hops[0] += 1
            if hops[0] > 40:  # like the OS (ELOOP): give up without going anywhere
                return here
            resolved = _resolve(here[:-1], link, links, hops)
            if resolved is None:
                return None
            here = resolved
    return here


def outward_problem(path: str, links: dict[str, str]) -> str | None:
    """Why the archive's symlink `path` points outside the destination, or None.

    By its own text (absolute, or above the top), or together with other links
    of the archive: `proxy/x/a -> ..` and `proxy/b -> x/a/../../..` both look
    inside, yet `proxy/b` resolves to the folder above the destination.
    """
    target = links[path]
    why = link_leaves(path, target)
    if why is None and _resolve(path.split("/")[:-1], target, links, [0]) is None:
        why = CHAIN
    return why


def outward_links(
    links: dict[str, str], written: Callable[[str], bool] = lambda path: True
) -> list[tuple[str, str]]:
    """The symlinks among `links` (path -> target, in archive order) for which
    `written` holds and that point outside the destination, as (path, target).

    Needs the whole archive's links, so the order of the members does not matter.
    """
    return [(p, t) for p, t in links.items() if written(p) and outward_problem(p, links)]


def refuse_outward(outward: list[tuple[str, str]], links: dict[str, str]) -> None:
    """Refuse the first of `outward` (from outward_links), if any, saying why."""
    for path, _target in outward[:1]:
        raise refused_link(path, outward_problem(path, links) or CHAIN)


def check_link_chains(links: dict[str, str]) -> None:
    """Refuse the first of `links` that points outside, by itself or through others."""
    refuse_outward(outward_links(links), links)


def _match_index(member: Member, expected: Iterator[Entry] | None) -> None:
    if expected is None:
        return
    entry = next(expected, None)
    if entry is None:
        raise IntegrityError(f"archive member {member.path!r} is not in the manifest's index")
    if (entry.path, entry.type, entry.size, entry.link or None) != (
        member.path,
        member.type,
        member.size,
        member.link,
    ):
        raise IntegrityError(
            f"archive member {member.path!r} does not match the manifest's index entry {entry.path!r}"
        )


class Extractor:
    """Writes the selected members of a tar stream below `staging`."""

    def __init__(
        self,
        staging: Path,
        selected: Callable[[str], bool],
        *,
        restore_owner: bool,
        expected: Iterator[Entry] | None = None,
        external_links: bool = False,
        workers: int = 2,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        # Symlinks written (selected) that point outside the destination are
        # created as links with `external_links`, refused without; the ones
        # created are listed in `external` once the stream has been read.
        self.external_links = external_links
        self.external: list[tuple[str, str]] = []
        self.staging = staging
        self.selected = selected
        self.restore_owner = restore_owner
        self.expected = expected
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="restore-write")
        self.budget = _ByteBudget(INFLIGHT_BYTES)
        self.large: queue.SimpleQueue[tuple[str, object, int]] = queue.SimpleQueue()
        self.large_error: BaseException | None = None
        self.large_thread = threading.Thread(
            target=self._large_writer, name="restore-large", daemon=True
        )
        self.large_thread.start()
        self.batch: list[tuple[Member, bytes]] = []
        self.batch_bytes = 0
        self.futures: list[Future[None]] = []
        self.dirs: list[Member] = []
        self.symlinks: set[str] = set()
        self.link_targets: dict[str, str] = {}
        self.current: str | None = None  # the member being read, for error messages
        self.made_dirs: set[str] = set()
        self.stats = ExtractStats()
        self.on_bytes = on_bytes or (lambda n: None)

    # -- writing -----------------------------------------------------------
    def _dest(self, path: str) -> str:
        return os.path.join(self.staging, path)

    def _ensure_parent(self, path: str) -> None:
        parent = posixpath.dirname(path)
        if parent and parent not in self.made_dirs:
            os.makedirs(self._dest(parent), mode=0o700, exist_ok=True)
            p = parent
            while p and p not in self.made_dirs:
                self.made_dirs.add(p)
                p = posixpath.dirname(p)

    def _finish_fd(self, fd: int, m: Member) -> None:
        if self.restore_owner:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, m.mode)
        os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))

    def _write_batch(self, batch: list[tuple[Member, bytes]], size: int) -> None:
        try:
            for m, data in batch:
                fd = os.open(self._dest(m.path), _CREATE, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    self._finish_fd(fd, m)
                finally:
                    os.close(fd)
        finally:
            self.budget.release(size)

    def _flush_batch(self) -> None:
        if self.batch:
            self.budget.acquire(self.batch_bytes)
            self.futures.append(self.pool.submit(self._write_batch, self.batch, self.batch_bytes))
            self.batch, self.batch_bytes = [], 0
            if len(self.futures) > 64:
                self._check_futures()

    def _write_large(self, m: Member, reader: TarReader) -> None:
        """Queue a large file's chunks for the large-file writer thread, in order."""
        fd = os.open(self._dest(m.path), _CREATE, 0o600)
        self.large.put(("open", m, fd))
        remaining = m.size
        while remaining:
            chunk = reader.read(min(CHUNK, remaining))
            self.budget.acquire(len(chunk))
            self.large.put(("data", chunk, fd))
            remaining -= len(chunk)
            self.on_bytes(len(chunk))
        self.large.put(("close", m, fd))

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
                    assert isinstance(item, bytes)
                    n = len(item)
                    if item == _ZEROS[:n]:
                        os.lseek(fd, n, os.SEEK_CUR)  # leave a hole: sparse files stay sparse
                    else:
                        view = memoryview(item)
                        while view:
                            view = view[os.write(fd, view) :]
                elif op == "close":
                    assert isinstance(item, Member)
                    os.ftruncate(fd, item.size)
                    self._finish_fd(fd, item)
            except BaseException as exc:
                failed = exc
            finally:
                if op == "data":
                    self.budget.release(len(item))  # type: ignore[arg-type]
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
                fut.result()
            else:
                keep.append(fut)
        self.futures = keep

    # -- the stream --------------------------------------------------------
    def run(self, stream: IO[bytes]) -> ExtractStats:
        try:
            try:
                self._run(stream)
                self._flush_batch()
            finally:
                self._stop_large_writer()
            self._check_futures(wait=True)
            self._apply_dirs()
        except FileExistsError as exc:  # staging starts empty: the archive repeats a path
            name = os.path.relpath(exc.filename2 or exc.filename, self.staging)
            raise IntegrityError(
                f"archive member {name!r} appears twice in the archive; refused"
            ) from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise ItsupError(
                    f"no space left on the device holding {self.staging.parent}"
                ) from None
            raise ItsupError(
                f"writing below {self.staging.parent}: {exc.strerror or exc}"
            ) from None
        except tarfile.TarError as exc:
            at = f" (at or after member {self.current!r})" if self.current else ""
            raise IntegrityError(f"the archive is damaged{at}: {exc}") from None
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
        return self.stats

    def _run(self, stream: IO[bytes]) -> None:
        reader = TarReader(stream)
        for info in reader:
            # Where links point matters only for those written: checked below.
            m = check_member(info, self.symlinks, external_links=True)
            _match_index(m, self.expected)
            self.current = m.path
            self.stats.members += 1
            if m.type == "symlink":
                self.symlinks.add(m.path)
                self.link_targets[m.path] = m.link or ""
            if not self.selected(m.path):
                continue
            if m.type == "symlink" and not self.external_links:
                why = link_leaves(m.path, m.link or "")
                if why is not None:
                    raise refused_link(m.path, why)
            self._ensure_parent(m.path)
            if m.type == "dir":
                os.makedirs(self._dest(m.path), mode=0o700, exist_ok=True)
                self.made_dirs.add(m.path)
                self.dirs.append(m)
                self.stats.dirs += 1
            elif m.type == "symlink":
                assert m.link is not None
                os.symlink(m.link, self._dest(m.path))
                if self.restore_owner:
                    os.lchown(self._dest(m.path), m.uid, m.gid)
                os.utime(self._dest(m.path), ns=(m.mtime_ns, m.mtime_ns), follow_symlinks=False)
                self.stats.symlinks += 1
            else:
                if m.size <= SMALL:
                    data = reader.read(m.size)
                    self.batch.append((m, data))
                    self.batch_bytes += m.size + 1
                    if len(self.batch) >= BATCH_FILES or self.batch_bytes >= BATCH_BYTES:
                        self._flush_batch()
                    self.on_bytes(m.size)
                else:
                    self._write_large(m, reader)
                self.stats.files += 1
                self.stats.bytes += m.size
        self.external = outward_links(self.link_targets, self.selected)
        if not self.external_links:  # only chains are left to find here
            refuse_outward(self.external, self.link_targets)
        if self.expected is not None:
            extra = next(self.expected, None)
            if extra is not None:
                raise IntegrityError(
                    f"the manifest's index lists {extra.path!r}, which the archive lacks"
                )
        # Read to the end so compression trailers (CRC, length) are checked.
        with contextlib.suppress(AttributeError):
            while stream.read(CHUNK):
                pass

    def _apply_dirs(self) -> None:
        for m in sorted(self.dirs, key=lambda d: d.path.count("/"), reverse=True):
            path = self._dest(m.path)
            if self.restore_owner:
                os.lchown(path, m.uid, m.gid)
            os.chmod(path, m.mode)
            os.utime(path, ns=(m.mtime_ns, m.mtime_ns))
