"""`itsup restore`: bring back all or part of a generation, safely.

Stage, then swap: the archive is streamed into a staging folder beside the
destination while its SHA-256 is computed; only when the whole object has
been read, decoded and found identical to what the manifest records are the
staged paths moved into place (renames on one filesystem). Each path changes
in one atomic step with the old one kept until the end, so a failure rolls
everything back and a kill at any point leaves every path old or new.

A generation that fails a check raises GenerationDamaged, naming it, before
anything at the destination was touched; `itsup restore --fallback` then
tries the next older complete one.

A restore into the live host root holds the host lock (the one `itsup
backup` takes), so a backup and a restore of the same root never interleave.
Symlinks that point outside the destination are created as links (never
followed) and listed, or refused with `refuse_external_links`; either way only
the ones the restore writes count, while every other hostile-archive rule
applies to the whole archive.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import stat as st_mod
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from itsup.actions.dbrestore import (
    DumpLoad,
    check_running,
    dump_records,
    load_all,
    plan_loads,
    read_dumps,
    reads_dumps_alone,
)
from itsup.actions.restorescope import Scope, destination, scope_for, with_dumps
from itsup.agekeys import default_identity_file, load_identities
from itsup.dumps.run import clear_spool, spool_path
from itsup.errors import (
    IntegrityError,
    ItsupError,
    LockedError,
    NotFoundError,
    UsageError,
)
from itsup.generation import LATEST, Generation, location, scan, select_generation
from itsup.host import Host
from itsup.index import IndexSpool, spool_index
from itsup.layout import DUMP_FOLDER, is_dump_path
from itsup.lock import host_lock
from itsup.manifest import Entry, Manifest, parse_record
from itsup.pipeline.codec import decode
from itsup.pipeline.extract import outward_links, refuse_outward
from itsup.pipeline.members import PathRules
from itsup.pipeline.unpack import ExtractStats, Unpacker
from itsup.storage import Target
from itsup.swap import (
    ASIDE_SUFFIX,
    STAGING_MARK,
    Steps,
    exchange,
    remove_leftovers,
    swap_into_place,
)

log = logging.getLogger("itsup.restore")
MiB = 1024 * 1024
CHANGE_KINDS = ("new", "replace", "same")
# From this many paths to write (or to compare with their live copy), small files are
# written by a process of their own (pipeline/writer.py: it starts in about 50 ms, and
# frees the reader's core).
WRITER_PROCESS_FROM = 1000


def writer_processes(paths: int) -> int:
    return 1 if paths >= WRITER_PROCESS_FROM else 0


FILE_ONLY = {"console": False}  # a record for logs/backup.log; the command prints its own line


class GenerationDamaged(IntegrityError):
    """The chosen generation failed a check (or lacks an object its manifest names).

    Raised before anything at the destination was touched: the restore stages
    and verifies first. `generation` names it, so `--fallback` can skip it.
    """

    def __init__(self, generation: str, message: str, *, hint: str | None = None) -> None:
        if generation not in message:
            message = f"{generation}: {message}"
        super().__init__(message, hint=hint)
        self.generation = generation

    @property
    def reason(self) -> str:
        """The message without the generation's name in front."""
        return self.message.removeprefix(f"{self.generation}: ")


def _damaged(generation: str, exc: ItsupError) -> GenerationDamaged:
    if isinstance(exc, GenerationDamaged):
        return exc
    if isinstance(exc, NotFoundError):  # an object a complete generation names is gone
        return GenerationDamaged(
            generation,
            f"{generation} is damaged: {exc.message} (its manifest names it)",
            hint=exc.hint,
        )
    return GenerationDamaged(generation, exc.message, hint=exc.hint)


