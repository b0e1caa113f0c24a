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
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from itsup import __version__
from itsup.agekeys import parse_recipient
from itsup.dumps.plan import ProjectPlan, plan_dumps
from itsup.dumps.run import DumpRecord, DumpRun, clear_spool
from itsup.dumps.services import StoppedServices
from itsup.errors import ItsupError
from itsup.generation import (
    Generation,
    archive_suffix,
    generation_name,
    index_suffix,
    location,
)
from itsup.host import Host
from itsup.layout import STATE_DIRS
from itsup.lifecycle import GenerationStore
from itsup.lock import host_lock
from itsup.manifest import IndexWriter, Manifest, ObjectRef
from itsup.pipeline.archive import Problem, Selection, Stats
from itsup.pipeline.codec import encode, encode_index

log = logging.getLogger("itsup.backup")


@dataclass
class BackupResult:
    generation: str
    target: str
    archive_key: str
    archive_size: int
    stats: Stats
    seconds: float
    latest_key: str
    dumps: list[DumpRecord] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.stats.problems)

    @property
    def failed_dumps(self) -> list[DumpRecord]:
        return [d for d in self.dumps if d.result != "ok"]


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
    """Write one complete generation of upstream/ and proxy/ to the target.

    `on_locked` is called once the host lock is held (the run really starts).
    Raises ShrinkRefused, having stored nothing, when the source is empty or
    far smaller than the newest complete generation (unless `allow_shrink`).
    """
    cfg = host.config.backup
    target, prefix = host.target(target_choice)
    with host_lock(host.layout.lock_file):
        if on_locked is not None:
            on_locked()
        started = time.monotonic()
        start_time = now or datetime.now(UTC)
        store = GenerationStore(target, prefix)
        store.clean_up(cfg.orphan_grace)  # what killed runs left behind
        clear_spool(host.layout.root)  # plaintext dumps a killed run left
        plans = plan_dumps(host.layout, host.secrets, cfg.databases, cfg.dump_idle_timeout)
        found = store.generations()
        name = _unique_name(found, start_time)
        newest = store.newest_complete(found)
        guard = _shrink_guard(
            allow_shrink,
            newest.manifest if newest else None,
            cfg.guard.min_ratio,
            location(target, prefix),
        )
        recipients = (
            [parse_recipient(r) for r in cfg.encryption.recipients] if cfg.encryption else []
        )
        suffix = archive_suffix(cfg.compression_settings.codec, bool(recipients))
        log.info("backup %s started: %s -> %s", name, host.layout.root, target.name)

        # 1. the archive, streamed; visible under its key only once whole (and let
        #    through by the shrink guard)
        index = IndexWriter()
        with (
            DumpRun(plans, host.layout.root, cfg.dump_jobs) as dumps,
            StoppedServices(plans) as stopped,
        ):
            done: list[DumpRecord] = []

            def after_tree() -> list[tuple[str, str]]:
                stopped.start_again()  # the files are read: the services run again
                records, members = dumps.wait()
                done.extend(records)
                return members

            archive, stats = stream_archive(
                host, store, f"{prefix}{name}{suffix}", index, recipients, on_bytes, guard,
                plans=plans, extras=after_tree,
            )  # fmt: skip
        _dump_problems(stats, plans, done, stopped.problems)
        # 2. the file index
        index_ref = write_index(
            store, f"{prefix}{name}{index_suffix(bool(recipients))}", index, recipients
        )
        # 3. the manifest: the commit point of the generation
        store.commit(
            describe_generation(host, name, start_time, started, archive, index_ref, stats, done)
        )
        # 4. the `latest` alias the spec's plain-tools procedures use
        latest_key = store.point_latest(name, archive.key, suffix)
        result = BackupResult(
            name, target.name, archive.key, archive.size, stats, 0.0, latest_key, done
        )
        result.seconds = time.monotonic() - started
        _log_outcome(result)
        return result


def _shrink_guard(
    allow_shrink: bool, reference: Manifest | None, min_ratio: float, where: str
) -> Callable[[Stats], None]:
    """The check run between the end of the archive stream and its commit."""

    def guard(stats: Stats) -> None:
        if allow_shrink:
            if not stats.files:  # asked for: an empty generation, said out loud
                log.warning("storing a backup that holds no files (--allow-shrink)")
            return
        sources = " and ".join(f"{d}/" for d in STATE_DIRS)
        check_shrink(stats, reference, min_ratio, where, sources)

    return guard


def _log_outcome(result: BackupResult) -> None:
    stats = result.stats
    for problem in stats.problems:
        log.warning("partial: %s: %s", problem.path, problem.problem)
    for note in stats.skipped:
        log.info("note: %s: %s", note.path, note.problem)
    log.info(
        "backup %s finished: %d files, %d bytes stored as %d bytes in %.1f s%s",
        result.generation,
        stats.files,
        stats.bytes,
        result.archive_size,
        result.seconds,
        " (PARTIAL)" if result.partial else "",
    )


def stream_archive(
    host: Host,
    store: GenerationStore,
    key: str,
    index: IndexWriter,
    recipients: list[Any],
    on_bytes: Callable[[int], None] | None,
    before_commit: Callable[[Stats], None] | None = None,
    *,
    plans: list[ProjectPlan] | None = None,
    extras: Callable[[], list[tuple[str, str]]] | None = None,
) -> tuple[ObjectRef, Stats]:
    """walk -> tar -> compress -> encrypt -> hash (`codec.encode`) -> upload; abort the
    upload on any failure.

    The live data folders of dumped engines (`plans`) are left out of the walk;
    `extras` adds the dumps after it. `before_commit` sees the run's figures
    once the stream is whole and may raise to abort it: then nothing is left
    under the key.
    """
    cfg = host.config.backup
    compression = cfg.compression_settings
    left_out = frozenset(path for plan in plans or () for path in plan.excludes)
    selection = Selection(STATE_DIRS, tuple(cfg.exclude), cfg.include_volumes, left_out)
    writer = store.open_archive(key)
    try:
        encoded = encode(
            writer,
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
        if before_commit is not None:
            before_commit(encoded.stats)
        size = writer.commit()
    except BaseException:
        writer.abort()
        raise
    return ObjectRef(key, size, encoded.sha256), encoded.stats


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


def write_index(
    store: GenerationStore, key: str, index: IndexWriter, recipients: list[Any]
) -> ObjectRef:
    """Store the file index (encrypted like the archive) and return its reference."""
    return store.put_index(key, encode_index(index.finish(), recipients))


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
    )


__all__ = ["BackupResult", "Problem", "ShrinkRefused", "check_shrink", "run_backup"]
