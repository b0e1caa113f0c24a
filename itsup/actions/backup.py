"""`itsup backup`: one generation of the host's state, streamed to a target.

The path, top to bottom:

    walk -> tar (per-file SHA-256) -> gzip (ISA-L, threads) -> age (optional)
         -> SHA-256 of the object -> multipart upload (parts in flight)

Database dumps (projects/{project}/backup.yml, or discovered with
`backup.databases: auto`) run beside the walk, bounded, into a private spool;
services listed in `stop:` are stopped while the tree is read and started
again right after it (and on any failure); the dumps are then appended to the
same archive under upstream/{project}/_backup/ and listed in the manifest.

Order of writes (docs/design.md): archive object (committed only when the
stream is whole, and only when the shrink guard lets it), file index,
manifest (the commit marker: a generation without it is never offered for
restore), then the `latest` alias.

Several targets (`backup.targets`, no `--target` and no `backup.target`): the
tree is read, compressed and hashed once; a fan-out (`pipeline/fanout.py`)
feeds each target's upload from its own thread through a bounded queue, and
each target then gets the order of writes above on its own, all at once. A
target that fails (or stalls past `backup.target_stall_timeout`) is dropped
and its upload aborted; the others complete, and the run is partial.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from itsup import __version__
from itsup.agekeys import parse_recipient
from itsup.dumps.plan import ProjectPlan, plan_dumps
from itsup.dumps.run import DumpRecord, DumpRun, clear_spool
from itsup.dumps.services import StoppedServices
from itsup.errors import ItsupError, StorageError
from itsup.generation import (
    Generation,
    archive_suffix,
    generation_name,
    index_suffix,
    location,
)
from itsup.host import Host
from itsup.index import IndexFile
from itsup.layout import STATE_DIRS
from itsup.lifecycle import GenerationStore
from itsup.lock import host_lock
from itsup.manifest import IndexWriter, Manifest, ObjectRef
from itsup.pipeline.archive import Problem, Selection, Stats
from itsup.pipeline.codec import encode
from itsup.pipeline.fanout import FanOut, Sink
from itsup.pipeline.stream import Writable
from itsup.storage import ObjectWriter, Target

log = logging.getLogger("itsup.backup")
# Seconds a failed run waits for a dropped target's thread to abort its upload.
FAILED_RUN_GRACE = 5.0


@dataclass
class TargetOutcome:
    """How one target of the run fared: the generation stored there, or why not."""

    name: str  # as configured (a key of backup.targets, or s3 / local)
    where: str  # e.g. "s3://bucket/itsup/ at https://..." (never credentials)
    archive_key: str | None = None
    archive_size: int = 0
    latest_key: str | None = None
    seconds: float = 0.0
    error: ItsupError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.latest_key is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "where": self.where,
            "ok": self.ok,
            "archive_key": self.archive_key,
            "bytes": self.archive_size if self.ok else None,
            "seconds": round(self.seconds, 3),
            "error": self.error.message if self.error is not None else None,
        }


@dataclass
class BackupResult:
    generation: str
    target: str  # the first target that stored it (its `name`, as opened)
    archive_key: str
    archive_size: int
    stats: Stats
    seconds: float
    latest_key: str
    dumps: list[DumpRecord] = field(default_factory=list)
    targets: list[TargetOutcome] = field(default_factory=list)  # every target, config order

    @property
    def partial(self) -> bool:
        return bool(self.stats.problems) or bool(self.failed_targets)

    @property
    def failed_dumps(self) -> list[DumpRecord]:
        return [d for d in self.dumps if d.result != "ok"]

    @property
    def failed_targets(self) -> list[TargetOutcome]:
        return [t for t in self.targets if not t.ok]


class ShrinkRefused(ItsupError):
    """The source is empty, or far smaller than the newest complete generation."""


def _mb(n: int) -> str:
    """Bytes for a message: 812 B, 4.2 kB, 693.1 MB, 1.2 GB."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:,.1f} TB"