@dataclass(frozen=True)
class RestoreOptions:
    """What to restore, from where, into where, and how: a restore's choices.

    One object for the command (`itsup restore`), the drill and tests to build
    and for plan_restore, restore_with_fallback and run_restore to read, so an
    option is added here, once, and reaches every step. How each attempt runs
    (read-ahead, when the lock is taken, generations to pass over) is the
    caller's business and stays out.
    """

    what: str | None = None  # all, proxy or a project (see scope_for)
    path: str | None = None  # one file or folder instead of `what`
    generation: str | None = None  # None (or "latest"): the newest complete one
    to: str | None = None  # a folder instead of the host root
    target_choice: str | None = None  # the storage target to read, when there are several
    refuse_external_links: bool = False  # refuse symlinks pointing outside, not create them
    dry_run: bool = False  # restore_with_fallback only plans
    fallback: bool = False  # restore_with_fallback passes over damaged generations
    # Database dumps: "load" them into the running engines (into the host root;
    # --to only extracts them), "skip" them (--no-databases), or load "only"
    # them (--databases-only).
    databases: str = "load"


@dataclass
class RestorePlan:
    generation: Generation
    manifest: Manifest
    scope: Scope
    dest: Path
    index: IndexSpool | None
    identities: list[Any]
    target: Target
    options: RestoreOptions = field(default_factory=RestoreOptions)
    # How many of the paths the restore writes are new, to replace, or the same
    # (by size, mode and mtime): counts, not a record per path.
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANGE_KINDS, 0))
    fresh: bool = False  # nothing at the destination where the restore writes
    reader: BinaryIO | None = None  # the archive, already downloading (see plan_restore)
    # Symlinks in the scope that point outside the destination, (path, target).
    external: list[tuple[str, str]] = field(default_factory=list)
    # Database dumps loaded into the running engines after the files (live root only).
    loads: list[DumpLoad] = field(default_factory=list)
    lock_file: Path | None = None  # the host lock, held while restoring into the live root
    held: contextlib.ExitStack | None = None  # the lock, when taken (see plan_restore)

    def entries(self) -> Iterator[Entry]:
        """The file index, entry by entry (streamed from its spool)."""
        assert self.index is not None
        return self.index.entries()

    def changed(self) -> Iterator[tuple[str, str]]:
        """(path, "new" or "replace") of each path the restore would change, worked
        out again from the index and the destination (for --dry-run)."""
        return ((path, kind) for path, kind in _classify(self) if kind != "same")

    @property
    def dumps_alone(self) -> bool:
        """--databases-only into the live root, from a generation whose dumps start a
        section of their own: only that section of the archive is read."""
        return (
            self.lock_file is not None
            and self.options.databases == "only"
            and reads_dumps_alone(self.manifest)
        )

    @property
    def read_from(self) -> int:
        """Where in the archive object the restore starts to read."""
        return (self.manifest.dumps_offset or 0) if self.dumps_alone else 0

    def close(self) -> None:
        """Stop the read-ahead and release the host lock (run_restore does this)."""
        if self.reader is not None:  # never taken: the restore failed before reading
            with contextlib.suppress(Exception):
                self.reader.close()
            self.reader = None
        if self.held is not None:
            self.held.close()
            self.held = None
        # The index spool stays: a drill checks the restored tree against it. Its
        # file is unlinked already and closed with the plan (or the process).

    @property
    def overwrites(self) -> int:
        return self.counts["replace"]


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
    # Symlinks restored as links that point outside the destination, (path, target).
    external_links: list[tuple[str, str]] = field(default_factory=list)
    # Engines whose dumps were loaded (project/service), in order.
    databases: list[str] = field(default_factory=list)


def describe_links(links: list[tuple[str, str]], limit: int = 10) -> str:
    """`a -> /x, b -> /y and 3 more`: the first `limit` links, then a count."""
    shown = ", ".join(f"{path} -> {target}" for path, target in links[:limit])
    more = len(links) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def _identities(host: Host, manifest: Manifest) -> list[Any]:
    if not manifest.encrypted:
        return []
    enc = host.config.backup.encryption
    return load_identities(default_identity_file(enc.identity_file if enc else None))


def _compare(dest: bytes, path: str, kind: str, mode: int, mtime: int, size: int, link: str) -> str:
    """new, replace or same: the destination's `path` against an index entry."""
    where = dest + b"/" + os.fsencode(path)
    try:
        st = os.lstat(where)
    except (FileNotFoundError, NotADirectoryError):  # or a file where its folder would be
        return "new"
    there = (
        "dir" if st_mod.S_ISDIR(st.st_mode) else "symlink" if st_mod.S_ISLNK(st.st_mode) else "file"
    )
    if there != kind:
        return "replace"
    if kind == "dir":
        return "same"
    same = st.st_mtime_ns == mtime and st_mod.S_IMODE(st.st_mode) == mode
    if kind == "file":
        same = same and st.st_size == size
    else:
        same = os.fsdecode(os.readlink(where)) == link
    return "same" if same else "replace"


