"""`backup status` and `backup check`: how old is the newest complete backup?

The age comes from the storage itself (the newest generation with a
manifest), not from local state, so `check` also catches a cron job that
silently stopped running, a target that lost its objects, or a host that
died: run it from anywhere that can read the bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from itsup.errors import ExitCode, ItsupError, StaleError
from itsup.generation import Generation, load_manifest, location, no_backup, scan
from itsup.host import Host
from itsup.monitor import load_state


@dataclass
class TargetStatus:
    name: str  # as configured: a key of backup.targets, or "s3" / "local"
    kind: str  # "s3" | "local"
    where: str  # e.g. "s3://bucket/itsup/ at https://..."
    generations: int = 0
    incomplete: int = 0
    newest: str | None = None
    started: str | None = None
    age_seconds: float | None = None
    duration_seconds: float | None = None
    archive_bytes: int | None = None
    source_bytes: int | None = None
    files: int | None = None
    partial: bool | None = None
    error: str | None = None  # the target could not be read

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def configured_targets(host: Host) -> list[str]:
    """Every configured target's name, in file order (the embedded `local` when none)."""
    return host.config.backup.target_names()


def _newest_complete(target: Any, gens: list[Generation]) -> Generation | None:
    for gen in gens:
        load_manifest(target, gen)
        if gen.complete:
            return gen
    return None


def target_status(host: Host, name: str, now: datetime | None = None) -> TargetStatus:
    target, prefix = host.target(name)
    kind = "s3" if host.config.backup.target_settings(name).scheme == "s3" else "local"
    status = TargetStatus(name, kind, location(target, prefix))
    try:
        gens = scan(target, prefix, load_manifests=False)
        newest = _newest_complete(target, gens)
    except ItsupError as exc:
        status.error = exc.message
        return status
    status.generations = len(gens)
    status.incomplete = sum(1 for g in gens if "manifest.json" not in g.objects)
    if newest is None or newest.manifest is None:
        return status
    m = newest.manifest
    started = datetime.fromisoformat(m.started)
    status.newest = newest.name
    status.started = m.started
    status.age_seconds = ((now or datetime.now(UTC)) - started).total_seconds()
    status.duration_seconds = m.duration_seconds
    status.archive_bytes = m.archive.size
    status.source_bytes = m.source_bytes
    status.files = m.files
    status.partial = m.partial
    return status


@dataclass
class Status:
    targets: list[TargetStatus]
    runs: dict[str, Any]  # action -> last run record (dict)
    successes: dict[str, Any]  # action -> last successful run record

    def as_dict(self) -> dict[str, Any]:
        return {
            "targets": [t.as_dict() for t in self.targets],
            "last_run": self.runs,
            "last_success": self.successes,
        }


def status(host: Host, choice: str | None = None) -> Status:
    """The newest complete backup on the chosen target, or on every configured one."""
    names = [choice] if choice else configured_targets(host)
    state = load_state(host.layout)
    return Status(
        [target_status(host, name) for name in names], state["last"], state["last_success"]
    )


def check(host: Host, max_age: float, choice: str | None = None) -> list[TargetStatus]:
    """Every target's status (`Host.target_names`: the chosen one, `backup.target`, else
    every configured one); raises when any target fails: StaleError when its newest
    complete backup is older than max_age, NoBackupError when it has none,
    StorageError when it cannot be read. With several failing, the error of the
    first in this order is raised (stale and none before unreachable: both mean
    backups are not landing, the `stale` alert), its message naming each."""
    names = host.target_names(choice)
    statuses, errors = [], []
    for name in names:
        st = target_status(host, name)
        statuses.append(st)
        try:
            _check_one(st, max_age)
        except ItsupError as exc:
            errors.append((name, exc))
    if not errors:
        return statuses
    rank = {ExitCode.STALE: 0, ExitCode.NO_BACKUP: 1}
    first = min(errors, key=lambda e: rank.get(e[1].exit_code, 2))[1]
    if len(names) > 1:
        first.message = "; ".join(f"target {name}: {exc.message}" for name, exc in errors)
    raise first


def _check_one(st: TargetStatus, max_age: float) -> None:
    from itsup.durations import format_duration
    from itsup.errors import StorageError

    if st.error is not None:
        raise StorageError(st.error)
    limit = format_duration(max_age)
    if st.newest is None or st.age_seconds is None:
        raise no_backup(st.where, st.generations)
    if st.age_seconds > max_age:
        raise StaleError(
            f"{st.where}: the newest complete backup, {st.newest}, is "
            f"{format_duration(st.age_seconds)} old (limit {limit})",
            hint="the scheduled backup is not running or failing: see logs/backup.log "
            "and `itsup backup status`",
        )
