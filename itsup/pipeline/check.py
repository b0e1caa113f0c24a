"""Check an archive object against its manifest and file index, without writing.

Used by `itsup backup verify`: the object is streamed through the very
stages a restore reads it with (`codec.decode`: SHA-256, age, gunzip, the
tar reader), nothing lands on disk, and every member is compared with the
next index entry. The file contents of a chosen set of members can be
re-hashed on the way and compared with the SHA-256 the index records.
Where the object comes from is the caller's business: it hands over a
stream, and a way to read the object once more.
"""

from __future__ import annotations

import contextlib
import hashlib
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from itsup.errors import IntegrityError
from itsup.manifest import Entry, Manifest
from itsup.pipeline.codec import decode
from itsup.pipeline.extract import check_member
from itsup.pipeline.stream import hash_stream
from itsup.pipeline.tarformat import TarReader

CHUNK = 1 << 20


@dataclass
class ArchiveCheck:
    """What streaming one archive found."""

    archive_bytes: int = 0  # bytes of the object read (both passes, when a second was needed)
    sha256_ok: bool = False
    members: int = 0
    files: int = 0
    data_bytes: int = 0  # member content bytes seen
    files_hashed: int = 0
    bytes_hashed: int = 0
    mismatched: list[str] = field(default_factory=list)  # files whose content hash differs
    problems: list[str] = field(default_factory=list)  # in the order worth telling

    @property
    def ok(self) -> bool:
        return not self.problems


def _kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "dir"
    if info.isreg():
        return "file"
    if info.issym():
        return "symlink"
    return "special"


def _describe(kind: str, size: int, link: str | None) -> str:
    if kind == "file":
        return f"file of {size} bytes"
    if kind == "symlink":
        return f"symlink to {link!r}"
    return kind


def check_archive(
    stream: BinaryIO,
    manifest: Manifest,
    identities: list[Any],
    entries: Iterable[Entry],
    sample: set[str] | frozenset[str] = frozenset(),
    *,
    reopen: Callable[[], BinaryIO],
    copy_to: Callable[[str], BinaryIO | None] | None = None,
) -> ArchiveCheck:
    """Stream `manifest`'s archive from `stream` and compare it with the index `entries`.

    Checks, in one pass: the object's size and SHA-256 against the manifest;
    that it decrypts and decompresses to its end (trailers included); that
    the tar members are, in order, the index entries (path, type, size,
    link); and, for the regular files whose paths are in `sample`, that the
    SHA-256 of their content is the one the index records. Problems are
    collected, not raised; storage and key errors (StorageError,
    ConfigError) are raised as they are. `stream` is closed on return.
    When decoding stops part way, the object is read once more from
    `reopen()`, only hashed, to tell damage in storage from damage written.
    """
    ref = manifest.archive
    key = ref.key
    result = ArchiveCheck()
    decode_problem: str | None = None
    stream_problems: list[str] = []
    try:
        top, hashed = decode(stream, manifest, identities)
    except BaseException:
        stream.close()
        raise
    try:
        try:
            _compare(top, iter(entries), sample, result, stream_problems, copy_to)
            while top.read(CHUNK):  # to the end: the gzip trailer (CRC, length) is checked
                pass
        except IntegrityError as exc:
            decode_problem = exc.message
        except tarfile.TarError as exc:
            decode_problem = f"{key}: not a readable tar stream: {exc}"
        if decode_problem is None:
            hashed.drain()
    finally:
        top.close()
        size, digest = hashed.size, hashed.sha256.hexdigest()
        with contextlib.suppress(Exception):
            hashed.close()
    if decode_problem is not None:
        # The decoders stopped part way: hash the stored object on its own, so the
        # report says whether it is still the object the backup wrote.
        more, digest = hash_stream(reopen())
        result.archive_bytes = size + more
        size = more
    else:
        result.archive_bytes = size
    problems: list[str] = []
    if size != ref.size or digest != ref.sha256:
        sizes = "" if size == ref.size else f" ({size} bytes read, {ref.size} recorded)"
        problems.append(
            f"{key}: SHA-256 does not match the manifest{sizes}: the stored object is not "
            "the one the backup wrote"
        )
    else:
        result.sha256_ok = True
    if decode_problem is not None:
        problems.append(decode_problem)
    problems.extend(stream_problems)
    if result.mismatched:
        first, more = result.mismatched[0], len(result.mismatched) - 1
        problems.append(
            f"{first}: its content does not match the SHA-256 in the file index"
            + (f" (and {more} more file(s))" if more else "")
        )
    result.problems = problems
    return result


def _compare(
    stream: BinaryIO,
    expected: Any,
    sample: set[str] | frozenset[str],
    result: ArchiveCheck,
    problems: list[str],
    copy_to: Callable[[str], BinaryIO | None] | None = None,
) -> None:
    """Walk the tar stream; record member-list and content problems in `problems`."""
    reader = TarReader(stream)
    symlinks: set[str] = set()
    paths: set[str] = set()  # a path given twice would restore as whichever came last
    in_step = True  # members still pair with index entries one to one
    current: str | None = None
    try:
        for info in reader:
            result.members += 1
            try:
                member = check_member(info, symlinks, external_links=True)
            except IntegrityError as exc:
                if in_step:
                    problems.append(exc.message)
                in_step = False
                continue
            current = member.path
            if member.path in paths:
                if in_step:
                    problems.append(f"archive member {member.path!r} appears twice in the archive")
                in_step = False
                continue
            paths.add(member.path)
            if member.type == "symlink":
                symlinks.add(member.path)
            if member.type == "file":
                result.files += 1
                result.data_bytes += member.size
            if not in_step:
                continue
            entry = next(expected, None)
            if entry is None:
                problems.append(f"archive member {member.path!r} is not in the file index")
                in_step = False
                continue
            seen = (member.path, member.type, member.size, member.link)
            listed = (entry.path, entry.type, entry.size, entry.link or None)
            if seen != listed:
                problems.append(
                    f"archive member {member.path!r} ({_describe(*seen[1:])}) does not match "
                    f"the file index entry {entry.path!r} ({_describe(*listed[1:])})"
                )
                in_step = False
                continue
            if member.type == "file" and member.path in sample:
                copy = copy_to(member.path) if copy_to is not None else None
                _hash_member(reader, member.path, member.size, entry, result, copy)
    except tarfile.TarError as exc:
        at = f" (at or after member {current!r})" if current else ""
        raise tarfile.TarError(f"{exc}{at}") from None
    if in_step:
        extra = next(expected, None)
        if extra is not None:
            problems.append(f"the file index lists {extra.path!r}, which the archive lacks")


def _hash_member(
    reader: TarReader,
    path: str,
    size: int,
    entry: Entry,
    result: ArchiveCheck,
    copy: BinaryIO | None = None,
) -> None:
    digest = hashlib.sha256()
    left = size
    while left:
        data = reader.read(min(CHUNK, left))
        digest.update(data)
        if copy is not None:
            copy.write(data)
        left -= len(data)
    result.files_hashed += 1
    result.bytes_hashed += size
    if digest.hexdigest() != entry.sha256:  # an index without a hash for a file lies too
        result.mismatched.append(path)