def _fresh(dest: Path, scope: Scope) -> bool:
    """Whether nothing is at the destination where the scope writes (so every path is
    new, without looking)."""
    where = dest / scope.prefix if scope.prefix else dest
    try:
        with os.scandir(where) as entries:
            return next(entries, None) is None
    except (FileNotFoundError, NotADirectoryError):
        return not os.path.lexists(where)


def plan_restore(
    host: Host,
    options: RestoreOptions,
    *,
    prefetch: bool = False,
    hold_lock: bool = False,
    skip: Collection[str] = (),
) -> RestorePlan:
    """Pick the generation, load its index, and work out what a restore would change.

    With `prefetch`, the archive starts downloading (read-only, into a bounded
    read-ahead) while the plan is made, so planning costs no wall time.
    Generations named in `skip` (found damaged by an earlier attempt) are
    passed over when choosing the newest complete one.

    A restore into the live root (no `options.to`, or one naming it) needs the
    host lock (`lock_file`); `hold_lock` takes it now, before storage is read, so
    a restore that could not run fails at once (LockedError). run_restore takes
    it otherwise, and releases it.
    """
    scope = scope_for(options.what, options.path, host.layout.root)
    dest = destination(host.layout, options.to)
    generation = options.generation
    live = dest == host.layout.root
    scope = with_dumps(scope, options.databases)
    held = contextlib.ExitStack()
    if hold_lock and live:
        _take_lock(held, host.layout.lock_file)
    early = None
    try:
        # Without --target: the first target that answers (an unreachable one is
        # passed over with a warning).
        _name, target, prefix, found = host.first_answering(
            options.target_choice, lambda t, p: scan(t, p, load_manifests=False)
        )
        gen = select_generation(
            [g for g in found if g.name not in skip], generation, target, location(target, prefix)
        )
        assert gen.manifest is not None
        if generation in (None, LATEST):
            _warn_passed_over(found, gen, skip)
        manifest = gen.manifest
        identities = _identities(host, manifest)
        plan = RestorePlan(
            gen,
            manifest,
            scope,
            dest,
            None,
            identities,
            target,
            options,
            lock_file=host.layout.lock_file if live else None,
            held=held if hold_lock and live else None,
        )
        try:
            early = target.open_reader(manifest.archive.key, plan.read_from) if prefetch else None
            plan.reader = early
            if not plan.dumps_alone:  # the dumps alone are checked against the manifest
                plan.index = spool_index(target, manifest, identities)
        except (IntegrityError, NotFoundError) as exc:
            raise _damaged(gen.name, exc) from None
        if not plan.dumps_alone:
            _work_out_changes(plan)
        if live and options.databases != "skip":
            _plan_loads(host, plan)
    except BaseException:
        if early is not None:
            early.close()
        held.close()
        raise
    return plan


def _plan_loads(host: Host, plan: RestorePlan) -> None:
    """The engines the dumps in scope load into; each must answer before anything changes."""
    records = dump_records(plan.manifest, plan.scope.selects)
    if plan.options.databases == "only" and not records and plan.scope.prefix:
        raise UsageError(
            f"{plan.manifest.generation} holds no database dumps for {plan.scope.label}"
        )
    plan.loads = plan_loads(host, records)
    if plan.loads and not plan.options.dry_run:
        check_running(plan.loads)


def _warn_passed_over(found: list[Generation], chosen: Generation, skip: Collection[str]) -> None:
    """Say so when newer generations exist that cannot be restored (never silently older)."""
    for gen in found:
        if gen.name == chosen.name:
            return
        if gen.name in skip:
            continue
        why = gen.problem or "no manifest: the backup that wrote it did not finish (or still runs)"
        log.warning("passing over %s, newer than %s: %s", gen.name, chosen.name, why)