def check_shrink(
    stats: Stats, reference: Manifest | None, min_ratio: float, where: str, sources: str
) -> None:
    """Refuse (ShrinkRefused) a backup that is empty or holds fewer than `min_ratio`
    of the files or bytes of `reference`, the newest complete generation on the target.

    Such a run is almost always a mistake (an unmounted disk, a wrong root, a new
    host before its restore), and committing it would make it the generation that
    `latest`, restores and `backup check` use.
    """
    now = f"{stats.files:,} files ({_mb(stats.bytes)})"
    override = "if this is really what the host holds now, run `itsup backup --allow-shrink` once"
    if stats.files == 0:
        before = (
            f"; the newest complete generation, {reference.generation}, holds "
            f"{reference.files:,} files ({_mb(reference.source_bytes)})"
            if reference is not None
            else ""
        )
        raise ShrinkRefused(
            f"backup refused: {sources} hold no files{before}; nothing was stored in {where} "
            "and latest is unchanged",
            hint="is the disk mounted and --root right? On a new host, restore first "
            f"(`itsup restore all`); {override}",
        )
    if reference is None or min_ratio <= 0:
        return
    small_files = stats.files < min_ratio * reference.files
    small_bytes = stats.bytes < min_ratio * reference.source_bytes
    if not (small_files or small_bytes):
        return
    raise ShrinkRefused(
        f"backup refused: it holds {now}, the newest complete generation "
        f"{reference.generation} holds {reference.files:,} files "
        f"({_mb(reference.source_bytes)}): under {min_ratio:.0%} of its "
        f"{'files' if small_files else 'bytes'} (backup.guard.min_ratio); nothing was "
        f"stored in {where} and latest is unchanged",
        hint=f"check that every volume is mounted; {override} (or lower backup.guard.min_ratio)",
    )


def _unique_name(found: list[Generation], now: datetime) -> str:
    taken = {g.name for g in found}
    name = generation_name(now)
    while name in taken:  # two runs within one second: take the next free second
        now = now.fromtimestamp(now.timestamp() + 1, UTC)
        name = generation_name(now)
    return name


def run_backup(
    host: Host,
    *,
    target_choice: str | None = None,
    on_bytes: Callable[[int], None] | None = None,
    now: datetime | None = None,
    allow_shrink: bool = False,
    on_locked: Callable[[], None] | None = None,
) -> BackupResult:
    """Write one complete generation of upstream/ and proxy/ to the target, or to
    every target (`Host.target_names`): the tree is read and compressed once, and
    the same archive streams to each target at once (`pipeline.fanout`).

    `on_locked` is called once the host lock is held (the run really starts).
    Raises ShrinkRefused, having stored nothing, when the source is empty or
    far smaller than the newest complete generation on any target (unless
    `allow_shrink`). A target that fails does not stop the others: the result
    names it (`failed_targets`), and the run raises only when every target failed.
    """
    cfg = host.config.backup
    names = host.target_names(target_choice)
    runs = [_TargetRun(TargetOutcome(name, name)) for name in names]
    for run in runs:  # opening is local (no request): a configuration error stops all
        run.target, run.prefix = host.target(run.outcome.name)
        run.outcome.where = location(run.target, run.prefix)
        run.store = GenerationStore(run.target, run.prefix)
    with host_lock(host.layout.lock_file):
        if on_locked is not None:
            on_locked()
        started = time.monotonic()
        start_time = now or datetime.now(UTC)
        ready = _prepare_targets(runs, cfg.orphan_grace)  # what killed runs left behind
        clear_spool(host.layout.root)  # plaintext dumps a killed run left
        plans = plan_dumps(host.layout, host.secrets, cfg.databases, cfg.dump_idle_timeout)
        name = _unique_name([g for run in ready for g in run.found], start_time)
        guard = _shrink_guard(
            allow_shrink,
            [run.newest.manifest for run in ready if run.newest and run.newest.manifest],
            cfg.guard.min_ratio,
            ", ".join(run.outcome.where for run in ready),
        )
        recipients = (
            [parse_recipient(r) for r in cfg.encryption.recipients] if cfg.encryption else []
        )
        suffix = archive_suffix(cfg.compression_settings.codec, bool(recipients))
        log.info(
            "backup %s started: %s -> %s",
            name, host.layout.root, ", ".join(run.target.name for run in ready if run.target),
        )  # fmt: skip

        # 1. the archive, streamed to every target; visible under its key only once
        #    whole (and let through by the shrink guard)
        index = IndexFile(recipients)  # spooled: never held in memory
        try:
            with (
                DumpRun(plans, host.layout.root, cfg.dump_jobs) as dumps,
                StoppedServices(plans) as stopped,
            ):
                done: list[DumpRecord] = []

                def after_tree() -> list[tuple[str, str, str | None]]:
                    stopped.start_again()  # the files are read: the services run again
                    records, members = dumps.wait()
                    done.extend(records)
                    return members

                digest, stats, fanout = stream_archive(
                    host, ready, f"{name}{suffix}", index.writer, recipients, on_bytes, guard,
                    plans=plans, extras=after_tree,
                )  # fmt: skip
            index.finish()
            _dump_problems(stats, plans, done, stopped.problems)
            generation = _Generation(
                name, suffix, start_time, started, digest, stats, done,
                index, index_suffix(bool(recipients)),
            )  # fmt: skip
            # 2.-4. on each target at once: archive committed, file index, manifest (the
            #       commit point of the generation), then the `latest` alias
            try:
                _finish_targets(
                    host, [run for run in ready if run.outcome.error is None], generation
                )
            finally:
                if fanout is not None:  # a dropped target's upload aborts once its write returns
                    fanout.close()
            return _result(runs, generation, started)
        finally:
            index.close()


