"""`itsup backup sync --from A --to B`: copy complete generations A holds and B lacks.

Order of work (docs/design.md, "Sync"):

1. Take the host lock (not for `--dry-run`, which writes nothing): a backup
   of this host aborts the unfinished uploads under B's prefix when it starts.
2. List both prefixes. To copy: every generation with a manifest on A and
   none on B, oldest first, so that a sync stopped half way leaves B with a
   consistent run of history.
3. Per generation, in the lifecycle's order: the archive (server-side when A
   and B are one S3 service with one identity, else streamed through this host
   and committed only when its size and SHA-256 are the manifest's), the file
   index (checked against the manifest before it is stored), then B's archive
   is read back and checked (size and SHA-256, as `verify` does), and only
   then the manifest, B's commit point. A generation whose objects on A do not
   match its manifest is not copied (what was written is deleted) and named.
4. B's `latest` is pointed at B's newest complete generation, unless it already
   names it.

A second run finds nothing to copy and writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from itsup.actions.verify import object_problem
from itsup.errors import IntegrityError, NotFoundError, UsageError
from itsup.generation import Generation, archive_suffix, index_suffix, location, scan
from itsup.host import Host
from itsup.lifecycle import GenerationStore
from itsup.lock import host_lock
from itsup.manifest import Manifest, ObjectRef
from itsup.storage import Target
from itsup.storage.transfer import same_service, server_copy, stream_copy

log = logging.getLogger("itsup.sync")


@dataclass
class SyncedGeneration:
    name: str
    action: str  # "copied" | "would copy" | "failed"
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SyncResult:
    source: str  # target names as configured
    dest: str
    source_where: str
    dest_where: str
    how: str  # "server-side copy" | "streamed"
    dry_run: bool
    present: int = 0  # complete generations already on the destination
    rows: list[SyncedGeneration] = field(default_factory=list)
    latest: str | None = None  # what the destination's `latest` names after the sync
    latest_moved: bool = False

    @property
    def failed(self) -> list[SyncedGeneration]:
        return [r for r in self.rows if r.action == "failed"]

    @property
    def copied(self) -> list[SyncedGeneration]:
        return [r for r in self.rows if r.action == "copied"]

    def error(self) -> IntegrityError | None:
        if not self.failed:
            return None
        shown = "; ".join(f"{r.name}: {r.error}" for r in self.failed[:3])
        more = f"; and {len(self.failed) - 3} more" if len(self.failed) > 3 else ""
        return IntegrityError(
            f"backup sync: {len(self.failed)} generation(s) NOT copied to {self.dest}: "
            f"{shown}{more}",
            hint=f"`itsup backup verify --all --target {self.source}` shows what is damaged "
            "on the source",
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failed,
            "from": self.source,
            "to": self.dest,
            "from_where": self.source_where,
            "to_where": self.dest_where,
            "how": self.how,
            "dry_run": self.dry_run,
            "already_there": self.present,
            "copied": len(self.copied),
            "failed": len(self.failed),
            "latest": self.latest,
            "latest_moved": self.latest_moved,
            "generations": [r.as_dict() for r in self.rows],
        }


def run_sync(host: Host, source: str, dest: str, *, dry_run: bool = False) -> SyncResult:
    """Copy the complete generations `source` holds and `dest` lacks; see the module
    docstring. Failures of single generations are in the result (`error()`);
    StorageError when either target cannot be read or written."""
    if source == dest:
        raise UsageError(f"--from and --to both name {source}: give two different targets")
    src, src_prefix = host.target(source)
    dst, dst_prefix = host.target(dest)
    server = same_service(src, dst)
    result = SyncResult(
        source,
        dest,
        location(src, src_prefix),
        location(dst, dst_prefix),
        "server-side copy" if server else "streamed",
        dry_run,
    )
    if not dry_run:
        with host_lock(host.layout.lock_file):
            _sync(src, src_prefix, dst, dst_prefix, result, server)
    else:
        _sync(src, src_prefix, dst, dst_prefix, result, server)
    return result


def _sync(
    src: Target, src_prefix: str, dst: Target, dst_prefix: str, result: SyncResult, server: bool
) -> None:
    store = GenerationStore(dst, dst_prefix)
    on_dest = store.generations()
    present = {g.name for g in on_dest if "manifest.json" in g.objects}
    result.present = len(present)
    todo = [
        g
        for g in reversed(scan(src, src_prefix, load_manifests=False))
        if "manifest.json" in g.objects and g.name not in present
    ]
    log.info(
        "sync %s -> %s: %d generation(s) to copy (%s), %d already there",
        result.source_where, result.dest_where, len(todo), result.how, len(present),
    )  # fmt: skip
    copied: dict[str, tuple[str, str]] = {}  # name -> (archive key, suffix) on the destination
    for gen in todo:
        row = SyncedGeneration(gen.name, "would copy" if result.dry_run else "copied")
        result.rows.append(row)
        started = time.monotonic()
        try:
            manifest_bytes = src.get(gen.manifest_key)
            manifest = Manifest.from_bytes(manifest_bytes, gen.manifest_key)
            row.bytes = manifest.archive.size
            if not result.dry_run:
                copied[gen.name] = _copy_generation(
                    src, dst, store, gen, manifest, manifest_bytes, server
                )
        except (IntegrityError, NotFoundError) as exc:
            row.action, row.error = "failed", exc.message
            log.error("sync: %s NOT copied: %s", gen.name, exc.message)
        row.seconds = time.monotonic() - started
    if not result.dry_run:
        _point_latest(store, on_dest, present, copied, result)


def _copy_generation(
    src: Target,
    dst: Target,
    store: GenerationStore,
    gen: Generation,
    manifest: Manifest,
    manifest_bytes: bytes,
    server: bool,
) -> tuple[str, str]:
    """Archive, index, check on the destination, manifest; returns the archive's key
    and suffix there. IntegrityError, nothing committed, when the source does not
    match its manifest."""
    suffix = archive_suffix(manifest.compression, manifest.encrypted)
    archive_key = f"{store.prefix}{gen.name}{suffix}"
    index_key = f"{store.prefix}{gen.name}{index_suffix(manifest.encrypted)}"
    # 1. the archive
    if server:
        server_copy(src, manifest.archive.key, dst, archive_key, manifest.archive.size)
    else:
        stream_copy(
            src, manifest.archive.key, dst, archive_key, manifest.archive.size,
            manifest.archive.sha256,
        )  # fmt: skip
    # 2. the file index, checked before it is stored
    index = src.get(manifest.index.key)
    if len(index) != manifest.index.size or hashlib.sha256(index).hexdigest() != (
        manifest.index.sha256
    ):
        store.discard_uncommitted(index_key, archive_key)
        raise IntegrityError(
            f"{manifest.index.key}: size or SHA-256 does not match the manifest: the source "
            "is damaged, nothing was copied"
        )
    store.put_index(index_key, index)
    # 3. the copy on the destination, read back: size and SHA-256 against the manifest
    problem = object_problem(
        dst, ObjectRef(archive_key, manifest.archive.size, manifest.archive.sha256)
    )
    if problem is not None:
        store.discard_uncommitted(index_key, archive_key)
        raise IntegrityError(
            f"the copy on the destination fails its check ({problem}); nothing was committed"
        )
    # 4. the manifest: the commit point (its keys rewritten when the prefixes differ)
    store.commit_bytes(gen.name, _rekeyed(manifest_bytes, archive_key, index_key))
    log.info("sync: %s copied (%d bytes) and checked", gen.name, manifest.archive.size)
    return archive_key, suffix


def _rekeyed(manifest_bytes: bytes, archive_key: str, index_key: str) -> bytes:
    """The manifest as stored on the source, naming the destination's keys (every
    other field, known to this itsup or not, kept as it is)."""
    raw = json.loads(manifest_bytes)
    if raw["archive"]["key"] == archive_key and raw["index"]["key"] == index_key:
        return manifest_bytes
    raw["archive"]["key"], raw["index"]["key"] = archive_key, index_key
    return (json.dumps(raw, indent=2, ensure_ascii=False) + "\n").encode()


def _point_latest(
    store: GenerationStore,
    on_dest: list[Generation],
    present: set[str],
    copied: dict[str, tuple[str, str]],
    result: SyncResult,
) -> None:
    """`latest` on the destination names its newest complete generation."""
    newest = max(present | set(copied), default=None)
    result.latest = newest
    if newest is None or (newest not in copied and store.latest_generation(on_dest) == {newest}):
        return
    if newest in copied:
        archive_key, suffix = copied[newest]
    else:
        gen = next(g for g in on_dest if g.name == newest)
        part = next(s for s in gen.objects if s.startswith("tar"))
        archive_key, suffix = f"{store.prefix}{newest}.{part}", f".{part}"
    store.point_latest(newest, archive_key, suffix)
    result.latest_moved = True
    log.info("sync: latest on %s is now %s", result.dest_where, newest)