def _work_out_changes(plan: RestorePlan) -> None:
    """Count the paths the restore writes: new, to replace, the same (plan.counts)."""
    plan.fresh = _fresh(plan.dest, plan.scope)
    counts = dict.fromkeys(CHANGE_KINDS, 0)
    if plan.fresh and not plan.scope.prefix and plan.scope.dumps == "with":
        counts["new"] = _count_everything(plan)
    else:
        for _path, kind in _classify(plan):
            counts[kind] += 1
    plan.counts = counts


def _count_everything(plan: RestorePlan) -> int:
    """The paths a restore of everything into an empty destination writes (all new),
    and the archive's symlinks (plan.external): lines are counted, only symlinks and
    dumps parsed. The archive's rules are applied by the extraction, to every member
    and before anything is put in place (and by --dry-run, through _classify)."""
    assert plan.index is not None
    what = plan.manifest.index.key
    loaded = plan.lock_file is not None and plan.options.databases != "skip"
    targets: dict[str, str] = {}
    written = entries = 0
    for line in plan.index.lines():
        entries += 1
        written += 1
        if b'"symlink"' in line or (loaded and DUMP_FOLDER.encode() in line):
            path, kind, *_, link = parse_record(line, what)
            if kind == "symlink":
                targets[path] = link
            elif loaded and is_dump_path(path):
                written -= 1
    if not entries:
        _nothing_matched(plan)
    plan.external = outward_links(targets)  # everything is written
    if plan.options.refuse_external_links:
        refuse_outward(plan.external, targets)
    return written


def _classify(plan: RestorePlan) -> Iterator[tuple[str, str]]:
    """(path, new|replace|same) of each index entry the restore writes, after the
    archive's rules (every entry, written or not); sets plan.external at the end.

    Streams the index: a record per folder that is new at the destination and per
    symlink, none per file.
    """
    assert plan.index is not None
    scope, dest, what = plan.scope, os.fsencode(plan.dest), plan.manifest.index.key
    # Into the live root the dumps are loaded, never written as files.
    loaded = plan.lock_file is not None and plan.options.databases != "skip"
    index = plan.index
    rules = PathRules(lambda: (parse_record(line, what)[0] for line in index.lines()))
    matched = False
    targets: dict[str, str] = {}  # every symlink of the archive: chains cross the scope
    absent: set[str] = set()  # folders missing at the destination: no need to look inside
    for line in plan.index.lines():
        path, kind, mode, mtime, _uid, _gid, size, link = parse_record(line, what)
        # The archive's rules, for every entry; where a link points, below, for written ones.
        path, kind = rules.check(path, _FLAGS.get(kind, b"?"), size, link)
        if kind == "symlink":
            targets[path] = link
        if not scope.selects(path):
            continue
        matched = True
        if loaded and DUMP_FOLDER in path and is_dump_path(path):
            continue
        if plan.fresh:
            yield path, "new"
            continue
        state = (
            "new"
            if path.rpartition("/")[0] in absent
            else _compare(dest, path, kind, mode, mtime, size, link)
        )
        if state == "new" and kind == "dir":
            absent.add(path)
        yield path, state
    rules.finish()
    if not matched:
        _nothing_matched(plan)
    plan.external = outward_links(targets, scope.writes)  # chains: all the links are known
    if plan.options.refuse_external_links:
        refuse_outward(plan.external, targets)


_FLAGS = {"file": b"0", "dir": b"5", "symlink": b"2"}  # anything else: refused by the rules


def _nothing_matched(plan: RestorePlan) -> None:
    """Raise the error for a scope that selects nothing in the generation."""
    if not any(e.type == "file" for e in plan.entries()):
        # Written from an empty source (an unmounted disk, a new host before its
        # restore) by an itsup without the shrink guard: it restores nothing.
        raise GenerationDamaged(
            plan.manifest.generation,
            f"{plan.manifest.generation} holds no files (it was written from an empty "
            "source); there is nothing in it to restore",
            hint="restore an older generation with --from NAME (see `itsup backup list`), "
            "or let --fallback take the newest one that holds files",
        )
    known = sorted(
        {
            e.path.split("/")[1]
            for e in plan.entries()
            if e.path.startswith("upstream/") and e.path.count("/") >= 1
        }
    )
    hint = f"projects in this backup: {', '.join(known)}" if known else None
    raise UsageError(f"{plan.scope.label}: not in backup {plan.manifest.generation}", hint=hint)


