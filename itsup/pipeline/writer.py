"""Small files written by a process of their own, beside the restore's reader.

Writing a small file is four system calls (create, write, utime, close) with a
little Python around each. In threads of the restoring process that Python
waits for the interpreter lock the reader holds while it parses the next
members, so a restore of many small files used about one core of two. A
writer process has its own interpreter: the reader parses, it writes, both
cores busy. It imports nothing but the standard library's basics and starts
in about 50 ms, so restores only use it for many files (`unpack.Unpacker`).

Protocol, over the child's stdin and stdout: batches as an 8-byte length
(little-endian) then a pickle of `(base, owner, jobs)`; `base` the staging
folder plus "/", `owner` the (uid, gid) new files get or None when owners
are not restored, `jobs` a list of (path, data, mode, mtime_ns, uid, gid,
live): `live`, when not None, the path of the file's current copy, left
alone when it is already the same (an in-place restore). A zero length ends
the input. The answer is one pickle on stdout: (None, or the first error as
(errno, strerror, filename); how many files were left alone); after an error
the rest of the input is read and dropped. The parent is the only writer of stdin and
trusts nothing but this answer: a writer that dies is an error too.
"""

from __future__ import annotations

import os
import pickle
import signal
import stat
from typing import Any

from itsup.pipeline import child

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def write_files(base: bytes, owner: tuple[int, int] | None, jobs: list[Any], umask: int) -> int:
    """Create each file of `jobs` below `base` (which ends in "/"), as the restore does,
    except those whose live copy (a job's last field, when given) is already the same:
    returns how many were left alone."""
    same = 0
    for path, data, mode, mtime, uid, gid, live in jobs:
        if live is not None and _unchanged(live, data, mode, mtime, uid, gid, owner):
            same += 1
            continue
        fd = os.open(base + os.fsencode(path), _CREATE, mode)
        try:
            if len(data):
                n = os.write(fd, data)
                while n < len(data):
                    n += os.write(fd, memoryview(data)[n:])
            chown = owner is not None and (uid, gid) != owner
            if chown:
                os.fchown(fd, uid, gid)
            if mode & umask or (chown and mode & 0o6000):
                os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime, mtime))
        finally:
            os.close(fd)
    return same


def _unchanged(
    live: bytes, data: bytes, mode: int, mtime: int, uid: int, gid: int, owner: object
) -> bool:
    """Whether the file at `live` is already this one: size, mode, mtime, owner (when
    owners are restored), then its content compared byte for byte."""
    try:
        st = os.lstat(live)
    except OSError:
        return False
    if (
        not stat.S_ISREG(st.st_mode)
        or st.st_size != len(data)
        or st.st_mtime_ns != mtime
        or stat.S_IMODE(st.st_mode) != mode
        or (owner is not None and (st.st_uid != uid or st.st_gid != gid))
    ):
        return False
    try:
        fd = os.open(live, _READ)
    except OSError:
        return False
    try:
        return os.read(fd, len(data) + 1) == data
    except OSError:
        return False
    finally:
        os.close(fd)


def main() -> None:
    """The writer process: batches from stdin, the answer on stdout."""
    # The parent decides when to stop: a Ctrl-C reaches the whole process group,
    # and the parent stops sending, then reads the answer.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    umask = os.umask(0o022)
    os.umask(umask)
    error: tuple[int, str, str | None] | None = None
    same = 0
    try:
        while (batch := child.receive(0)) is not None:
            if error is not None:
                continue
            base, owner, jobs = batch
            try:
                same += write_files(base, owner, jobs, umask)
            except OSError as exc:
                name = exc.filename
                error = (
                    exc.errno or 0,
                    exc.strerror or str(exc),
                    os.fsdecode(name) if name else None,
                )
    except EOFError:
        error = error or (0, "the restore stopped sending", None)
    child.write_all(1, pickle.dumps((error, same)))


if __name__ == "__main__":
    main()
