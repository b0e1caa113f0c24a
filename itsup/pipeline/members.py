"""Tar members at the speed of many small files: a header scanner and the path rules.

The restore reads hundreds of thousands of members; building a TarInfo, a
Member and an Entry object for each and checking its path part by part
cost more than writing the file. Here a member is a plain tuple parsed from
a large buffer, and the hostile-archive rules take a fast path for ordinary
names. Anything unusual (pax or GNU extended headers, names with `.` or
empty parts, unknown types) goes through `check_member`, the rules' one
definition, so both paths refuse exactly the same members.

Duplicates are found without a record per path: an archive itsup writes
lists each folder's entries once, sorted by name, depth first (the backup's
walk), so a path given twice is either next to itself or out of that order.
The rules keep one "last name seen" per folder on the current path, one name
per top-level entry (the roots are in configuration order, not sorted), and
the database dumps (a handful, added after the tree) in a set of their own.
Only an archive out of that order (never one itsup wrote) has its paths read
again into a set, at the end, before anything is put in place.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Callable, Iterable
from typing import IO

from itsup.errors import IntegrityError
from itsup.layout import DUMP_FOLDER, is_dump_path
from itsup.pipeline.extract import check_member
from itsup.pipeline.tarformat import _number, check_extended_size, read_extended

BLOCK = 512
CHUNK = 1 << 20
_ZERO_BLOCK = bytes(BLOCK)
FILE, DIR, SYMLINK = "file", "dir", "symlink"
# Tar type flags to the index's kinds; anything else is left to check_member to refuse.
KINDS = {b"0": FILE, b"\0": FILE, b"7": FILE, b"5": DIR, b"2": SYMLINK}
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)

Header = tuple[str, bytes, int, str]  # name, type flag, data size, link target


def _checksum_ok(block: bytes) -> bool:
    """The header checksum, whatever the field's spelling (the scanner's inline check
    reads only the usual six digits, NUL, space)."""
    total = (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2
    try:
        stored = int(block[148:156].split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == total - sum(block[148:156]) + 256


class TarScanner:
    """Reads tar headers and data from a stream in large pieces.

    `next_header()` skips what is left of the previous member and returns the
    next one (pax and GNU long names applied), or None at the end-of-archive
    marker; `take(n)` and `read(n)` return its data.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self.f = stream
        self.buf = b""
        self.pos = 0
        self.left = 0  # data bytes of the current member not yet taken
        self.pad = 0

    def _fill(self, need: int) -> None:
        parts = [self.buf[self.pos :]]
        have = len(parts[0])
        while have < need:
            chunk = self.f.read(max(CHUNK, need - have))
            if not chunk:
                if have == 0 and need == BLOCK:
                    raise tarfile.ReadError("unexpected end of data: no end-of-archive marker")
                raise tarfile.ReadError("unexpected end of data: the archive is truncated")
            parts.append(chunk)
            have += len(chunk)
        self.buf = b"".join(parts) if parts[0] else parts[1] if len(parts) == 2 else b"".join(parts)
        self.pos = 0

    def take(self, n: int) -> bytes:
        """`n` bytes of the current member's data (n <= what is left), in one piece."""
        if len(self.buf) - self.pos < n:
            self._fill(n)
        pos = self.pos
        self.pos = pos + n
        self.left -= n
        return self.buf[pos : pos + n]

    def read(self, n: int) -> bytes:
        """Up to `n` bytes of the current member's data (b"" at its end)."""
        n = min(n, self.left, CHUNK)
        if not n:
            return b""
        if len(self.buf) == self.pos:
            self._fill(1)
        n = min(n, len(self.buf) - self.pos)
        return self.take(n)

    def _skip(self) -> None:
        rest = self.left + self.pad
        while rest:
            avail = len(self.buf) - self.pos
            if not avail:
                self._fill(1)
                avail = len(self.buf) - self.pos
            step = min(avail, rest)
            self.pos += step
            rest -= step
        self.left = self.pad = 0

    def next_header(self) -> Header | None:
        if self.left:
            self._skip()
        elif self.pad:  # the usual case: the member's data taken, its padding left
            if len(self.buf) - self.pos >= self.pad:
                self.pos += self.pad
                self.pad = 0
            else:
                self._skip()
        pax: dict[str, str] = {}
        long_name: str | None = None
        long_link: str | None = None
        adler32 = zlib.adler32
        while True:
            pos = self.pos
            if len(self.buf) - pos < BLOCK:
                self._fill(BLOCK)
                pos = 0
            block = self.buf[pos : pos + BLOCK]
            self.pos = pos + BLOCK
            if block == _ZERO_BLOCK:
                return None
            # The block's byte sum with the checksum field as spaces. Each 256-byte
            # half sums to at most 65,280, under Adler-32's modulus, so its A part
            # minus one is the exact sum: two C calls instead of a loop over 512 bytes.
            field = block[148:156]
            total = (adler32(block[:256]) & 0xFFFF) + (adler32(block[256:]) & 0xFFFF)
            try:
                stored = int(field[:6], 8) if field[6:] == b"\0 " else -1
            except ValueError:
                stored = -1
            if stored != total - 2 - sum(field) + 256 and not _checksum_ok(block):
                raise tarfile.HeaderError("bad header checksum: the archive is damaged")
            kind = block[156:157]
            if block[124] & 0x80:
                size = _number(block[124:136], "size")
            else:
                try:
                    size = int(block[124:135] or b"0", 8)
                except ValueError:
                    size = _number(block[124:136], "size")
            if size < 0:
                raise tarfile.HeaderError("negative size")
            if kind in _EXTENDED:
                check_extended_size(size)
                self.left, self.pad = size, -size % BLOCK
                data = self.take(size)
                long_name, long_link = read_extended(kind, data, pax, long_name, long_link)
                self._skip()
                continue
            raw = block[:100]
            end = raw.find(b"\0")
            if end >= 0:
                raw = raw[:end]
            if block[345] and block[257:263] == b"ustar\x00":
                raw = block[345:500].split(b"\0", 1)[0] + b"/" + raw
            name = long_name or raw.decode("utf-8", "surrogateescape")
            link = ""
            if kind == b"2" or kind == b"1":
                link = long_link or block[157:257].split(b"\0", 1)[0].decode(
                    "utf-8", "surrogateescape"
                )
            if pax:
                name, link, size = _apply_pax(pax, name, link, size)
            if kind == tarfile.GNUTYPE_SPARSE:
                raise tarfile.HeaderError("GNU sparse members are not supported")
            # Folders and links carry no data; a size there is skipped (and refused).
            self.left, self.pad = size, -size % BLOCK
            return name, kind, size, link