def run_restore(plan: RestorePlan, on_bytes: Callable[[int], None] | None = None) -> RestoreResult:
    """Stream the generation into a staging folder, verify it, then swap it into place.

    Into the live root, the host lock is held throughout (LockedError, exit 11,
    when a backup or another restore of this root holds it).
    """
    try:
        if plan.lock_file is not None and plan.held is None:  # not taken by plan_restore
            plan.held = contextlib.ExitStack()
            _take_lock(plan.held, plan.lock_file)
        return _restore(plan, on_bytes)
    finally:
        plan.close()


def _take_lock(held: contextlib.ExitStack, lock_file: Path) -> None:
    try:
        held.enter_context(host_lock(lock_file, "restore"))
    except LockedError as exc:
        raise LockedError(
            f"{exc.message}; nothing was restored",
            hint="wait for it to finish (the lock goes when it exits), or restore into "
            "another folder with --to",
        ) from None


@dataclass
class FallbackOutcome:
    """What restore_with_fallback did: the plan it ran (or, for a dry run, would run),
    the result (None for a dry run) and the damaged generations it skipped."""

    plan: RestorePlan
    result: RestoreResult | None
    skipped: list[GenerationDamaged] = field(default_factory=list)


def restore_with_fallback(
    host: Host,
    options: RestoreOptions,
    *,
    on_skip: Callable[[GenerationDamaged], None] | None = None,
    confirm: Callable[[RestorePlan], None] | None = None,
    progress: Callable[[RestorePlan], AbstractContextManager[Callable[[int], None] | None]]
    | None = None,
) -> FallbackOutcome:
    """Plan and run a restore; with `options.fallback`, pass over generations found damaged.

    Without `fallback` the first GenerationDamaged is raised: an older
    generation is never used silently. With it, a generation that fails a
    check before anything at the destination changed is skipped (`on_skip`
    is told) and the next older complete one is tried, until one restores or
    none is left (IntegrityError naming each one tried). `confirm` sees each
    plan before anything is written and may raise to stop; `progress` gives,
    per attempt, a context manager yielding the byte-count callback (or None).
    A dry run only plans: nothing is read beyond the manifest and the index.
    """
    skipped: list[GenerationDamaged] = []
    dry_run = options.dry_run

    def skip(exc: GenerationDamaged) -> None:
        if not options.fallback:
            raise exc
        skipped.append(exc)
        log.warning("--fallback: skipped %s: %s", exc.generation, exc.message, extra=FILE_ONLY)
        if on_skip is not None:
            on_skip(exc)

    while True:
        try:
            plan = plan_restore(
                host,
                options,
                prefetch=not dry_run,
                hold_lock=not dry_run,  # into the live root: exit 11 at once if it is taken
                skip=[s.generation for s in skipped],
            )
        except GenerationDamaged as exc:
            skip(exc)
            continue
        except NotFoundError:
            _give_up(skipped)  # the damaged ones were all there was
            raise
        if dry_run:
            return _fell_back(FallbackOutcome(plan, None, skipped), "would restore")
        try:
            if confirm is not None:
                confirm(plan)
        except BaseException:
            plan.close()  # the read-ahead and the host lock
            raise
        try:
            with progress(plan) if progress else contextlib.nullcontext() as advance:
                result = run_restore(plan, on_bytes=advance)
        except GenerationDamaged as exc:
            skip(exc)
            continue
        return _fell_back(FallbackOutcome(plan, result, skipped), "restored")


def _give_up(skipped: list[GenerationDamaged]) -> None:
    """Every complete generation was tried and none restores: say so (exit 5)."""
    if not skipped:
        return
    tried = "; ".join(f"{s.generation} ({s.reason})" for s in skipped)
    raise IntegrityError(
        f"--fallback: no complete generation could be restored; tried {tried}",
        hint="`itsup backup verify --all` shows what is wrong with each",
    )


