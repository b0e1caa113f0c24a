"""Generation manifests and file indexes (format: docs/design.md).

A generation is complete when, and only when, its manifest object exists:
the manifest is the last object a backup writes, and it records the size and
SHA-256 of every other object of the generation.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from isal import igzip

from itsup.errors import IntegrityError

FORMAT_NAME = "itsup-backup"
# The manifest's major version. Readers accept their own version and ignore keys
# they do not know (later minor additions, such as fields reserved below, must
# never break an older reader); a higher version is refused with a message
# saying to upgrade, never taken for damage or half read.
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"


@dataclass
class Entry:
    """One archive member as the index records it."""

    path: str
    type: str  # "file" | "dir" | "symlink"
    mode: int
    mtime_ns: int
    uid: int
    gid: int
    size: int = 0
    sha256: str | None = None
    link: str | None = None
    changed: bool = False  # the file changed while it was read

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "path": self.path,
            "type": self.type,
            "mode": self.mode,
            "mtime_ns": self.mtime_ns,
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
        }  # built by hand: dataclasses.asdict costs more than the rest of a small file
        if self.sha256:
            data["sha256"] = self.sha256
        if self.link:
            data["link"] = self.link
        if self.changed:
            data["changed"] = True
        return _dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Entry:
        data = json.loads(line)
        try:
            return cls(**data)
        except TypeError:  # keys a later itsup added: ignored, as in the manifest
            if not isinstance(data, dict):
                raise
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def _dumps(data: Any, **kw: Any) -> str:
    """JSON that always encodes as UTF-8.

    File names that are not UTF-8 reach us as lone surrogates (surrogateescape);
    written as \\udcXX escapes they come back as the very same str.
    """
    text = json.dumps(data, ensure_ascii=False, **kw)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(data, ensure_ascii=True, **kw)
    return text


# Names that stand in a JSON string as they are: printable ASCII but '"' and '\\'.
_plain = re.compile(r"[ !#-\[\]-~]*").fullmatch


def entry_line(
    path: str,
    kind: str,
    mode: int,
    mtime_ns: int,
    uid: int,
    gid: int,
    size: int = 0,
    sha256: str | None = None,
    changed: bool = False,
) -> str:
    """`Entry(path, kind, mode, mtime_ns, uid, gid, size, sha256, changed=changed).to_json()`
    for a file or folder whose numbers are ints (as stat gives them), faster.

    A plain name is formatted directly: the dataclass, the dict and json.dumps
    cost more than the rest of a small file's line. Any other name goes the
    long way, so the line is the same either way.
    """
    if _plain(path):
        line = (
            f'{{"path":"{path}","type":"{kind}","mode":{mode},"mtime_ns":{mtime_ns},'
            f'"uid":{uid},"gid":{gid},"size":{size}'
        )
        if sha256:
            line += f',"sha256":"{sha256}"'
        return line + (',"changed":true}' if changed else "}")
    return Entry(path, kind, mode, mtime_ns, uid, gid, size, sha256, changed=changed).to_json()


@dataclass
class ObjectRef:
    key: str
    size: int
    sha256: str


@dataclass
class Manifest:
    generation: str
    host: str
    root: str
    started: str
    finished: str
    duration_seconds: float
    archive: ObjectRef
    index: ObjectRef
    compression: str  # "gzip" | "none"
    encryption: dict[str, Any] | None
    roots: list[str]
    include_volumes: bool
    files: int
    dirs: int
    symlinks: int
    source_bytes: int
    partial: bool
    problems: list[dict[str, str]] = field(default_factory=list)
    tool_version: str = ""
    format: str = FORMAT
    # Reserved for what comes next, so that today's readers already accept them:
    # the generation this one builds on (incremental chains; None: a full backup),
    # and the database dumps it holds (one record each: project, service,
    # adapter, engine version, path in the archive, size, SHA-256, result).
    parent: str | None = None
    dumps: list[dict[str, Any]] = field(default_factory=list)
    # Where the dumps start in the archive object: from this byte on it is a
    # .tar.gz (.tar) of its own holding only them (None: no dumps, or encrypted).
    dumps_offset: int | None = None

    def to_bytes(self) -> bytes:
        return (_dumps(asdict(self), indent=2) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> Manifest:
        try:
            raw = json.loads(data)
            _check_format(raw.get("format"), what)
            known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
            known["archive"] = ObjectRef(**raw["archive"])
            known["index"] = ObjectRef(**raw["index"])
            return cls(**known)
        except IntegrityError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError):
            raise IntegrityError(
                f"{what}: the manifest is damaged (not valid manifest JSON)"
            ) from None

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None


class NewerFormat(IntegrityError):
    """A manifest written by a newer itsup, in a format this one cannot read."""


def _check_format(value: Any, what: str) -> None:
    name, _, version = str(value).partition("/")
    if name != FORMAT_NAME or not version.isdigit():
        raise IntegrityError(f"{what}: unknown manifest format {value!r}")
    if int(version) > FORMAT_VERSION:
        raise NewerFormat(
            f"{what}: written in manifest format {value}, newer than this itsup reads "
            f"({FORMAT}); nothing was read from it",
            hint="upgrade itsup on this host to restore or verify this generation",
        )


class IndexWriter:
    """Writes index lines gzip-compressed to `out`, about 45 bytes a file; in memory
    when no `out` is given (`finish` returns the bytes). A backup's index goes to
    a spool file instead (`index.IndexFile`), so a million files cost no memory.

    ISA-L's level 1 (standard gzip, read by `read_index` as ever): a tenth of
    zlib level 6's time on index lines, and smaller output.
    """

    BATCH = 2048  # lines compressed at a time: per-call overhead dominates small writes

    def __init__(self, out: IO[bytes] | None = None) -> None:
        self.buffer = io.BytesIO() if out is None else None
        self.gz = igzip.IGzipFile(
            fileobj=self.buffer if out is None else out, mode="wb", compresslevel=1, mtime=0
        )
        self.pending: list[str] = []

    def add(self, entry: Entry) -> None:
        self.pending.append(entry.to_json())
        if len(self.pending) >= self.BATCH:
            self._flush()

    def add_lines(self, lines: list[str]) -> None:
        """Entries as lines, as `Entry.to_json` or `entry_line` gives them."""
        self.pending += lines
        if len(self.pending) >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            self.gz.write(("\n".join(self.pending) + "\n").encode("utf-8", "surrogateescape"))
            self.pending.clear()

    def close(self) -> None:
        """Write what is pending and end the gzip stream (`out` stays open)."""
        self._flush()
        self.gz.close()

    def finish(self) -> bytes:
        """Close, and return the index written in memory."""
        self.close()
        assert self.buffer is not None, "finish() is for an index written in memory"
        return self.buffer.getvalue()


def read_index(stream: IO[bytes], what: str) -> Iterator[Entry]:
    """Yield the entries of a gzip-compressed JSON-lines index."""
    try:
        with gzip.GzipFile(fileobj=stream, mode="rb") as gz:
            for line in gz:
                if line.strip():
                    yield Entry.from_json(line.decode())
    except (OSError, EOFError, ValueError, TypeError, UnicodeDecodeError, zlib.error):
        raise IntegrityError(f"{what}: the file index is damaged") from None


# (path, type, mode, mtime_ns, uid, gid, size, link or "") of one index line
Record = tuple[str, str, int, int, int, int, int, str]

# The line as itsup writes it (Entry.to_json): matched without building a dict. Any
# other spelling (escapes, other key orders, later keys) goes through json.
_LINE = re.compile(
    rb'\{"path":"([^"\\]*)","type":"(file|dir|symlink)","mode":(\d+),"mtime_ns":(-?\d+),'
    rb'"uid":(\d+),"gid":(\d+),"size":(\d+)(?:,"sha256":"[0-9a-f]{64}")?'
    rb'(?:,"link":"([^"\\]*)")?(?:,"changed":true)?\}\r?\n?'
)
_TYPES = {b"file": "file", b"dir": "dir", b"symlink": "symlink"}


def parse_record(line: bytes, what: str) -> Record:
    """One index line's fields for the restore (IntegrityError when it is not one)."""
    m = _LINE.fullmatch(line)
    if m is not None:
        path, kind, mode, mtime, uid, gid, size, link = m.groups()
        try:
            return (
                path.decode(),
                _TYPES[kind],
                int(mode),
                int(mtime),
                int(uid),
                int(gid),
                int(size),
                link.decode() if link else "",
            )
        except UnicodeDecodeError:
            pass
    try:
        data = json.loads(line)
        return (
            str(data["path"]),
            str(data["type"]),
            int(data["mode"]),
            int(data["mtime_ns"]),
            int(data.get("uid", 0)),
            int(data.get("gid", 0)),
            int(data.get("size", 0)),
            str(data.get("link") or ""),
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        raise IntegrityError(f"{what}: the file index is damaged") from None