def _apply_pax(pax: dict[str, str], name: str, link: str, size: int) -> tuple[str, str, int]:
    if any(k.startswith("GNU.sparse.") for k in pax):
        raise tarfile.HeaderError("GNU sparse members are not supported")
    name = pax.get("path", name)
    link = pax.get("linkpath", link)
    if "size" in pax:
        try:
            size = int(pax["size"])
        except ValueError:
            raise tarfile.HeaderError("damaged pax extended header value") from None
        if size < 0:
            raise tarfile.HeaderError("damaged pax extended header value")
    return name, link, size


class PathRules:
    """The hostile-archive rules for a stream of members, in archive order.

    `check` returns the member's normalized path or raises IntegrityError.
    Symlinks met so far are in `symlinks` (paths through them are refused);
    where a written link points is the caller's business (`link_leaves`).
    """

    def __init__(self, recheck: Callable[[], Iterable[str]] | None = None) -> None:
        """`recheck` gives every path of the stream again, for a stream that turns out
        to be out of order (not one itsup wrote): then, and only then, duplicates are
        looked for with a set of all the paths."""
        self.recheck = recheck
        self.symlinks: set[str] = set()
        self.ok_parent: str | None = None  # a folder already found to cross no symlink
        self.levels: list[list[str]] = []  # [folder, last name seen in it], along the path
        self.tops: set[str] = set()
        self.last_top = ""
        self.dumps: set[str] = set()
        # The first member found out of order: handled by finish(), once every other
        # rule has had its say (a hostile member is named for what it is).
        self.disorder: IntegrityError | None = None

    def finish(self) -> None:
        """For a stream that left the order: refuse it if a path appears twice (without
        `recheck`: refuse it, as it could hide one)."""
        if self.disorder is None:
            return
        if self.recheck is None:
            raise self.disorder
        seen: set[str] = set()
        for path in self.recheck():
            if path in seen:
                raise IntegrityError(
                    f"archive member {path!r} appears twice in the archive; refused"
                )
            seen.add(path)

    def check(self, name: str, kind: bytes, size: int, link: str) -> tuple[str, str]:
        """(path, kind) of a member, after every rule."""
        what = KINDS.get(kind)
        path = name[:-1] if what == DIR and name.endswith("/") else name
        if (
            what is None
            or not path
            or path[0] in "/.\\"
            or "/." in path
            or "//" in path
            or path[-1] == "/"
            or "\0" in path
            or size < 0
            or (what != FILE and size)
            or (what == SYMLINK and (not link or "\0" in link))
        ):
            path, what = self._slow(name, kind, size, link)
        elif self.symlinks:
            self._through_links(name, path)
        if DUMP_FOLDER in path and is_dump_path(path):
            if path in self.dumps:
                raise IntegrityError(
                    f"archive member {path!r} appears twice in the archive; refused"
                )
            self.dumps.add(path)
        else:
            self._in_order(path, what == DIR)
        if what == SYMLINK:
            self.symlinks.add(path)
            self.ok_parent = None
        return path, what

    def _slow(self, name: str, kind: bytes, size: int, link: str) -> tuple[str, str]:
        info = tarfile.TarInfo(name)
        info.type = kind if kind != b"\0" else tarfile.REGTYPE
        info.size, info.linkname = size, link
        member = check_member(info, self.symlinks, external_links=True)
        return member.path, member.type

    def _through_links(self, name: str, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent != self.ok_parent:
            parts = parent.split("/") if parent else []
            for i in range(1, len(parts) + 1):
                if "/".join(parts[:i]) in self.symlinks:
                    raise IntegrityError(
                        f"archive member {name!r}: path goes through a symlink from the same "
                        "archive; refused"
                    )
            self.ok_parent = parent
        if path in self.symlinks:
            raise IntegrityError(
                f"archive member {name!r}: replaces a symlink from the same archive; refused"
            )

    def _in_order(self, path: str, is_dir: bool) -> None:
        parent, _, base = path.rpartition("/")
        levels = self.levels
        if not levels or levels[-1][0] != parent:
            self._descend(path, parent)
        if not parent:
            self._top(path, base)
        else:
            level = levels[-1]
            last = level[1]
            if base <= last:
                self._refuse(path, base == last, f"{parent}/{last}")
            level[1] = base
        if is_dir:
            levels.append([path, ""])

    def _descend(self, path: str, parent: str) -> None:
        """Make the folder `parent` the current one: leave the folders that do not hold
        it, then enter the ones between (each must come after what its folder listed)."""
        levels = self.levels
        while levels and not parent.startswith(levels[-1][0] + "/") and levels[-1][0] != parent:
            levels.pop()
        have = levels[-1][0] if levels else ""
        if have == parent:
            return
        rest = parent[len(have) + 1 :] if have else parent
        here = have
        for part in rest.split("/"):
            if not here:
                self._top(path, part, entering=True)
            else:
                level = levels[-1]
                if part < level[1]:
                    self._refuse(path, False, f"{here}/{level[1]}")
                level[1] = part
            here = f"{here}/{part}" if here else part
            levels.append([here, ""])

    def _top(self, path: str, name: str, entering: bool = False) -> None:
        if entering and name == self.last_top:
            return
        if name in self.tops:
            self._refuse(path, path == name, self.last_top)
        self.tops.add(name)
        self.last_top = name

    def _refuse(self, path: str, twice: bool, after: str) -> None:
        if twice:
            raise IntegrityError(f"archive member {path!r} appears twice in the archive; refused")
        if self.disorder is None:
            self.disorder = IntegrityError(
                f"archive member {path!r} comes after {after!r}, out of the order itsup writes "
                "(each folder once, sorted by name): a path could appear twice; refused"
            )