def _fell_back(outcome: FallbackOutcome, done: str) -> FallbackOutcome:
    if outcome.skipped:
        names = ", ".join(s.generation for s in outcome.skipped)
        generation = outcome.plan.manifest.generation
        log.warning("--fallback: %s %s; skipped %s", done, generation, names, extra=FILE_ONLY)
    return outcome


def _restore(plan: RestorePlan, on_bytes: Callable[[int], None] | None) -> RestoreResult:
    if plan.dumps_alone:
        return _load_dumps_alone(plan, on_bytes)
    started = time.monotonic()
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = plan.dest / f"{STAGING_MARK}{token}"
    aside = plan.dest / f"{STAGING_MARK}{token}{ASIDE_SUFFIX}"
    try:
        try:
            plan.dest.mkdir(parents=True, exist_ok=True)
            remove_leftovers(plan.dest)
            staging.mkdir(mode=0o700)
        except OSError as exc:
            raise _write_error(plan.dest, exc, "preparing the restore") from None
        extractor, stats = _stage(plan, staging, on_bytes)
        if plan.lock_file is not None:  # the live root: dumps are loaded, never left as files
            _set_dumps_aside(staging, plan.dest)
        # The swap takes its steps through this module's names (os.rename, os.link,
        # exchange), so a test can stop a real restore at any one of them
        # (tests/test_crash.py).
        steps = Steps(rename=os.rename, link=os.link, exchange=exchange)
        try:
            swap_into_place(staging, plan.dest, aside, plan.scope.selects, steps)
        except OSError as exc:
            raise _write_error(
                plan.dest, exc, "moving the restored files into place (every change was undone)"
            ) from None
        loaded = load_all(plan.loads, spool_path(plan.dest)) if plan.loads else []
    finally:
        _clean_up(staging, aside)
        if plan.lock_file is not None:
            clear_spool(plan.dest)
    result = _finish(plan, extractor, stats, time.monotonic() - started)
    result.databases = loaded
    return result


def _load_dumps_alone(plan: RestorePlan, on_bytes: Callable[[int], None] | None) -> RestoreResult:
    """--databases-only into the live root: the archive's dump section alone (the file
    tree before it is never read) into the private spool, each dump checked against
    the SHA-256 the manifest records, then loaded; the spool is removed either way."""
    started = time.monotonic()
    manifest = plan.manifest
    records = [record for load in plan.loads for record in load.records]
    spool = spool_path(plan.dest)
    try:
        clear_spool(plan.dest)
        try:
            raw, plan.reader = (
                plan.reader or plan.target.open_reader(manifest.archive.key, plan.read_from),
                None,
            )
            with contextlib.closing(raw):
                size = read_dumps(raw, manifest, records, spool, on_bytes)
        except (IntegrityError, NotFoundError) as exc:
            raise _damaged(manifest.generation, exc) from None
        loaded = load_all(plan.loads, spool)
    finally:
        clear_spool(plan.dest)
    seconds = time.monotonic() - started
    log.info(
        "restored %s (%s) from %s: %d dump(s), %d bytes, read from byte %d of the archive "
        "in %.1f s",
        plan.scope.label, manifest.generation, plan.target.name, len(records), size,
        plan.read_from, seconds,
    )  # fmt: skip
    result = RestoreResult(
        manifest.generation,
        plan.dest,
        len(records),
        0,
        0,
        size,
        seconds,
        manifest.archive.size - plan.read_from,
    )
    result.databases = loaded
    return result


def _set_dumps_aside(staging: Path, root: Path) -> None:
    """Move the staged dump folders (upstream/*/_backup) out of what the swap puts in
    place, into the private spool (0700) the loads read them from."""
    clear_spool(root)
    spool = spool_path(root)
    upstream = staging / "upstream"
    folders = sorted(upstream.glob(f"*/{DUMP_FOLDER}")) if upstream.is_dir() else []
    if not folders:
        return
    os.makedirs(spool.parent, 0o700, exist_ok=True)
    os.mkdir(spool, 0o700)
    for folder in folders:
        os.rename(folder, spool / folder.parent.name)