@dataclass
class _TargetRun:
    """One target of a backup run, while it runs."""

    outcome: TargetOutcome
    target: Target | None = None
    prefix: str = ""
    store: GenerationStore | None = None
    found: list[Generation] = field(default_factory=list)
    newest: Generation | None = None
    writer: ObjectWriter | None = None
    archive_key: str = ""

    def fail(self, exc: ItsupError, when: str) -> None:
        self.outcome.error = exc
        log.error("target %s failed %s: %s", self.outcome.name, when, exc.message)


@dataclass
class _Generation:
    """What every target of the run stores: the same name, archive bytes and index."""

    name: str
    suffix: str
    start_time: datetime
    started: float  # monotonic
    archive: tuple[int, str]  # size, SHA-256
    stats: Stats
    dumps: list[DumpRecord]
    index: IndexFile  # as stored (encrypted when the archive is)
    index_suffix: str


def _prepare_targets(runs: list[_TargetRun], grace: float) -> list[_TargetRun]:
    """Clean up what killed runs left on each target and list its generations, all
    targets at once; the targets that answered. One that fails is left out of the
    run (a single target's failure is the run's)."""

    def prepare(run: _TargetRun) -> None:
        assert run.store is not None
        try:
            run.store.clean_up(grace)
            run.found = run.store.generations()
            run.newest = run.store.newest_complete(run.found)
        except StorageError as exc:
            if len(runs) == 1:
                raise
            run.fail(exc, "before the backup started; it goes on without it")

    if len(runs) == 1:
        prepare(runs[0])
    else:
        with ThreadPoolExecutor(len(runs), thread_name_prefix="target") as pool:
            list(pool.map(prepare, runs))
    ready = [run for run in runs if run.outcome.error is None]
    if not ready:
        raise _all_failed(runs)
    return ready


def _all_failed(runs: list[_TargetRun]) -> ItsupError:
    """The run's error when no target stored the generation: a single target's own
    error, else a StorageError (exit 6) naming each (or the first when they differ)."""
    errors = [run.outcome.error for run in runs if run.outcome.error is not None]
    assert errors
    if len(runs) == 1:
        return errors[0]
    if not all(isinstance(e, StorageError) for e in errors):
        return next(e for e in errors if not isinstance(e, StorageError))
    listed = "; ".join(
        f"{run.outcome.name}: {run.outcome.error.message}"
        for run in runs
        if run.outcome.error is not None
    )
    return StorageError(f"the backup failed on every target ({listed})")


