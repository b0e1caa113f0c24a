"""`itsup backup prune`: apply `backup.retention` to the generations on a target.

The decision is made from one listing of the prefix: the names carry the
time, and a generation counts as complete when its manifest object is listed
(no manifest is read for the rules). Only the newest complete generation's
manifest (to know it parses) and `latest.json` are read, to spare what the
lifecycle never deletes.

Order of work (docs/design.md, "Deletes"): under the host lock, list once,
plan, then `GenerationStore.clean_up` (unfinished uploads, and leftovers
without a manifest older than `backup.orphan_grace`), then every generation
the policy does not keep, oldest first, through
`GenerationStore.delete_generations` (in batches: the manifests, then the
indexes, then the archives). A run stopped half way leaves a superset of
what the policy keeps; the next prune or backup finishes the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from itsup.config import RetentionConfig
from itsup.durations import format_duration
from itsup.errors import ConfigError, StorageError
from itsup.generation import Generation, location
from itsup.host import Host
from itsup.lifecycle import GenerationStore, format_until
from itsup.lock import host_lock
from itsup.retention import UNLIMITED, apply_policy, time_zone

log = logging.getLogger("itsup.prune")

NEWEST = "newest complete"
LATEST = "latest"


@dataclass
class PruneRow:
    """One generation and what prune does with it."""

    name: str
    time: str | None  # ISO 8601, UTC; None when the name carries no valid time
    complete: bool  # its manifest is listed
    action: str  # "keep" | "remove"
    rules: list[str] = field(default_factory=list)  # the retention rules keeping it
    protected: list[str] = field(default_factory=list)  # NEWEST and/or LATEST
    note: str | None = None  # why an incomplete (or odd) generation is kept or removed

    def why(self, within: str | None) -> str:
        """The reasons as one line: `daily, weekly; protected: latest`."""
        parts = []
        if self.rules:
            parts.append(", ".join(f"within {within}" if r == "within" else r for r in self.rules))
        if self.protected:
            parts.append(f"protected: {', '.join(self.protected)}")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


@dataclass
class PruneResult:
    where: str
    dry_run: bool
    policy: dict[str, Any]
    rows: list[PruneRow]
    deleted: list[str] = field(default_factory=list)  # object keys deleted
    uploads: int = 0  # unfinished uploads aborted (or partial files removed)
    seconds: float = 0.0

    @property
    def kept(self) -> list[PruneRow]:
        return [r for r in self.rows if r.action == "keep"]

    @property
    def removed(self) -> list[PruneRow]:
        return [r for r in self.rows if r.action == "remove"]

    @property
    def within(self) -> str | None:
        seconds = self.policy.get("keep_within")
        return format_duration(seconds) if seconds else None

    def describe_policy(self) -> str:
        """`keep_daily 7, keep_within 2d; time zone local`."""
        parts = []
        for key, value in self.policy.items():
            if not key.startswith("keep_") or not value:
                continue
            shown = self.within if key == "keep_within" else value
            parts.append(f"{key} {'unlimited' if value == UNLIMITED else shown}")
        return f"{', '.join(parts)}; time zone {self.policy['timezone']}"

    def as_dict(self) -> dict[str, Any]:
        removed = self.removed
        return {
            "where": self.where,
            "dry_run": self.dry_run,
            "policy": self.policy,
            "generations": [asdict(r) for r in self.rows],
            "summary": {
                "generations": len(self.rows),
                "kept": len(self.kept),
                "removed": len(removed),
                "removed_incomplete": sum(1 for r in removed if not r.complete),
                "objects_deleted": len(self.deleted),
                "uploads_aborted": self.uploads,
                "seconds": round(self.seconds, 3),
            },
        }


def retention_of(host: Host) -> RetentionConfig:
    """The configured policy; ConfigError (exit 4) when there is none."""
    retention = host.config.backup.retention
    if retention is None:
        raise ConfigError(
            f"{host.layout.config_file}: backup.retention is not set: prune has no policy "
            "saying what to keep, so it removes nothing",
            hint="add e.g. `retention: {keep_daily: 7, keep_weekly: 4, keep_monthly: 12}` "
            "under backup:, then look at `itsup backup prune --dry-run` first",
        )
    return retention


def plan(
    found: list[Generation],
    retention: RetentionConfig,
    protected: dict[str, list[str]],
    stale: set[str],
    grace: int,
    now: datetime,
) -> list[PruneRow]:
    """Each generation of `found` (newest first) with its fate.

    `protected`: name -> what protects it; `stale`: the leftovers without a
    manifest that are older than the grace period.
    """
    complete: list[tuple[str, datetime]] = []
    rows: dict[str, PruneRow] = {}
    for gen in found:
        has_manifest = "manifest.json" in gen.objects
        row = PruneRow(gen.name, None, has_manifest, "keep", protected=protected.get(gen.name, []))
        rows[gen.name] = row
        try:
            when = gen.time
        except ValueError:
            row.note = "its name carries no valid time: left alone"
            continue
        row.time = when.isoformat()
        if has_manifest:
            complete.append((gen.name, when))
        elif gen.name in stale and not row.protected:
            row.action = "remove"
            row.note = "incomplete: no manifest, left by a run that did not finish"
        elif not row.protected:
            row.note = (
                f"incomplete: younger than backup.orphan_grace ({format_duration(grace)}), "
                "perhaps still being written"
            )
    tz = time_zone(retention.timezone)
    for decision in apply_policy(complete, retention, tz, now):
        row = rows[decision.name]
        row.rules = list(decision.reasons)
        if not decision.keep and not row.protected:
            row.action = "remove"
    return [rows[gen.name] for gen in found]


def run_prune(
    host: Host,
    *,
    target_choice: str | None = None,
    dry_run: bool = False,
    now: datetime | None = None,
    on_plan: Callable[[PruneResult], None] | None = None,
) -> PruneResult:
    """Apply the retention policy to the target's generations (nothing deleted
    with `dry_run`, which also takes no lock).

    `now` is the policy's clock (a generation later than it is never the newest
    that `keep_within` counts from); `on_plan` is called with the plan, every
    generation and its fate, before anything is removed."""
    retention = retention_of(host)
    target, prefix = host.target(target_choice)
    store = GenerationStore(target, prefix)
    if dry_run:
        return _prune(host, store, retention, True, now, on_plan)
    with host_lock(host.layout.lock_file, "prune"):
        return _prune(host, store, retention, False, now, on_plan)


def _prune(
    host: Host,
    store: GenerationStore,
    retention: RetentionConfig,
    dry_run: bool,
    now: datetime | None,
    on_plan: Callable[[PruneResult], None] | None,
) -> PruneResult:
    started = time.monotonic()
    now = now or datetime.now(UTC)
    grace = host.config.backup.orphan_grace
    found = store.generations()
    protected: dict[str, list[str]] = {}
    newest = store.newest_complete(found)
    if newest is not None:
        protected.setdefault(newest.name, []).append(NEWEST)
    for name in sorted(store.latest_generation(found)):
        protected.setdefault(name, []).append(LATEST)
    stale = {g.name for g in store.stale_leftovers(found, grace)}  # by the real clock
    rows = plan(found, retention, protected, stale, grace, now)
    policy = retention.model_dump(exclude={"prune_after_backup"})
    result = PruneResult(location(store.target, store.prefix), dry_run, policy, rows)
    if on_plan is not None:
        on_plan(result)
    if not dry_run:
        _remove(store, grace, found, rows, result)
    result.seconds = time.monotonic() - started
    if dry_run:
        log.info(
            "prune (dry run) of %s: %d generation(s), %d to be kept, %d to be removed",
            result.where, len(rows), len(result.kept), len(result.removed),
        )  # fmt: skip
    else:
        log.info(
            "prune of %s: %d generation(s), %d kept, %d removed (%d object(s)) in %.1f s",
            result.where, len(rows), len(result.kept), len(result.removed),
            len(result.deleted), result.seconds,
        )  # fmt: skip
    return result


def _remove(
    store: GenerationStore,
    grace: int,
    found: list[Generation],
    rows: list[PruneRow],
    result: PruneResult,
) -> None:
    """Leftovers first (the lifecycle's clean-up), then the generations the policy
    does not keep, oldest first, each manifest first."""
    by_name = {g.name: g for g in found}
    leftovers = [r for r in rows if r.action == "remove" and not r.complete]
    # Only the leftovers the plan named (older than the grace period, not protected):
    # the clean-up's own clock may be a little later than the plan's.
    cleanup = store.clean_up(grace, [by_name[r.name] for r in leftovers])
    result.uploads = cleanup.uploads
    result.deleted += cleanup.orphans
    protected = store.protected(found)  # once, not once per generation deleted
    doomed = [r for r in reversed(rows) if r.action == "remove" and r.complete]  # oldest first
    # In batches, step by step (every manifest of a batch, then their indexes, then
    # their archives), so a prune stopped half way leaves whole generations or
    # un-committed leftovers, never a manifest without its archive.
    done = store.delete_generations([by_name[r.name] for r in doomed], found, protected)
    failed = []
    for row in doomed:
        if row.name in done.locked:  # Object Lock: the store itself would refuse
            lock = done.locked[row.name]
            row.action = "keep"
            row.note = f"locked ({lock.lock.mode}) until {format_until(lock.lock.until)}"
            log.info("%s", lock.message)
        elif row.name in done.failed:
            failed.append(done.failed[row.name])
            log.warning("%s not removed: %s", row.name, done.failed[row.name].message)
        else:
            keys = done.deleted[row.name]
            result.deleted += keys
            log.info("removed %s (not kept by backup.retention): %d object(s)", row.name, len(keys))
    if failed:
        more = f" (and {len(failed) - 1} more generation(s) not removed)" if len(failed) > 1 else ""
        raise StorageError(f"{failed[0].message}{more}")
