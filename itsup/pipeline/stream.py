"""Small stream stages shared by backup and restore."""

from __future__ import annotations

import hashlib
import io
import queue
import threading
import zlib
from typing import Any, BinaryIO, Protocol, cast

from isal import isal_zlib

from itsup.errors import IntegrityError, ItsupError

# What a damaged compressed stream raises (isal's stubs call its error class an instance).
_DECODE_ERRORS = (EOFError, ValueError, OSError, zlib.error, cast(type[Exception], isal_zlib.error))


class Writable(Protocol):
    def write(self, data: bytes) -> int: ...


class HashingWriter(io.RawIOBase):
    """Pass bytes downstream while counting them and computing their SHA-256."""

    def __init__(self, downstream: Writable) -> None:
        super().__init__()
        self.downstream = downstream
        self.sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.downstream.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


class HashingReader(io.RawIOBase):
    """Read from upstream while counting bytes and computing their SHA-256."""

    def __init__(self, upstream: BinaryIO) -> None:
        super().__init__()
        self.upstream = upstream
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        # Passed through as is: no copy on the restore path's hottest stage.
        data = self.upstream.read(-1 if size is None else size)
        self.sha256.update(data)
        self.size += len(data)
        return bytes(data)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def drain(self) -> None:
        """Read to the end, so the hash covers the whole object."""
        while self.read(1 << 20):
            pass

    def close(self) -> None:
        self.upstream.close()
        super().close()


def hash_stream(stream: BinaryIO) -> tuple[int, str]:
    """Size and SHA-256 of `stream`, read to its end and then closed (nothing written)."""
    hashed = HashingReader(stream)
    try:
        hashed.drain()
    finally:
        hashed.close()
    return hashed.size, hashed.sha256.hexdigest()


_EOF = object()


class Pipe:
    """A bounded in-memory pipe between two threads, carrying failures both ways."""

    def __init__(self, max_chunks: int = 8) -> None:
        self.q: queue.Queue[Any] = queue.Queue(max_chunks)
        self.error: BaseException | None = None  # set by the reading side
        self.reader = _PipeReader(self)

    def write(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        if data:
            self._put(bytes(data))
        return len(data)

    def _put(self, item: Any) -> None:
        while True:
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                if self.error is not None:
                    raise self.error from None

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self._put(_EOF)

    def fail(self, exc: BaseException) -> None:
        """Writer side failed: the reader raises `exc` at its next read."""
        self._put(exc)


class _PipeReader(io.RawIOBase):
    def __init__(self, pipe: Pipe) -> None:
        super().__init__()
        self.pipe = pipe
        self.current = memoryview(b"")
        self.eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if not self.current:
            if self.eof:
                return 0
            item = self.pipe.q.get()
            if item is _EOF or isinstance(item, BaseException):
                self.eof = True  # a failure is reported once; then the stream is over
                if isinstance(item, BaseException):
                    raise item
                return 0
            self.current = memoryview(item)
        n = min(len(b), len(self.current))
        b[:n] = self.current[:n]
        self.current = self.current[n:]
        return n

    def close(self) -> None:
        """Reader gone: the writing side fails at its next write instead of blocking."""
        if self.pipe.error is None:
            self.pipe.error = BrokenPipeError("the reading side of the pipe was closed")
        super().close()


class Worker(threading.Thread):
    """A thread that records its exception for the caller to re-raise."""

    def __init__(self, target: Any, name: str) -> None:
        super().__init__(target=self._run, name=name, daemon=True)
        self._fn = target
        self.exc: BaseException | None = None

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:
            self.exc = exc

    def join_and_raise(self) -> None:
        self.join()
        if self.exc is not None:
            raise self.exc


class GuardedReader(io.RawIOBase):
    """Turn decoding failures of an archive stream into IntegrityError naming `what`."""

    def __init__(self, upstream: BinaryIO, what: str) -> None:
        super().__init__()
        self.upstream = upstream
        self.what = what

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            return bytes(self.upstream.read(-1 if size is None else size))
        except ItsupError:
            raise
        except _DECODE_ERRORS as exc:
            raise IntegrityError(
                f"{self.what}: the archive is damaged ({exc or type(exc).__name__})"
            ) from None

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        n = len(data)
        b[:n] = data
        return n
