"""`itsup restore`: bring back all or part of a generation, safely.

Stage, then swap: the archive is streamed into a staging folder beside the
destination while its SHA-256 is computed; only when the whole object has
been read, decoded and found identical to what the manifest records are the
staged paths moved into place (renames on one filesystem), each replaced
path first set aside so that a failure rolls everything back.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

import pyrage

from itsup.errors import ConfigError, IntegrityError, ItsupError, NotFoundError, UsageError
from itsup.generation import Generation, scan, select_generation
from itsup.host import Host
from itsup.manifest import Entry, Manifest, read_index
from itsup.pipeline.crypt import decrypting_reader, default_identity_file, load_identities
from itsup.pipeline.decompress import gunzip_reader
from itsup.pipeline.extract import Extractor, check_entry
from itsup.pipeline.stream import GuardedReader, HashingReader
from itsup.storage import Target

log = logging.getLogger("itsup.restore")
MiB = 1024 * 1024
STAGING_MARK = ".itsup-restore-"


@dataclass(frozen=True)
class Scope:
    """What part of a generation to restore, as a path prefix ("" for all)."""

    prefix: str
    label: str

    def selects(self, path: str) -> bool:
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")

    def ancestor(self, path: str) -> bool:
        return bool(self.prefix) and self.prefix.startswith(path + "/")


def scope_for(what: str | None, path: str | None, root: Path) -> Scope:
    if path is not None:
        if what not in (None, "all"):
            raise UsageError(
                "give either a restore target (all, proxy, PROJECT) or --path, not both"
            )
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.relative_to(root)
            except ValueError:
                raise UsageError(f"--path {path}: not inside the host root {root}") from None
        parts = [x for x in p.as_posix().split("/") if x not in ("", ".")]
        if not parts or ".." in parts:
            raise UsageError(
                f"--path {path}: give a path inside the backup, such as proxy/traefik/acme.json"
            )
        return Scope("/".join(parts), "/".join(parts))
    if what in (None, "all"):
        return Scope("", "everything")
    if what == "proxy":
        return Scope("proxy", "proxy/")
    if "/" in what or what in (".", ".."):
        raise UsageError(f"{what!r} is not a project name; use --path for a file or folder")
    return Scope(f"upstream/{what}", f"project {what} (upstream/{what})")


@dataclass
class Change:
    path: str
    kind: str  # "new" | "replace" | "same"


@dataclass
class RestorePlan:
    generation: Generation
    manifest: Manifest
    scope: Scope
    dest: Path
    index_bytes: bytes
    identities: list[Any]
    target: Target
    external_links: bool = False
    changes: list[Change] = field(default_factory=list)
    reader: BinaryIO | None = None  # the archive, already downloading (see plan_restore)

    def entries(self) -> Iterator[Entry]:
        return read_index(io.BytesIO(self.index_bytes), self.manifest.index.key)

    @property
    def overwrites(self) -> int:
        return sum(1 for c in self.changes if c.kind == "replace")


@dataclass
class RestoreResult:
    generation: str
    dest: Path
    files: int
    dirs: int
    symlinks: int
    bytes: int
    seconds: float
    archive_bytes: int


def _identities(host: Host, manifest: Manifest) -> list[Any]:
    if not manifest.encrypted:
        return []
    enc = host.config.backup.encryption
    return load_identities(default_identity_file(enc.identity_file if enc else None))


def load_index(target: Target, manifest: Manifest, identities: list[Any]) -> bytes:
    """Fetch the file index, check it against the manifest, decrypt it if needed."""
    ref = manifest.index
    try:
        data = target.get(ref.key)
    except NotFoundError:
        raise IntegrityError(
            f"{manifest.generation}: its file index {ref.key} is missing"
        ) from None
    if len(data) != ref.size or hashlib.sha256(data).hexdigest() != ref.sha256:
        raise IntegrityError(
            f"{manifest.generation}: its file index {ref.key} does not match the manifest"
        )
    if manifest.encrypted:
        try:
            data = pyrage.decrypt(data, identities)
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
    return data


def _compare(entry: Entry, dest: Path) -> str:
    try:
        st = os.lstat(dest / entry.path)
    except FileNotFoundError:
        return "new"
    import stat as st_mod

    kind = (
        "dir" if st_mod.S_ISDIR(st.st_mode) else "symlink" if st_mod.S_ISLNK(st.st_mode) else "file"
    )
    if kind != entry.type:
        return "replace"
    if entry.type == "dir":
        return "same"
    same = st.st_mtime_ns == entry.mtime_ns and st_mod.S_IMODE(st.st_mode) == entry.mode
    if entry.type == "file":
        same = same and st.st_size == entry.size
    else:
        same = os.readlink(dest / entry.path) == entry.link
    return "same" if same else "replace"


def plan_restore(
    host: Host,
    what: str | None = None,
    *,
    path: str | None = None,
    generation: str | None = None,
    to: str | None = None,
    target_choice: str | None = None,
    external_links: bool = False,
    prefetch: bool = False,
) -> RestorePlan:
    """Pick the generation, load its index, and work out what a restore would change.

    With `prefetch`, the archive starts downloading (read-only, into a bounded
    read-ahead) while the plan is made, so planning costs no wall time.
    """
    target, prefix = host.target(target_choice)
    gen = select_generation(scan(target, prefix, load_manifests=False), generation, target)
    assert gen.manifest is not None
    manifest = gen.manifest
    scope = scope_for(what, path, host.layout.root)
    identities = _identities(host, manifest)
    early = target.open_reader(manifest.archive.key) if prefetch else None
    try:
        index_bytes = load_index(target, manifest, identities)
        dest = Path(to).expanduser().resolve() if to else host.layout.root
        plan = RestorePlan(
            gen,
            manifest,
            scope,
            dest,
            index_bytes,
            identities,
            target,
            external_links=external_links,
            reader=early,
        )
        _work_out_changes(plan)
    except BaseException:
        if early is not None:
            early.close()
        raise
    return plan


def _work_out_changes(plan: RestorePlan) -> None:
    """Fill `plan.changes` (new, replace, same) for the selected entries of the index."""
    scope, dest = plan.scope, plan.dest
    matched = False
    links: set[str] = set()
    absent: set[str] = set()  # folders missing at the destination: no need to look inside
    for entry in plan.entries():
        check_entry(entry, links, external_links=plan.external_links)  # the archive's rules
        if scope.selects(entry.path):
            matched = True
            parent = entry.path.rpartition("/")[0]
            kind = "new" if parent in absent else _compare(entry, dest)
            if kind == "new" and entry.type == "dir":
                absent.add(entry.path)
            plan.changes.append(Change(entry.path, kind))
    if not matched:
        known = sorted(
            {
                e.path.split("/")[1]
                for e in plan.entries()
                if e.path.startswith("upstream/") and e.path.count("/") >= 1
            }
        )
        hint = f"projects in this backup: {', '.join(known)}" if known else None
        raise UsageError(f"{scope.label}: not in backup {plan.manifest.generation}", hint=hint)


def _open_archive(plan: RestorePlan) -> tuple[BinaryIO, HashingReader]:
    what = plan.manifest.archive.key
    raw, plan.reader = plan.reader or plan.target.open_reader(what), None
    hashed = HashingReader(raw)
    # `hashed` itself, unbuffered: its read(n) passes whole fetched ranges through,
    # and a BufferedReader around it, once collected, would close it before
    # run_restore drains it.
    stream: Any = hashed
    if plan.manifest.encrypted:
        stream = decrypting_reader(cast(BinaryIO, hashed), plan.identities, what)
    if plan.manifest.compression == "gzip":
        stream = gunzip_reader(GuardedReader(stream, what))  # type: ignore[arg-type]
    return io.BufferedReader(GuardedReader(stream, what), MiB), hashed


def run_restore(plan: RestorePlan, on_bytes: Callable[[int], None] | None = None) -> RestoreResult:
    """Stream the generation into a staging folder, verify it, then swap it into place."""
    started = time.monotonic()
    manifest = plan.manifest
    plan.dest.mkdir(parents=True, exist_ok=True)
    remove_leftovers(plan.dest)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = plan.dest / f"{STAGING_MARK}{token}"
    aside = plan.dest / f"{STAGING_MARK}{token}.old"
    staging.mkdir(mode=0o700)
    try:
        stream, hashed = _open_archive(plan)
        try:
            extractor = Extractor(
                staging,
                lambda p: plan.scope.selects(p) or plan.scope.ancestor(p),
                restore_owner=os.geteuid() == 0,
                expected=plan.entries(),
                external_links=plan.external_links,
                on_bytes=on_bytes,
            )
            stats = extractor.run(stream)
            hashed.drain()
        finally:
            with contextlib.suppress(Exception):
                stream.close()
        ref = manifest.archive
        if hashed.size != ref.size or hashed.sha256.hexdigest() != ref.sha256:
            raise IntegrityError(
                f"{ref.key}: SHA-256 does not match the manifest of {manifest.generation} "
                f"({hashed.size} bytes read, {ref.size} recorded); nothing was restored"
            )
        swap_into_place(staging, plan.dest, aside, plan.scope)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)
    seconds = time.monotonic() - started
    log.info(
        "restored %s (%s) from %s into %s: %d files, %d bytes in %.1f s",
        plan.scope.label,
        manifest.generation,
        plan.target.name,
        plan.dest,
        stats.files,
        stats.bytes,
        seconds,
    )
    return RestoreResult(
        manifest.generation,
        plan.dest,
        stats.files,
        stats.dirs,
        stats.symlinks,
        stats.bytes,
        seconds,
        manifest.archive.size,
    )


def swap_into_place(staging: Path, dest: Path, aside: Path, scope: Scope) -> None:
    """Move staged paths into `dest`, setting replaced ones aside; undo all on failure."""
    journal: list[tuple[str, str]] = []  # ("in" | "aside", relative path)

    def set_aside(rel: str) -> None:
        (aside / rel).parent.mkdir(parents=True, exist_ok=True)
        os.rename(dest / rel, aside / rel)
        journal.append(("aside", rel))

    def move_in(rel: str) -> None:
        os.rename(staging / rel, dest / rel)
        journal.append(("in", rel))

    def visit(rel: str) -> None:
        src, dst = staging / rel, dest / rel
        src_is_dir = src.is_dir() and not src.is_symlink()
        if not os.path.lexists(dst):
            move_in(rel)
            return
        dst_is_dir = dst.is_dir() and not dst.is_symlink()
        if src_is_dir and dst_is_dir:
            st = os.lstat(src)  # before moving children out changes its mtime
            for child in sorted(os.listdir(src)):
                visit(f"{rel}/{child}")
            if scope.selects(rel):
                os.chmod(dst, st.st_mode & 0o7777)
                with contextlib.suppress(PermissionError):
                    os.chown(dst, st.st_uid, st.st_gid) if os.geteuid() == 0 else None
                os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns))
            return
        set_aside(rel)
        move_in(rel)

    try:
        for top in sorted(os.listdir(staging)):
            visit(top)
    except BaseException:
        for action, rel in reversed(journal):
            with contextlib.suppress(OSError):
                if action == "in":
                    os.rename(dest / rel, staging / rel)
                else:
                    os.rename(aside / rel, dest / rel)
        raise
    for action, rel in journal:
        if action == "aside":
            log.debug("replaced %s", rel)


def remove_leftovers(dest: Path) -> None:
    """Delete staging folders of restores that were killed (their process is gone).

    A killed restore never touched the live files (the swap is the last step),
    but its staging folder would linger; one whose owner still runs is left alone.
    """
    if not dest.is_dir():
        return
    for path in dest.iterdir():
        if not path.name.startswith(STAGING_MARK):
            continue
        pid = path.name[len(STAGING_MARK) :].split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        log.info("removing %s, left by a restore that was stopped", path)
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


__all__ = ["ItsupError", "RestorePlan", "RestoreResult", "plan_restore", "run_restore"]