def _finish_targets(host: Host, runs: list[_TargetRun], gen: _Generation) -> None:
    """On each target, in parallel and in the lifecycle's order: commit the archive,
    store the index, commit the manifest, point `latest` at it."""

    def finish(run: _TargetRun) -> None:
        assert run.store is not None and run.writer is not None
        size = run.writer.commit()
        run.outcome.archive_key, run.outcome.archive_size = run.archive_key, size
        archive = ObjectRef(run.archive_key, size, gen.archive[1])
        index_ref = run.store.put_index(f"{run.prefix}{gen.name}{gen.index_suffix}", gen.index)
        run.store.commit(
            describe_generation(
                host, gen.name, gen.start_time, gen.started, archive, index_ref, gen.stats,
                gen.dumps,
            )
        )  # fmt: skip
        run.outcome.latest_key = run.store.point_latest(gen.name, archive.key, gen.suffix)
        run.outcome.seconds = time.monotonic() - gen.started

    if len(runs) == 1:
        finish(runs[0])  # a single target's failure is the run's, as it always was
        return
    with ThreadPoolExecutor(len(runs), thread_name_prefix="target") as pool:
        futures = {pool.submit(finish, run): run for run in runs}
    for future, run in futures.items():
        exc = future.exception()
        if isinstance(exc, ItsupError):
            run.fail(exc, "while storing the generation")
        elif exc is not None:
            raise exc


def _result(runs: list[_TargetRun], gen: _Generation, started: float) -> BackupResult:
    stored = [run for run in runs if run.outcome.ok]
    if not stored:
        raise _all_failed(runs)
    first = stored[0]
    assert first.target is not None and first.outcome.latest_key is not None
    result = BackupResult(
        gen.name,
        first.target.name,
        first.outcome.archive_key or "",
        first.outcome.archive_size,
        gen.stats,
        time.monotonic() - started,
        first.outcome.latest_key,
        gen.dumps,
        [run.outcome for run in runs],
    )
    _log_outcome(result)
    return result


def _shrink_guard(
    allow_shrink: bool, references: list[Manifest], min_ratio: float, where: str
) -> Callable[[Stats], None]:
    """The check run between the end of the archive stream and its commit: against
    the newest complete generation of every target (the source is the same, so one
    that says "shrunk" refuses the run on all of them)."""

    def guard(stats: Stats) -> None:
        if allow_shrink:
            if not stats.files:  # asked for: an empty generation, said out loud
                log.warning("storing a backup that holds no files (--allow-shrink)")
            return
        sources = " and ".join(f"{d}/" for d in STATE_DIRS)
        check_shrink(stats, None, min_ratio, where, sources)  # the empty source
        for reference in references:
            check_shrink(stats, reference, min_ratio, where, sources)

    return guard


def _log_outcome(result: BackupResult) -> None:
    stats = result.stats
    for problem in stats.problems:
        log.warning("partial: %s: %s", problem.path, problem.problem)
    for note in stats.skipped:
        log.info("note: %s: %s", note.path, note.problem)
    log.info(
        "backup %s finished: %d files, %d bytes stored as %d bytes in %.1f s%s%s",
        result.generation,
        stats.files,
        stats.bytes,
        result.archive_size,
        result.seconds,
        f" (read by {stats.readers} reader processes)" if stats.readers else "",
        " (PARTIAL)" if result.partial else "",
    )
    if len(result.targets) > 1:  # a failed one was logged as it failed
        for t in result.targets:
            if t.ok:
                log.info("target %s: %s stored in %.1f s", t.name, t.archive_key, t.seconds)


def stream_archive(
    host: Host,
    runs: list[_TargetRun],
    name: str,
    index: IndexWriter,
    recipients: list[Any],
    on_bytes: Callable[[int], None] | None,
    before_commit: Callable[[Stats], None] | None = None,
    *,
    plans: list[ProjectPlan] | None = None,
    extras: Callable[[], list[tuple[str, str, str | None]]] | None = None,
) -> tuple[tuple[int, str], Stats, FanOut | None]:
    """walk -> tar -> compress -> encrypt -> hash (`codec.encode`) -> each target's
    upload (`pipeline.fanout` when there are several); abort the uploads on any
    failure. Returns the archive's (size, SHA-256), the run's figures and the
    fan-out (to `close` once the targets are done); the uploads that did not fail
    are whole and wait for their commit.

    The live data folders of dumped engines (`plans`) are left out of the walk;
    `extras` adds the dumps after it. `before_commit` sees the run's figures
    once the stream is whole and may raise to abort it: then nothing is left
    under the key on any target.
    """
    cfg = host.config.backup
    compression = cfg.compression_settings
    left_out = frozenset(path for plan in plans or () for path in plan.excludes)
    selection = Selection(STATE_DIRS, tuple(cfg.exclude), cfg.include_volumes, left_out)
    fanout = _open_writers(runs, name, cfg.target_stall_timeout)
    live = [run for run in runs if run.writer is not None]
    try:
        encoded = encode(
            fanout or cast(Writable, live[0].writer),
            host.layout.root,
            selection,
            codec=compression.codec,
            level=compression.level,
            threads=compression.threads,
            recipients=recipients,
            on_entry=index.add,
            on_bytes=on_bytes,
            extras=extras,
        )
        if fanout is not None:
            fanout.finish()
            _drop_failed(runs, fanout)
        if before_commit is not None:
            before_commit(encoded.stats)
    except BaseException:
        if fanout is not None:
            # A failed run (or ^C) does not wait long for a stuck target: an upload it
            # cannot abort now is discarded by the next backup's cleanup.
            fanout.close(grace=FAILED_RUN_GRACE)
            _drop_failed(runs, fanout)
        for run in runs:
            if run.writer is not None and run.outcome.error is None:
                run.writer.abort()
        raise
    return (encoded.size, encoded.sha256), encoded.stats, fanout