def _stage(
    plan: RestorePlan, staging: Path, on_bytes: Callable[[int], None] | None
) -> tuple[Unpacker, ExtractStats]:
    """Stream the archive into `staging` and check it whole against the manifest.

    Raises GenerationDamaged for anything wrong with the generation; nothing
    outside `staging` has been touched yet.
    """
    manifest = plan.manifest
    try:
        try:
            raw, plan.reader = plan.reader or plan.target.open_reader(manifest.archive.key), None
        except NotFoundError as exc:
            raise _damaged(manifest.generation, exc) from None
        try:
            stream, hashed = decode(raw, manifest, plan.identities)
            try:
                assert plan.index is not None
                everything = not plan.scope.prefix and plan.scope.dumps == "with"
                extractor = Unpacker(
                    staging,
                    plan.index.lines,
                    None if everything else plan.scope.writes,
                    restore_owner=os.geteuid() == 0,
                    external_links=not plan.options.refuse_external_links,
                    only_changed=None if plan.fresh else plan.dest,
                    processes=writer_processes(sum(plan.counts.values())),
                    on_bytes=on_bytes,
                )
                stats = extractor.run(stream)
                hashed.drain()
            finally:
                with contextlib.suppress(Exception):
                    stream.close()
        finally:
            with contextlib.suppress(Exception):
                raw.close()
    except IntegrityError as exc:
        raise _damaged(manifest.generation, exc) from None
    except ItsupError as exc:
        cause = exc.__context__
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            need = sum(e.size for e in plan.entries() if plan.scope.selects(e.path))
            raise ItsupError(
                f"{exc.message} (ENOSPC) while staging {plan.scope.label} from "
                f"{manifest.generation}; nothing at the destination was changed",
                hint=f"the restore writes all of it ({need / MiB:.1f} MiB) beside the "
                "destination before it replaces anything: free that much space there, "
                "or restore elsewhere with --to",
            ) from None
        raise
    ref = manifest.archive
    if hashed.size != ref.size or hashed.sha256.hexdigest() != ref.sha256:
        raise GenerationDamaged(
            manifest.generation,
            f"{ref.key}: SHA-256 does not match the manifest of {manifest.generation} "
            f"({hashed.size} bytes read, {ref.size} recorded); nothing was restored",
        )
    return extractor, stats


def _finish(
    plan: RestorePlan, extractor: Unpacker, stats: ExtractStats, seconds: float
) -> RestoreResult:
    """Log what was restored and describe it."""
    manifest = plan.manifest
    if extractor.external:
        log.info(
            "restored %d symlink(s) pointing outside the tree as links (never followed): %s",
            len(extractor.external),
            describe_links(extractor.external, 50),
        )
    how = []
    if stats.unchanged:
        how.append(f"{stats.unchanged} already as backed up, left alone")
    if extractor.writers:
        how.append(f"small files written by {len(extractor.writers)} writer process(es)")
    log.info(
        "restored %s (%s) from %s into %s: %d files, %d bytes in %.1f s%s",
        plan.scope.label,
        manifest.generation,
        plan.target.name,
        plan.dest,
        stats.files,
        stats.bytes,
        seconds,
        f" ({'; '.join(how)})" if how else "",
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
        extractor.external,
    )


def _write_error(dest: Path, exc: OSError, doing: str) -> ItsupError:
    if exc.errno == errno.ENOSPC:
        return ItsupError(f"no space left on the device holding {dest} (ENOSPC) while {doing}")
    where = f" ({exc.filename})" if exc.filename else ""
    return ItsupError(f"{dest}: {doing}: {exc.strerror or exc}{where}")


def _clean_up(*folders: Path) -> None:
    """Remove the staging folders, even when a signal arrives while doing so."""
    interrupted: BaseException | None = None
    for folder in folders:
        while True:
            try:
                shutil.rmtree(folder, ignore_errors=True)
                break
            except KeyboardInterrupt as exc:  # SIGINT/SIGTERM: finish tidying, then stop
                interrupted = exc
    if interrupted is not None:
        raise interrupted


__all__ = [
    "FallbackOutcome",
    "GenerationDamaged",
    "ItsupError",
    "RestoreOptions",
    "RestorePlan",
    "RestoreResult",
    "plan_restore",
    "restore_with_fallback",
    "run_restore",
]
