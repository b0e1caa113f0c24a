"""Small files read by processes of their own, beside the backup's walk.

Storing a small file is five system calls (open, fstat, read, fstat, close),
a header, a SHA-256 and an index line, about 15 µs of Python; one interpreter
runs them on one core. A reader process has its own interpreter: the backup
walks the tree and compresses, readers read and frame, and every core works
(`archive.write_archive` starts them once a tree proves large).

Protocol, over the child's stdin and stdout (`child.py`'s frames): the
parent sends batches, each a list of (archive path, path on disk, lstat or
None) in archive order, exactly as `archive.walk` yields them; a zero-length
frame ends the input. For each batch the reader answers, in order:

- `("data", size, lines, read, problems, skipped)` followed by `size` bytes of
  tar stream (headers, data, padding): the members stored since the last
  frame, their index lines, the bytes of file data read, and the problems and
  skipped special files found, as (path, text) pairs;
- `("large", i)`: item `i` of the batch is a file larger than `archive.SMALL`;
  the parent stores it itself, streamed, where it stands in the order;
- `("end", files, dirs, symlinks, bytes)`: the batch is done.

An unexpected failure ends the reader with `("error", errno, text, filename)`
(errno None when it was not an OSError). What the reader stores is exactly
what `TarWriter` stores in the backup's own process: the same class does it.
"""

from __future__ import annotations

import signal
from typing import Any

from itsup.pipeline import child
from itsup.pipeline.archive import Problem, Stats, TarWriter


class _Frames:
    """The reader's sink: gathers what one TarWriter flush hands over, sends it as a frame."""

    def __init__(self, fd: int, stats: Stats) -> None:
        self.fd = fd
        self.stats = stats
        self.data: list[bytes] = []
        self.lines: list[str] = []
        self.read = 0
        self.item = 0  # the batch's item being stored

    def write(self, data: bytes) -> int:
        self.data.append(data)
        return len(data)

    def add_lines(self, lines: list[str]) -> None:
        self.lines += lines

    def count(self, n: int) -> None:
        self.read += n

    def emit(self) -> None:
        stats = self.stats
        if not (self.data or self.lines or stats.problems or stats.skipped):
            return
        data = b"".join(self.data)
        child.send(
            self.fd,
            (
                "data",
                len(data),
                self.lines,
                self.read,
                _pairs(stats.problems),
                _pairs(stats.skipped),
            ),
            data,
        )
        self.data, self.lines, self.read = [], [], 0
        stats.problems.clear()
        stats.skipped.clear()

    def large(self, rel: str, absolute: str) -> None:
        self.emit()
        child.send(self.fd, ("large", self.item))


def _pairs(problems: list[Problem]) -> list[tuple[str, str]]:
    return [(p.path, p.problem) for p in problems]


def _no_entry(entry: Any) -> None:  # every entry arrives as a line (on_lines)
    raise AssertionError("the reader's TarWriter hands over lines only")


def serve(fd_in: int, fd_out: int) -> None:
    """Answer batches from `fd_in` on `fd_out` until the zero-length frame."""
    stats = Stats()
    frames = _Frames(fd_out, stats)
    writer = TarWriter(
        frames, _no_entry, frames.count, on_lines=frames.add_lines, on_large=frames.large
    )
    try:
        while (batch := child.receive(fd_in)) is not None:
            add = writer.add
            for i, (rel, absolute, st) in enumerate(batch):
                frames.item = i
                add(rel, absolute, st, stats)
                if frames.data:  # the writer handed over a batch of about FLUSH bytes
                    frames.emit()
            writer.flush()
            frames.emit()
            child.send(fd_out, ("end", stats.files, stats.dirs, stats.symlinks, stats.bytes))
            stats.files = stats.dirs = stats.symlinks = stats.bytes = 0
    finally:
        writer.close()


def main() -> None:
    """The reader process (started by `archive.write_archive` through `child.start`)."""
    # The parent decides when to stop: a Ctrl-C reaches the whole process group,
    # and the parent then ends or kills its readers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        serve(0, 1)
    except (EOFError, BrokenPipeError):  # the parent is gone or stopped early
        pass
    except OSError as exc:
        child.send(1, ("error", exc.errno, exc.strerror or str(exc), exc.filename))
    except Exception as exc:  # told to the parent, which reports it
        child.send(1, ("error", None, f"{type(exc).__name__}: {exc}", None))


if __name__ == "__main__":
    main()