def _open_writers(runs: list[_TargetRun], name: str, stall_timeout: float) -> FanOut | None:
    """Start the archive's upload on each target; a fan-out in front of them when
    there are several (None for one: it is written directly)."""
    for run in runs:
        assert run.store is not None
        run.archive_key = f"{run.prefix}{name}"
        try:
            run.writer = run.store.open_archive(run.archive_key)
        except StorageError as exc:
            if len(runs) == 1:
                raise
            run.fail(exc, "at the start of its upload")
    live = [run for run in runs if run.writer is not None]
    if not live:
        raise _all_failed(runs)
    if len(runs) == 1:
        return None
    return FanOut(
        {run.outcome.name: cast(Sink, run.writer) for run in live}, stall_timeout=stall_timeout
    )


def _drop_failed(runs: list[_TargetRun], fanout: FanOut) -> None:
    """Record the targets the fan-out gave up on (their uploads are aborted)."""
    for run in runs:
        error = fanout.failures.get(run.outcome.name)
        if error is not None and run.outcome.error is None:
            if not isinstance(error, ItsupError):
                error = StorageError(f"{type(error).__name__}: {error}")
            run.outcome.error = error


def _dump_problems(
    stats: Stats, plans: list[ProjectPlan], records: list[DumpRecord], stop_problems: list[str]
) -> None:
    """A failed dump, or a service not stopped or started again, makes the backup partial."""
    for plan in plans:
        for note in plan.notes:
            stats.skipped.append(Problem(plan.dump_folder, note))
    for record in records:
        if record.result != "ok":
            stats.problems.append(Problem(record.file, f"dump failed: {record.error}"))
    for message in stop_problems:
        stats.problems.append(Problem("stop", message))


def describe_generation(
    host: Host,
    name: str,
    start_time: datetime,
    started: float,
    archive: ObjectRef,
    index: ObjectRef,
    stats: Stats,
    dumps: list[DumpRecord] | None = None,
) -> Manifest:
    cfg = host.config.backup
    return Manifest(
        generation=name,
        host=socket.gethostname(),
        root=str(host.layout.root),
        started=start_time.isoformat(timespec="seconds"),
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
        duration_seconds=round(time.monotonic() - started, 3),
        archive=archive,
        index=index,
        compression=cfg.compression_settings.codec,
        encryption={"scheme": "age", "recipients": list(cfg.encryption.recipients)}
        if cfg.encryption
        else None,
        roots=[r for r in STATE_DIRS if (host.layout.root / r).exists()],
        include_volumes=cfg.include_volumes,
        files=stats.files,
        dirs=stats.dirs,
        symlinks=stats.symlinks,
        source_bytes=stats.bytes,
        partial=bool(stats.problems),
        problems=[p.as_dict() for p in stats.problems + stats.skipped],
        tool_version=__version__,
        dumps=[d.as_dict() for d in dumps or ()],
        dumps_offset=stats.extras_offset if dumps else None,
    )


__all__ = [
    "BackupResult",
    "Problem",
    "ShrinkRefused",
    "TargetOutcome",
    "check_shrink",
    "run_backup",
]
