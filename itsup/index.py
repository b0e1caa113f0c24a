"""A generation's file index, fetched from its target and checked against its manifest.

Restore, verify and the drill read the index the same way, so a damaged or
missing one is reported in the same words by each.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

from isal import isal_zlib

from itsup.errors import ConfigError, IntegrityError, NotFoundError
from itsup.manifest import Entry, IndexWriter, Manifest
from itsup.pipeline.crypt import EncryptingWriter, decrypting_reader
from itsup.pipeline.stream import HashingWriter
from itsup.storage.base import Target


class IndexSpool:
    """A generation's file index (gzip-compressed JSON lines) held in an anonymous
    temporary file instead of memory, read as often as needed.

    At a million files the index is tens of MiB: holding it (and the objects
    parsed from it) for a whole restore made memory grow with the number of
    files. The file is unlinked from the start, so nothing is left behind,
    whatever ends the process.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        # 0600 and already unlinked; closed by close()
        self.file = tempfile.TemporaryFile(prefix="itsup-index-")  # noqa: SIM115

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> IndexSpool:
        spool = cls(what)
        spool.file.write(data)
        spool.file.flush()
        return spool

    def raw(self) -> BinaryIO:
        """The stored (compressed) bytes from the start; each call reads independently."""
        return io.BufferedReader(_PositionalReader(self.file.fileno()), 1 << 20)

    def lines(self) -> Iterator[bytes]:
        """The index's JSON lines as bytes (blank lines skipped), streamed.

        Inflated a MiB of input at a time and split in C: gzip.GzipFile's line
        reading inflated in 8 KiB steps and cost more than the rest of a restore's
        handling of a small file."""
        raw = self.raw()
        carry = b""
        inflate = isal_zlib.decompressobj(31)
        try:
            while True:
                data = raw.read(1 << 20)
                if not data:
                    break
                while data:
                    out = inflate.decompress(data)
                    data = b""
                    if inflate.eof:  # a gzip member ended: another may follow
                        data = inflate.unused_data
                        inflate = isal_zlib.decompressobj(31) if data else inflate
                    if out:
                        lines = (carry + out).split(b"\n")
                        carry = lines.pop()
                        for line in lines:
                            if line:
                                yield line
        except (OSError, EOFError, zlib.error, isal_zlib.error):  # type: ignore[misc]
            raise IntegrityError(f"{self.what}: the file index is damaged") from None
        if not inflate.eof or carry.strip():  # cut short
            raise IntegrityError(f"{self.what}: the file index is damaged") from None

    def entries(self) -> Iterator[Entry]:
        """The index as Entry objects (slower than `lines`: for checks, not the hot path)."""
        for line in self.lines():
            try:
                yield Entry.from_json(line.decode())
            except (ValueError, TypeError, UnicodeDecodeError):
                raise IntegrityError(f"{self.what}: the file index is damaged") from None

    def close(self) -> None:
        self.file.close()


class IndexFile:
    """The file index a backup writes, as it will be stored: gzip-compressed lines,
    age-encrypted to `recipients` when there are any, spooled into an unlinked
    temporary file as the archive is written. At a million files that is tens of
    MiB a backup never holds in memory. `writer` takes the lines; after `finish`,
    `size` and `sha256` are the stored object's and `chunks` reads it back (from
    several threads at once: one per target)."""

    def __init__(self, recipients: list[Any]) -> None:
        # 0600 and already unlinked; closed by close()
        self.file = tempfile.TemporaryFile(prefix="itsup-index-")  # noqa: SIM115
        self.hashed = HashingWriter(self.file)
        self.encrypting = EncryptingWriter(self.hashed, recipients) if recipients else None
        self.writer = IndexWriter(self.encrypting or self.hashed)  # type: ignore[arg-type]
        self.size = 0
        self.sha256 = ""
        self.finished = False

    def finish(self) -> None:
        """End the index: compressed, encrypted, written out; its size and SHA-256."""
        self.finished = True
        self.writer.close()
        if self.encrypting is not None:
            self.encrypting.close()
        self.file.flush()
        self.size, self.sha256 = self.hashed.size, self.hashed.sha256.hexdigest()

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The stored bytes, `size` at a time, from the start."""
        fd, offset = self.file.fileno(), 0
        while offset < self.size:
            chunk = os.pread(fd, min(size, self.size - offset), offset)
            if not chunk:
                raise OSError(f"the spooled file index ended at {offset} of {self.size} bytes")
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        if self.encrypting is not None and not self.finished:
            with contextlib.suppress(Exception):  # a failed run: stop the encrypting thread
                self.encrypting.close()
        self.file.close()


class _PositionalReader(io.RawIOBase):
    """Reads a file descriptor with pread, from offset 0: readers never share a position."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd
        self.offset = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = os.pread(self.fd, len(b), self.offset)
        n = len(data)
        b[:n] = data
        self.offset += n
        return n


def spool_index(target: Target, manifest: Manifest, identities: list[Any]) -> IndexSpool:
    """Fetch the file index into an IndexSpool, streamed, checked against the manifest
    (size and SHA-256) and decrypted when it is encrypted: memory stays flat."""
    ref = manifest.index
    missing = IntegrityError(f"{manifest.generation}: its file index {ref.key} is missing")
    spool = IndexSpool(ref.key)
    try:
        stored = spool if not manifest.encrypted else IndexSpool(ref.key)
        try:
            digest, size = hashlib.sha256(), 0
            try:
                with contextlib.closing(target.open_reader(ref.key)) as raw:
                    while chunk := raw.read(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                        stored.file.write(chunk)
            except NotFoundError:
                raise missing from None
            stored.file.flush()
            if size != ref.size or digest.hexdigest() != ref.sha256:
                raise IntegrityError(
                    f"{manifest.generation}: its file index {ref.key} does not match the manifest"
                )
            if manifest.encrypted:
                _decrypt_into(stored, spool, manifest, identities)
        finally:
            if stored is not spool:
                stored.close()
    except BaseException:
        spool.close()
        raise
    return spool


def _decrypt_into(
    stored: IndexSpool, spool: IndexSpool, manifest: Manifest, identities: list[Any]
) -> None:
    """Decrypt the stored index into `spool`, streamed, with decode_index's messages."""
    plain = decrypting_reader(stored.raw(), identities, manifest.index.key)
    try:
        while chunk := plain.read(1 << 20):
            spool.file.write(chunk)
    except ConfigError as exc:
        raise ConfigError(
            f"{manifest.generation}: none of the age identities can decrypt it",
            hint="point backup.encryption.identity_file or ITSUP_AGE_IDENTITY at "
            "the key matching the recipients it was encrypted to",
        ) from exc
    except IntegrityError as exc:
        raise IntegrityError(
            f"{manifest.generation}: cannot decrypt its file index ({exc.message})"
        ) from None
    finally:
        plain.close()
    spool.file.flush()
