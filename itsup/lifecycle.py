"""The life of a generation on a target: the one place that knows the order of
its writes and deletes (docs/design.md, "Order of writes").

Writes, by a backup that holds the host lock:

1. the archive, streamed: visible under its key only once whole;
2. the file index;
3. the manifest: the commit point; a generation is complete if and only if
   its manifest exists and parses;
4. the `latest` alias: a copy of the archive, then `latest.json`, which
   names the generation it is a copy of.

Deletes, by cleanup and by retention (`actions/prune.py`), go the other way: the manifest
first (which un-commits the generation: from that instant it is a leftover
nothing restores), then the index, then the archive. Many generations are
deleted in batches of BATCH, step by step: every manifest of the batch (one
bulk delete on S3, where the server has one), then the indexes of those whose
manifest went, then their archives; a generation whose object failed to go
keeps the objects after it. Never deleted: the newest complete generation,
the generation `latest` is a copy of, and a generation any of whose objects
is still under Object Lock retention (`lock_of`: a delete would only hide it
behind a delete marker, unrestorable by itsup while its bytes stay stored
and paid for until the retention ends).

What failed runs leave behind is removed by the next backup: unfinished
uploads at once (the host lock says no run of this host is writing), and
archives or indexes without a manifest once they are older than a grace
period (another host writing the same prefix by mistake may be between its
archive and its manifest; a run of this host never is, under the lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from itsup.errors import ItsupError, NoBackupError, NotFoundError, StorageError
from itsup.generation import LATEST, Generation, scan, select_generation
from itsup.manifest import Manifest, ObjectRef
from itsup.storage.base import ObjectWriter, Retention, Target

if TYPE_CHECKING:
    from itsup.index import IndexFile

log = logging.getLogger("itsup.lifecycle")
# Leftovers younger than this are left alone (see the module docstring).
DEFAULT_ORPHAN_GRACE = 3600
LATEST_SUFFIXES = (".tar.gz", ".tar.gz.age", ".tar", ".tar.age")
INDEX_PUT_WHOLE = 8 << 20  # a larger file index is streamed to its target
POINTER = f"{LATEST}.json"  # {"generation": NAME, "archive": KEY}: what `latest` copies
# Generations deleted together: their manifests, then their indexes, then their archives
# (on S3 one DeleteObjects each, which takes up to 1,000 keys). A run stopped half way
# leaves at most this many generations un-committed (the next cleanup removes them).
BATCH = 1000
LOCK_CHECKS = 16  # generations whose Object Lock retention is asked at once


class ProtectedGeneration(ItsupError):
    """A delete of the newest complete generation, or of the one `latest` copies."""


class LockedGeneration(ItsupError):
    """A delete of a generation whose objects are still under Object Lock retention."""

    def __init__(self, name: str, lock: Retention) -> None:
        super().__init__(
            f"{name} is under Object Lock ({lock.mode}) until {format_until(lock.until)}; "
            "it is kept until then"
        )
        self.generation = name
        self.lock = lock


def format_until(seconds: float) -> str:
    """A retain-until time as the operator reads it: `2026-04-15 03:00 UTC`."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


@dataclass
class Deletion:
    """What deleting several generations did, by generation name."""

    deleted: dict[str, list[str]] = field(default_factory=dict)  # keys gone, in order
    locked: dict[str, LockedGeneration] = field(default_factory=dict)  # left: under retention
    # Left (from that object on) by a failure: the objects before it are gone.
    failed: dict[str, StorageError] = field(default_factory=dict)


@dataclass
class Cleanup:
    """What `clean_up` removed."""

    uploads: int = 0  # unfinished uploads aborted (S3) or partial files removed (local)
    orphans: list[str] = field(default_factory=list)  # keys of leftover objects deleted


