"""One backup or restore into the live tree at a time per host root.

An flock on `<root>/.itsup-backup.lock`: the kernel drops it when its holder
dies, so a lock left by a killed run is never stale. The file records the
holder's operation, PID and start time for the message a second run prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from itsup.errors import LockedError


@contextlib.contextmanager
def host_lock(path: Path, operation: str = "backup") -> Iterator[None]:
    """Hold the host lock for `operation` ("backup", "restore"); LockedError if taken."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise LockedError(
                f"another itsup backup or restore is running for this host root "
                f"({holder}; lock {path})",
                hint="wait for it to finish; the lock is released automatically when it exits",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            f"{operation} pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n".encode(),
            0,
        )
        yield
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
