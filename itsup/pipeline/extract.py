"""The hostile-archive rules for one tar member, and where symlinks point.

Every member is checked before anything is written: relative path, no `..`,
no path through a symlink the archive itself created, only files, folders
and symlinks. Any hostile member refuses the whole archive, whether or not
it is one the restore writes. Symlinks that point outside the destination
(`localtime -> /usr/share/zoneinfo/UTC`) are a matter of where they point,
not of what the archive writes: only the ones a restore writes are looked
at, and they are created as links (never followed) or, when the caller asks,
refused. `check_member` is the rules' one definition: verify uses it as it
is, and the restore's fast path (`members.PathRules`) falls back on it for
anything but ordinary names. The restore's writing is in `unpack`.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from itsup.errors import IntegrityError


@dataclass
class Member:
    path: str
    type: str
    mode: int
    mtime_ns: int
    uid: int
    gid: int
    size: int
    link: str | None


def _mtime_ns(info: tarfile.TarInfo) -> int:
    exact = info.pax_headers.get("mtime")
    if exact:
        try:
            return int(Decimal(exact) * 1_000_000_000)
        except ArithmeticError:
            pass
    return int(info.mtime) * 1_000_000_000


EXTERNAL_HINT = (
    "without --refuse-external-links such links are created as links (never followed; "
    "nothing is ever written through them)"
)
CHAIN = "symlink leads outside the destination through other symlinks of the archive"


def link_leaves(path: str, target: str) -> str | None:
    """Why the symlink `path -> target` points outside the destination by its own
    text (absolute, or climbing above the top), or None when it stays inside."""
    if target.startswith("/"):
        return f"symlink to absolute path {target!r}"
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    if resolved == ".." or resolved.startswith("../"):
        return "symlink pointing outside the destination"
    return None


def refused_link(path: str, why: str) -> IntegrityError:
    """The error for a symlink pointing outside, when such links are refused."""
    return IntegrityError(f"archive member {path!r}: {why}; refused", hint=EXTERNAL_HINT)


def check_member(
    info: tarfile.TarInfo, symlinks: set[str], *, external_links: bool = False
) -> Member:
    """Validate one tar member against the hostile-archive rules; return it normalized.

    `external_links` admits symlinks whose targets lie outside the destination
    (pass it for members that are not written, or when such links are
    restored as links); paths through any symlink of the archive stay refused
    either way.
    """
    name = info.name
    where = f"archive member {name!r}"
    if not name or name.startswith("/") or ("\\" in name and name.startswith("\\")):
        raise IntegrityError(f"{where}: absolute path refused")
    parts = name.rstrip("/").split("/")
    if any(p in ("..",) for p in parts):
        raise IntegrityError(f"{where}: '..' in path refused")
    parts = [p for p in parts if p not in ("", ".")]
    if not parts or "\x00" in name:
        raise IntegrityError(f"{where}: empty or invalid path refused")
    path = "/".join(parts)
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in symlinks:
            raise IntegrityError(
                f"{where}: path goes through a symlink from the same archive; refused"
            )
    if path in symlinks:  # a folder here would be chmod-ed through the link
        raise IntegrityError(f"{where}: replaces a symlink from the same archive; refused")
    if info.isdir():
        kind = "dir"
    elif info.isreg():
        kind = "file"
    elif info.issym():
        kind = "symlink"
        target = info.linkname
        if not target or "\x00" in target:
            raise IntegrityError(f"{where}: empty or invalid symlink target refused")
        if not external_links and (why := link_leaves(path, target)):
            raise refused_link(name, why)
    elif info.islnk():
        raise IntegrityError(f"{where}: hard links are not written by itsup; refused")
    else:
        raise IntegrityError(f"{where}: device nodes, FIFOs and other special files refused")
    if info.size < 0 or (kind != "file" and info.size):
        raise IntegrityError(f"{where}: absurd size {info.size}")
    return Member(
        path,
        kind,
        info.mode & 0o7777,
        _mtime_ns(info),
        info.uid,
        info.gid,
        info.size if kind == "file" else 0,
        info.linkname or None,
    )


def _resolve(
    start: list[str], target: str, links: dict[str, str], hops: list[int]
) -> list[str] | None:
    """Follow `target` from folder `start` as the OS would, through the archive's
    own symlinks; None when it climbs above the top or reaches an absolute path."""
    if target.startswith("/"):
        return None
    here = list(start)
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                return None
            here.pop()
            continue
        here.append(part)
        link = links.get("/".join(here))
        if link is not None:
            hops[0] += 1
            if hops[0] > 40:  # like the OS (ELOOP): give up without going anywhere
                return here
            resolved = _resolve(here[:-1], link, links, hops)
            if resolved is None:
                return None
            here = resolved
    return here


def outward_problem(path: str, links: dict[str, str]) -> str | None:
    """Why the archive's symlink `path` points outside the destination, or None.

    By its own text (absolute, or above the top), or together with other links
    of the archive: `proxy/x/a -> ..` and `proxy/b -> x/a/../../..` both look
    inside, yet `proxy/b` resolves to the folder above the destination.
    """
    target = links[path]
    why = link_leaves(path, target)
    if why is None and _resolve(path.split("/")[:-1], target, links, [0]) is None:
        why = CHAIN
    return why


def outward_links(
    links: dict[str, str], written: Callable[[str], bool] = lambda path: True
) -> list[tuple[str, str]]:
    """The symlinks among `links` (path -> target, in archive order) for which
    `written` holds and that point outside the destination, as (path, target).

    Needs the whole archive's links, so the order of the members does not matter.
    """
    return [(p, t) for p, t in links.items() if written(p) and outward_problem(p, links)]


def refuse_outward(outward: list[tuple[str, str]], links: dict[str, str]) -> None:
    """Refuse the first of `outward` (from outward_links), if any, saying why."""
    for path, _target in outward[:1]:
        raise refused_link(path, outward_problem(path, links) or CHAIN)


def check_link_chains(links: dict[str, str]) -> None:
    """Refuse the first of `links` that points outside, by itself or through others."""
    refuse_outward(outward_links(links), links)
