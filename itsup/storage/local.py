"""A local directory target: the same object names as S3, as files.

Objects are written to a temporary name beside the final one, flushed to
disk, then renamed, so a key either holds a complete object or nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from itsup.errors import NotFoundError, StorageError
from itsup.fsutil import fsync_dir
from itsup.storage.base import ObjectInfo, Retention

PARTIAL_MARK = ".partial-"
# Backups hold acme.json's private keys and volumes' data: only the owner reads them.
FILE_MODE, DIR_MODE = 0o600, 0o700


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, FILE_MODE)


# What the OS says when no object file is at a key: nothing there, a folder
# there (an S3 "prefix", not an object), or a file where a folder would be.
_ABSENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


class LocalWriter:
    def __init__(self, final: Path, name: str) -> None:
        self.final = final
        self.tmp = final.with_name(f"{final.name}{PARTIAL_MARK}{secrets.token_hex(4)}")
        self.name = name
        self.size = 0
        try:
            final.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            self.fh = open(self.tmp, "xb", opener=_private)  # noqa: SIM115 - closed in commit/abort
        except OSError as exc:
            raise StorageError(f"{name}: cannot create {self.tmp}: {exc.strerror}") from None

    def write(self, data: bytes) -> int:
        try:
            n = self.fh.write(data)
        except OSError as exc:
            raise StorageError(f"{self.name}: writing {self.final}: {exc.strerror}") from None
        self.size += n
        return n

    def commit(self) -> int:
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            os.replace(self.tmp, self.final)
            fsync_dir(self.final.parent)
        except OSError as exc:
            self.abort()
            raise StorageError(f"{self.name}: finishing {self.final}: {exc.strerror}") from None
        return self.size

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


class LocalTarget:
    """Objects as files below `base`; keys map to relative paths."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.name = str(base)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if (
            not key
            or key.startswith("/")
            or any(p in ("", ".", "..") for p in parts[:-1])
            or parts[-1] in ("", ".", "..")
        ):
            raise StorageError(f"{self.name}: invalid object key {key!r}")
        return self.base.joinpath(*parts)

    def put(self, key: str, data: bytes) -> None:
        writer = self.open_writer(key)
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        writer.commit()

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except _ABSENT:
            raise NotFoundError(f"{self.name}: no object {key}") from None
        except OSError as exc:
            raise StorageError(f"{self.name}: reading {key}: {exc.strerror}") from None

    def open_writer(self, key: str) -> LocalWriter:
        return LocalWriter(self._path(key), self.name)

    def open_reader(self, key: str, start: int = 0) -> BinaryIO:
        try:
            stream = open(self._path(key), "rb")  # noqa: SIM115 - the caller closes it
        except _ABSENT:
            raise NotFoundError(f"{self.name}: no object {key}") from None
        except OSError as exc:
            raise StorageError(f"{self.name}: reading {key}: {exc.strerror}") from None
        if start:
            size = os.fstat(stream.fileno()).st_size
            if start > size:
                stream.close()
                raise StorageError(
                    f"{self.name}: {key} holds {size} bytes; cannot read from {start}"
                )
            stream.seek(start)
        return stream

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except _ABSENT:
            raise NotFoundError(f"{self.name}: no object {key}") from None
        except OSError as exc:
            raise StorageError(f"{self.name}: {key}: {exc.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"{self.name}: no object {key}")
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def _folder(self, prefix: str) -> Path | None:
        """The folder holding the keys that start with `prefix`, if it exists."""
        folder, _, _ = prefix.rpartition("/")
        start = self.base / folder if folder else self.base
        try:
            return start if start.is_dir() else None
        except OSError as exc:  # a name too long, a folder we may not enter
            raise StorageError(
                f"{self.name}: cannot read {prefix or 'its folder'}: {exc.strerror}"
            ) from None

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        start = self._folder(prefix)
        if start is None:
            return
        for dirpath, _dirs, files in os.walk(start):
            for fname in files:
                if PARTIAL_MARK in fname:
                    continue
                full = Path(dirpath) / fname
                key = full.relative_to(self.base).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        st = full.stat()
                        yield ObjectInfo(key, st.st_size, st.st_mtime)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except _ABSENT:
            pass
        except OSError as exc:
            raise StorageError(f"{self.name}: deleting {key}: {exc.strerror}") from None

    def delete_many(self, keys: Sequence[str]) -> dict[str, StorageError]:
        failures = {}
        for key in keys:
            try:
                self.delete(key)
            except StorageError as exc:
                failures[key] = exc
        return failures

    def copy(self, src: str, dst: str) -> None:
        source, final = self._path(src), self._path(dst)
        self.stat(src)  # NotFoundError unless `src` is an object
        tmp = final.with_name(f"{final.name}{PARTIAL_MARK}{secrets.token_hex(4)}")
        try:
            final.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            try:
                os.link(source, tmp)  # no second copy of the data on disk
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise
                shutil.copyfile(source, tmp)
                os.chmod(tmp, FILE_MODE)
            os.replace(tmp, final)
        except FileNotFoundError:
            raise NotFoundError(f"{self.name}: no object {src}") from None
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise StorageError(f"{self.name}: copying {src} to {dst}: {exc.strerror}") from None

    def cleanup_incomplete(self, prefix: str) -> int:
        start = self._folder(prefix)
        removed = 0
        if start is not None:
            for dirpath, _dirs, files in os.walk(start):
                for fname in files:
                    if PARTIAL_MARK not in fname:
                        continue
                    full = Path(dirpath) / fname
                    key = full.relative_to(self.base).as_posix().rpartition(PARTIAL_MARK)[0]
                    if key.startswith(prefix):
                        with contextlib.suppress(OSError):
                            full.unlink()
                            removed += 1
        return removed

    def may_lock(self) -> bool:
        return False

    def retention(self, key: str) -> Retention | None:
        """A folder keeps no Object Lock retention: its objects are never locked."""
        self.stat(key)  # NotFoundError for a missing key, as on S3
        return None
