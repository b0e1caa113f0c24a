"""The archive's two stacks of stages, each the inverse of the other.

    encode:  tar (SHA-256 per file) -> gzip (ISA-L threads) -> age -> SHA-256 -> sink
    decode:  stream -> SHA-256 -> age -> gunzip -> guarded reader -> tar members

Neither knows where the bytes are stored: `encode` writes to any object with
a `write` (the backup hands it its target's object writer, and commits or
aborts that itself), `decode` reads any binary stream (restore, verify and
the drill hand it the object reader they opened). The file index is stored
encrypted like the archive: `encode_index` and `decode_index`.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

from itsup.agekeys import pyrage_module
from itsup.errors import ConfigError, IntegrityError
from itsup.manifest import Entry, Manifest
from itsup.pipeline.archive import Selection, Stats, write_archive
from itsup.pipeline.compress import ParallelGzipWriter
from itsup.pipeline.crypt import EncryptingWriter, decrypting_reader
from itsup.pipeline.decompress import gunzip_reader
from itsup.pipeline.stream import GuardedReader, HashingReader, HashingWriter, Writable

log = logging.getLogger("itsup.backup")
MiB = 1024 * 1024


@dataclass
class Encoded:
    """What `encode` wrote: the archive's figures, and the bytes handed to the sink."""

    stats: Stats
    size: int
    sha256: str


def encode(
    sink: Writable,
    root: Path,
    selection: Selection,
    *,
    codec: str,
    level: int,
    threads: int,
    recipients: list[Any],
    on_entry: Callable[[Entry], None],
    on_bytes: Callable[[int], None] | None = None,
    extras: Callable[[], list[tuple[str, str, str | None]]] | None = None,
) -> Encoded:
    """Write the selected tree to `sink`: tar -> compress (`codec`) -> age (when there are
    `recipients`) -> SHA-256 of the bytes written.

    Every stage is finished on return, so the whole object is in `sink`. On a
    failure the compressor is stopped without finishing its output and the
    error raised; what `sink` already holds is the caller's to discard.
    """
    compressor = None
    try:
        hashed = HashingWriter(sink)
        encryptor = EncryptingWriter(hashed, recipients) if recipients else None
        compressor = _open_compressor(encryptor or hashed, codec, level, threads)
        stats = write_archive(root, selection, compressor, on_entry, on_bytes, extras)
        compressor.close()
        if encryptor is not None:
            encryptor.close()
        stats.extras_offset = _extras_offset(stats, compressor, bool(recipients))
    except BaseException:
        if compressor is not None:
            _abandon(compressor)
        raise
    return Encoded(stats, hashed.size, hashed.sha256.hexdigest())


def _extras_offset(stats: Stats, compressor: Any, encrypted: bool) -> int | None:
    """Where, in the stored object, a reader can start to read the extras alone: the
    gzip member they begin, or their first tar header uncompressed. None when
    encrypted (age's chunks cannot be entered in the middle) or there are none."""
    if stats.extras_at is None or encrypted:
        return None
    if isinstance(compressor, ParallelGzipWriter):
        return compressor.member_offsets[-1] if compressor.member_offsets else None
    return stats.extras_at


class _RawSink(io.RawIOBase):
    """Any stage with a `write` as a raw stream, so io.BufferedWriter can batch into it.

    Closing it does not close the stage: encode closes each stage itself.
    """

    def __init__(self, sink: Any) -> None:
        super().__init__()
        self.sink = sink

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sink.write(bytes(data))
        return len(data)


def _open_compressor(sink: Any, codec: str, level: int, threads: int) -> Any:
    if codec == "gzip":
        return ParallelGzipWriter(sink, level=level, threads=threads)
    return io.BufferedWriter(_RawSink(sink), MiB)


def _abandon(stream: Any) -> None:
    """Stop a compressor after a failure without finishing its output.

    A buffered writer must not flush into the aborted upload when it is
    garbage-collected later, so its raw stage is detached first.
    """
    try:
        if isinstance(stream, ParallelGzipWriter):
            stream.abandon()
        elif isinstance(stream, io.BufferedWriter):
            stream.raw.close()
    except Exception:
        log.debug("stopping compressor", exc_info=True)