class GenerationStore:
    """The generations under one prefix of one target, written and deleted in order."""

    def __init__(self, target: Target, prefix: str) -> None:
        self.target = target
        self.prefix = prefix
        self._may_lock: bool | None = None  # whether objects can be locked at all: asked once

    # -- reading --------------------------------------------------------------------

    def generations(self) -> list[Generation]:
        """Every generation under the prefix, newest first (manifests not yet read)."""
        return scan(self.target, self.prefix, load_manifests=False)

    def newest_complete(self, found: list[Generation]) -> Generation | None:
        try:
            return select_generation(found, None, self.target)
        except NoBackupError:
            return None

    def latest_generation(self, found: list[Generation]) -> set[str]:
        """The generation `latest` is a copy of, from `latest.json`.

        Where there is no readable pointer (a target written before it existed),
        every generation whose archive has exactly `latest`'s size: a superset,
        never a miss.
        """
        try:
            pointer = json.loads(self.target.get(f"{self.prefix}{POINTER}"))
            return {str(pointer["generation"])}
        except (StorageError, ValueError, TypeError, KeyError):
            pass
        sizes = set()
        for suffix in LATEST_SUFFIXES:
            try:
                sizes.add(self.target.stat(f"{self.prefix}{LATEST}{suffix}").size)
            except StorageError:  # NotFoundError included: no alias of that format
                continue
        return {
            gen.name
            for gen in found
            if any(info.size in sizes for s, info in gen.objects.items() if s.startswith("tar"))
        }

    def lock_of(self, gen: Generation, now: float | None = None) -> Retention | None:
        """The Object Lock retention that still holds `gen`: that of its object locked
        longest, or None when none of its objects is locked now (one HeadObject each)."""
        if self._may_lock is None:
            self._may_lock = self.target.may_lock()
        if not self._may_lock:
            return None
        moment = time.time() if now is None else now
        longest: Retention | None = None
        for suffix in gen.objects:
            try:
                lock = self.target.retention(f"{self.prefix}{gen.name}.{suffix}")
            except NotFoundError:
                continue
            if lock is None or not lock.active(moment):
                continue
            if longest is None or lock.until > longest.until:
                longest = lock
        return longest

    def protected(self, found: list[Generation]) -> set[str]:
        """Names of the generations that are never deleted: the newest complete
        one, and the one `latest` is a copy of."""
        keep = self.latest_generation(found)
        newest = self.newest_complete(found)
        if newest is not None:
            keep.add(newest.name)
        return keep

    # -- writing (a backup, in this order) --------------------------------------------

    def open_archive(self, key: str) -> ObjectWriter:
        """1. The archive, streamed; nothing is visible under `key` until its commit."""
        return self.target.open_writer(key)

    def put_index(self, key: str, data: bytes | IndexFile) -> ObjectRef:
        """2. The file index, as it will be stored (encrypted already when asked): bytes,
        or a backup's spooled IndexFile, stored whole when it is small (one put, retried
        as any put), else streamed like an archive."""
        if isinstance(data, bytes):
            self.target.put(key, data)
            return ObjectRef(key, len(data), hashlib.sha256(data).hexdigest())
        if data.size <= INDEX_PUT_WHOLE:
            self.target.put(key, b"".join(data.chunks()))
        else:
            writer = self.target.open_writer(key)
            try:
                for chunk in data.chunks():
                    writer.write(chunk)
            except BaseException:
                writer.abort()
                raise
            writer.commit()
        return ObjectRef(key, data.size, data.sha256)

    def commit(self, manifest: Manifest) -> None:
        """3. The manifest: from now on the generation is complete."""
        self.target.put(f"{self.prefix}{manifest.generation}.manifest.json", manifest.to_bytes())

    def commit_bytes(self, generation: str, data: bytes) -> None:
        """3. A manifest as stored elsewhere (`backup sync`): the generation is complete."""
        self.target.put(f"{self.prefix}{generation}.manifest.json", data)

    def discard_uncommitted(self, index_key: str, archive_key: str) -> None:
        """Delete what a copy wrote before its manifest (index first, then archive),
        when it turned out not to match: it was never offered for restore."""
        for key in (index_key, archive_key):
            self.target.delete(key)

    def point_latest(self, generation: str, archive_key: str, suffix: str) -> str:
        """4. `latest` becomes a copy of the archive, then `latest.json` names it;
        an alias of another format goes.

        A run stopped between the copy and the pointer leaves the pointer on the
        previous generation, which is then kept too: never too little.
        """
        latest_key = f"{self.prefix}{LATEST}{suffix}"
        pointer = json.dumps({"generation": generation, "archive": archive_key}) + "\n"
        try:
            self.target.copy(archive_key, latest_key)
            self.target.put(f"{self.prefix}{POINTER}", pointer.encode())
        except StorageError as exc:
            raise StorageError(
                f"the backup is complete, but {latest_key} could not be updated: {exc.message}"
            ) from None
        for other in LATEST_SUFFIXES:
            key = f"{self.prefix}{LATEST}{other}"
            if key == latest_key:
                continue
            try:
                self.target.stat(key)  # a key that may not delete still backs up
            except NotFoundError:
                continue
            self.target.delete(key)
        return latest_key

    # -- deleting -----------------------------------------------------------------------

    def delete_generation(
        self, gen: Generation, found: list[Generation], protected: set[str] | None = None
    ) -> list[str]:
        """Delete one generation, manifest first; return the keys deleted.

        `found` is the current listing (to know what is protected). Refuses
        (ProtectedGeneration) the newest complete generation and what `latest`
        copies, and (LockedGeneration, saying until when) one still under Object
        Lock retention; a failed delete raises its StorageError. A run killed half
        way leaves an incomplete generation, which the next cleanup removes.
        """
        done = self.delete_generations([gen], found, protected)
        if gen.name in done.locked:
            raise done.locked[gen.name]
        if gen.name in done.failed:
            raise done.failed[gen.name]
        return done.deleted[gen.name]

    def delete_generations(
        self,
        gens: Sequence[Generation],
        found: list[Generation],
        protected: set[str] | None = None,
    ) -> Deletion:
        """Delete `gens` in batches of BATCH, in their order, each manifest first.

        Refuses (ProtectedGeneration, before anything is deleted) when one of them is
        the newest complete generation or what `latest` copies; `protected`, when
        given, is `protected(found)` worked out once by the caller. A generation still
        under Object Lock retention is left (`locked`); one whose delete fails is left
        from that object on (`failed`), its later objects kept: an archive never goes
        while its manifest stays."""
        keep = self.protected(found) if protected is None else protected
        refused = [gen.name for gen in gens if gen.name in keep]
        if refused:
            raise ProtectedGeneration(
                f"{refused[0]} is the newest complete generation or what latest is a copy "
                "of; it is never deleted"
            )
        done = Deletion()
        for start in range(0, len(gens), BATCH):
            self._delete_batch(gens[start : start + BATCH], done)
        return done

    def _delete_batch(self, gens: Sequence[Generation], done: Deletion) -> None:
        """One batch: the locks asked, then the objects step by step (`_delete_rank`)."""
        if self._may_lock is None:
            self._may_lock = self.target.may_lock()
        live = list(gens)
        if self._may_lock:
            with ThreadPoolExecutor(min(LOCK_CHECKS, len(gens))) as pool:
                checked = list(pool.map(self._lock_or_error, gens))
            live = []
            for gen, lock in zip(gens, checked, strict=True):
                if isinstance(lock, StorageError):
                    done.failed[gen.name] = lock
                elif lock is not None:
                    done.locked[gen.name] = LockedGeneration(gen.name, lock)
                else:
                    live.append(gen)
        for gen in live:
            done.deleted[gen.name] = []
        for rank in (0, 1, 2):
            step = {
                f"{self.prefix}{gen.name}.{suffix}": gen.name
                for gen in live
                for suffix in sorted(gen.objects)
                if _delete_rank(suffix) == rank
            }
            if not step:
                continue
            failures = self.target.delete_many(list(step))
            for key, name in step.items():
                if key in failures:
                    done.failed.setdefault(name, failures[key])
                else:  # gone, even when another object of its step failed
                    done.deleted[name].append(key)
            live = [gen for gen in live if gen.name not in done.failed]

    def _lock_or_error(self, gen: Generation) -> Retention | StorageError | None:
        try:
            return self.lock_of(gen)
        except StorageError as exc:
            return exc

    def stale_leftovers(
        self, found: list[Generation], grace_seconds: float, now: float | None = None
    ) -> list[Generation]:
        """The generations in `found` without a manifest whose newest object is older
        than `grace_seconds`: what failed runs left. Younger ones may still be being
        written (another host sharing the prefix by mistake), so they are not listed."""
        cutoff = (time.time() if now is None else now) - grace_seconds
        return [
            gen
            for gen in found
            if gen.objects
            and "manifest.json" not in gen.objects
            and max(info.modified for info in gen.objects.values()) <= cutoff
        ]

    def clean_up(
        self,
        grace_seconds: float = DEFAULT_ORPHAN_GRACE,
        found: list[Generation] | None = None,
    ) -> Cleanup:
        """Remove what failed runs left: unfinished uploads, then manifest-less
        archives and indexes older than `grace_seconds`. Call it holding the lock.

        `found` limits the leftovers considered to those generations (a listing made
        already, or the leftovers prune's plan named); without it the prefix is listed.
        """
        done = Cleanup(uploads=self.target.cleanup_incomplete(self.prefix))
        if done.uploads:
            log.info("discarded %d unfinished upload(s) left by an interrupted run", done.uploads)
        listing = self.generations() if found is None else found
        stale = self.stale_leftovers(listing, grace_seconds)
        gone = self.delete_generations(stale, listing, protected=set())
        for gen in stale:
            if gen.name in gone.locked:
                log.info("%s", gone.locked[gen.name].message)
            elif gen.name in gone.failed:
                # A key that may not delete (prune and cleanup run elsewhere) still
                # backs up: the leftover stays for the key that may.
                log.warning("leftover %s not removed: %s", gen.name, gone.failed[gen.name].message)
            if gen.name in gone.failed or gen.name in gone.locked:
                continue
            keys = gone.deleted[gen.name]
            done.orphans += keys
            log.info(
                "removed %s, left without a manifest by a run that did not finish: %s",
                gen.name,
                ", ".join(k.rpartition("/")[2] for k in keys),
            )
        return done


def _delete_rank(suffix: str) -> int:
    """Manifest first (it un-commits the generation), then the index, then the archive."""
    if suffix == "manifest.json":
        return 0
    if suffix.startswith("index"):
        return 1
    return 2
