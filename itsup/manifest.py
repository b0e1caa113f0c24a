"""Generation manifests and file indexes (format: docs/design.md).

A generation is complete when, and only when, its manifest object exists:
the manifest is the last object a backup writes, and it records the size and
SHA-256 of every other object of the generation.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from itsup.errors import IntegrityError

FORMAT = "itsup-backup/1"


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
        data = asdict(self)
        for optional in ("sha256", "link", "changed"):
            if not data[optional]:
                del data[optional]
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Entry:
        data = json.loads(line)
        return cls(**data)


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

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, what: str) -> Manifest:
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT:
                raise IntegrityError(f"{what}: unknown manifest format {raw.get('format')!r}")
            raw["archive"] = ObjectRef(**raw["archive"])
            raw["index"] = ObjectRef(**raw["index"])
            return cls(**raw)
        except IntegrityError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError):
            raise IntegrityError(
                f"{what}: the manifest is damaged (not valid manifest JSON)"
            ) from None

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None


class IndexWriter:
    """Collects index lines gzip-compressed in memory: about 40 bytes a file."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.gz = gzip.GzipFile(fileobj=self.buffer, mode="wb", compresslevel=6, mtime=0)

    def add(self, entry: Entry) -> None:
        self.gz.write(entry.to_json().encode() + b"\n")

    def finish(self) -> bytes:
        self.gz.close()
        return self.buffer.getvalue()


def read_index(stream: IO[bytes], what: str) -> Iterator[Entry]:
    """Yield the entries of a gzip-compressed JSON-lines index."""
    try:
        with gzip.GzipFile(fileobj=stream, mode="rb") as gz:
            for line in gz:
                if line.strip():
                    yield Entry.from_json(line.decode())
    except (OSError, EOFError, ValueError, TypeError, UnicodeDecodeError):
        raise IntegrityError(f"{what}: the file index is damaged") from None