def decode(
    stream: BinaryIO, manifest: Manifest, identities: list[Any]
) -> tuple[BinaryIO, HashingReader]:
    """Read `manifest`'s archive from `stream`: SHA-256 -> age -> gunzip -> guarded reader.

    Returns the tar stream and the hashing reader right above `stream`, whose
    `size` and `sha256` cover the object bytes read so far (`drain()` reads
    the rest). A damaged stream raises IntegrityError naming the archive; no
    matching key, ConfigError. Closing the tar stream stops every decoding
    stage; `stream` is left to whoever opened it (closing the hashing reader
    closes it too).
    """
    what = manifest.archive.key
    hashed = HashingReader(stream)
    # `hashed` itself, unbuffered: its read(n) passes whole fetched ranges through,
    # and a BufferedReader around it, once collected, would close it before the
    # caller drains it.
    decoded: Any = hashed
    stages: list[Any] = []
    if manifest.encrypted:
        decoded = decrypting_reader(cast(BinaryIO, hashed), identities, what)
        stages.append(decoded)
    if manifest.compression == "gzip":
        decoded = gunzip_reader(GuardedReader(decoded, what))  # type: ignore[arg-type]
        stages.append(decoded)
    return _Decoded(GuardedReader(decoded, what), stages), hashed


def decode_section(stream: BinaryIO, manifest: Manifest) -> BinaryIO:
    """The tar stream of an archive read from `manifest.dumps_offset` on (`stream`
    starts there): the gzip member the dumps begin, or the plain tar, to its end.

    Only an archive that is not encrypted has such a section. The object's
    SHA-256 cannot be checked on part of it: the caller checks each member it
    uses against its recorded SHA-256 instead (gzip's CRC-32 and length are
    checked as the section is read to its end). Closing the returned stream
    stops the decoding; `stream` is left to whoever opened it.
    """
    what = manifest.archive.key
    if manifest.encrypted or manifest.dumps_offset is None:
        raise ValueError(f"{manifest.generation} has no section to read on its own")
    decoded: Any = stream
    stages: list[Any] = []
    if manifest.compression == "gzip":
        decoded = gunzip_reader(GuardedReader(stream, what))  # type: ignore[arg-type]
        stages.append(decoded)
    return _Decoded(GuardedReader(decoded, what), stages)


class _Decoded(io.BufferedReader):
    """The decoded tar stream; closing it closes the decoding stages below, outermost first."""

    def __init__(self, raw: io.RawIOBase, stages: list[Any]) -> None:
        super().__init__(raw, MiB)
        self.stages = stages

    def close(self) -> None:
        try:
            super().close()
        finally:
            for stage in reversed(self.stages):
                with contextlib.suppress(Exception):
                    stage.close()
            self.stages = []


def encode_index(data: bytes, recipients: list[Any]) -> bytes:
    """The file index as stored: encrypted to `recipients` like the archive, if any."""
    return pyrage_module().encrypt(data, recipients) if recipients else data


def decode_index(data: bytes, manifest: Manifest, identities: list[Any]) -> bytes:
    """The stored file index of `manifest`'s generation, decrypted when it is encrypted."""
    if not manifest.encrypted:
        return data
    pyrage = pyrage_module()
    try:
        return pyrage.decrypt(data, identities)
    except pyrage.DecryptError as exc:
        if "no matching keys" in str(exc).lower():  # the bytes are intact: wrong key
            raise ConfigError(
                f"{manifest.generation}: none of the age identities can decrypt it",
                hint="point backup.encryption.identity_file or ITSUP_AGE_IDENTITY at "
                "the key matching the recipients it was encrypted to",
            ) from None
        raise IntegrityError(
            f"{manifest.generation}: cannot decrypt its file index ({exc})"
        ) from None
