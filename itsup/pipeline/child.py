"""The pipeline's helper processes: started isolated, talked to over pipes.

A tree of many small files costs per file, in Python, and one interpreter
runs on one core at a time. The restore writes small files in writer
processes (`writer.py`), the backup reads them in reader processes
(`reader.py`), so both cores work. Each is `python -I` (nothing from the
current folder or the environment's Python settings is imported) started in
"/", with its pipes enlarged to 1 MiB, and talks in frames: an 8-byte length
(little-endian), then a pickle. Only the parent writes a child's stdin; the
child's answers are data from a process the parent started, never from an
archive or the network.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import struct
import subprocess
import sys
from typing import Any

LENGTH = struct.Struct("<Q")
PIPE_SIZE = 1 << 20
_SET_PIPE_SIZE = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_GET_PIPE_SIZE = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def start(module: str) -> subprocess.Popen[bytes]:
    """Run `module`'s main() in a process of its own, its stdin and stdout pipes to us."""
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", f"from {module} import main; main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd="/",
        bufsize=0,
    )
    assert proc.stdin is not None and proc.stdout is not None
    for pipe in (proc.stdin, proc.stdout):
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), _SET_PIPE_SIZE, PIPE_SIZE)
    return proc


def capacity(fd: int) -> int:
    """What the pipe `fd` holds: 1 MiB when enlarging it worked, else the kernel's
    size (64 KiB, or a page where the user has used up pipe-user-pages-soft)."""
    try:
        return int(fcntl.fcntl(fd, _GET_PIPE_SIZE))
    except OSError:
        return 4096


def write_all(fd: int, *parts: bytes) -> None:
    """Write every byte of `parts` to `fd`, in order."""
    for data in parts:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]


def read_exactly(fd: int, n: int) -> bytes:
    """`n` bytes from `fd`; EOFError if it ends first."""
    if not n:
        return b""
    first = os.read(fd, n)
    if len(first) == n:
        return first
    parts, have = [first], len(first)
    while have < n:
        if not parts[-1]:
            raise EOFError
        part = os.read(fd, min(n - have, PIPE_SIZE))
        parts.append(part)
        have += len(part)
    return b"".join(parts)


def send(fd: int, message: Any, data: bytes = b"") -> None:
    """One frame: `message` pickled; `data`, when given, follows it unpickled (the
    message says how long it is)."""
    send_pickled(fd, pickle.dumps(message, protocol=5), data)


def send_pickled(fd: int, payload: bytes, data: bytes = b"") -> None:
    """`send` of a message already pickled (`payload`)."""
    write_all(fd, LENGTH.pack(len(payload)) + payload, data)


def send_end(fd: int) -> None:
    """The zero-length frame: no more input."""
    write_all(fd, LENGTH.pack(0))


def receive(fd: int) -> Any:
    """The next frame's message; None for the zero-length frame. EOFError at the end."""
    (length,) = LENGTH.unpack(read_exactly(fd, LENGTH.size))
    return pickle.loads(read_exactly(fd, length)) if length else None
