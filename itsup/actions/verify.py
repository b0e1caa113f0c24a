"""`itsup backup verify`: prove that generations on the target can be restored.

For each generation: its manifest is present and parses; the archive and
the file index exist with the sizes the manifest records; the index has
the recorded SHA-256 and decrypts; the archive is streamed through the
readers a restore uses (ranged download, SHA-256, age, gunzip, tar) to its
end, its SHA-256 compared with the manifest and its member list with the
index, in order. With a data subset, the contents of a random sample of
the files are hashed on the way and compared with the index as well.

Nothing is written: not to the target, not to the host tree, not to a
temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from itsup.agekeys import default_identity_file, load_identities
from itsup.dumps.checks import check_dump
from itsup.errors import IntegrityError, NotFoundError, StorageError
from itsup.generation import (
    LATEST,
    Generation,
    archive_suffix,
    index_suffix,
    location,
    no_backup,
    scan,
    select_generation,
)
from itsup.host import Host
from itsup.index import spool_index
from itsup.lifecycle import GenerationStore
from itsup.manifest import Entry, Manifest, ObjectRef
from itsup.pipeline.check import check_archive
from itsup.pipeline.stream import hash_stream
from itsup.storage import Target

OK, FAILED, INCOMPLETE = "ok", "failed", "incomplete"
NO_MANIFEST = "no manifest: the backup that wrote it did not finish, so nothing can restore it"


def parse_percent(text: str) -> float:
    """`10`, `10%` or `2.5` as a percentage in (0, 100]; ValueError otherwise."""
    cleaned = text.strip().removesuffix("%").strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise ValueError(f"{text!r} is not a percentage (use e.g. 10 or 10%)") from None
    if not 0 < value <= 100 or math.isnan(value):
        raise ValueError(f"{text!r}: give a percentage above 0 and at most 100")
    return value


@dataclass
class GenerationCheck:
    """The outcome of verifying one generation."""

    generation: str
    result: str = OK  # ok | failed | incomplete
    reasons: list[str] = field(default_factory=list)  # the first one is the headline
    encrypted: bool | None = None
    objects_checked: int = 0
    bytes_read: int = 0
    members: int = 0
    files: int = 0  # regular files in the archive, each compared with the index
    files_sampled: int = 0  # chosen for re-hashing (--read-data-subset)
    files_hashed: int = 0
    seconds: float = 0.0
    # Database dumps: each checked against its SHA-256 and for structure.
    dumps: list[dict[str, Any]] = field(default_factory=list)
    # Object Lock: {"mode", "retain_until" (ISO 8601, UTC)} of the object locked
    # longest, None when none is locked (or the key may not read retention).
    lock: dict[str, str] | None = None

    @property
    def reason(self) -> str | None:
        return self.reasons[0] if self.reasons else None

    def fail(self, reason: str) -> None:
        self.result = FAILED
        self.reasons.append(reason)

    def as_dict(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["reason"] = self.reason
        data["seconds"] = round(self.seconds, 3)
        return data


@dataclass
class VerifyResult:
    target: str
    subset: float | None
    generations: list[GenerationCheck]

    @property
    def failed(self) -> list[GenerationCheck]:
        return [g for g in self.generations if g.result == FAILED]

    @property
    def incomplete(self) -> list[GenerationCheck]:
        return [g for g in self.generations if g.result == INCOMPLETE]

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def bytes_read(self) -> int:
        return sum(g.bytes_read for g in self.generations)

    @property
    def files(self) -> int:
        return sum(g.files for g in self.generations)

    @property
    def files_hashed(self) -> int:
        return sum(g.files_hashed for g in self.generations)

    def error(self) -> IntegrityError | None:
        failed = self.failed
        if not failed:
            return None
        shown = "; ".join(f"{g.generation}: {g.reason}" for g in failed[:3])
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        return IntegrityError(
            f"backup verify: {len(failed)} of {len(self.generations)} generation(s) FAILED: "
            f"{shown}{more}",
            hint="a failed generation cannot be trusted for a restore; take a new backup "
            "(`itsup backup`) and find out what damaged the stored objects",
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "target": self.target,
            "read_data_subset": self.subset,
            "checked": len(self.generations),
            "failed": len(self.failed),
            "incomplete": len(self.incomplete),
            "bytes_read": self.bytes_read,
            "files_hashed": self.files_hashed,
            "generations": [g.as_dict() for g in self.generations],
        }


def _wanted_name(wanted: str) -> str:
    name = wanted.removesuffix(".manifest.json")
    for suffix in (".index.jsonl.gz.age", ".index.jsonl.gz", ".tar.gz.age", ".tar.gz"):
        name = name.removesuffix(suffix)
    for suffix in (".tar.age", ".tar"):
        name = name.removesuffix(suffix)
    return name if name.startswith("backup-") else "backup-" + name


def choose(
    generations: list[Generation],
    wanted: str | None,
    every: bool,
    target: Target,
    where: str | None = None,
) -> list[Generation]:
    """The generations to verify: all, the named one, or the newest complete one."""
    if every:
        return generations
    if wanted in (None, LATEST):
        return [select_generation(generations, None, target, where)]
    assert wanted is not None
    name = _wanted_name(wanted)
    for gen in generations:
        if gen.name == name:
            return [gen]
    raise NotFoundError(f"no generation {name} on the target (see `itsup backup list`)")


class _Identities:
    """The age identities, read once and only when an encrypted generation needs them."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.loaded: list[Any] | None = None

    def get(self) -> list[Any]:
        if self.loaded is None:
            enc = self.host.config.backup.encryption
            self.loaded = load_identities(default_identity_file(enc.identity_file if enc else None))
        return self.loaded


def verify_backups(
    host: Host,
    generation: str | None = None,
    *,
    every: bool = False,
    subset: float | None = None,
    target_choice: str | None = None,
    seed: int | None = None,
) -> VerifyResult:
    """Verify the chosen generations; problems are reported per generation, not raised.

    Raises StorageError when the target cannot be reached, NotFoundError when
    there is nothing to verify, ConfigError when an encrypted generation has
    no identity that opens it.
    """
    target, prefix = host.target(target_choice)
    found = scan(target, prefix, load_manifests=False)
    if not found:  # nothing at all: the same answer as restore, drill and check
        raise no_backup(location(target, prefix), 0)
    chosen = choose(found, generation, every, target, location(target, prefix))
    rng = random.Random(seed)
    identities = _Identities(host)
    checks = []
    for gen in chosen:
        check = verify_generation(target, prefix, gen, identities, subset, rng)
        if check.result == INCOMPLETE and not every:
            check.result = FAILED  # named (or chosen) on purpose: it cannot be restored
        checks.append(check)
    return VerifyResult(target.name, subset, checks)


def verify_generation(
    target: Target,
    prefix: str,
    gen: Generation,
    identities: _Identities,
    subset: float | None,
    rng: random.Random,
) -> GenerationCheck:
    started = time.monotonic()
    check = GenerationCheck(gen.name)
    try:
        _verify(target, prefix, gen, identities, subset, rng, check)
        check.lock = lock_record(GenerationStore(target, prefix), gen)
    finally:
        check.seconds = time.monotonic() - started
    return check


def lock_record(store: GenerationStore, gen: Generation) -> dict[str, str] | None:
    """The generation's Object Lock as verify reports it; None when unlocked or unknown."""
    try:
        lock = store.lock_of(gen)
    except StorageError:
        return None  # not the generation's fault: the check itself says what it found
    if lock is None:
        return None
    return {"mode": lock.mode, "retain_until": datetime.fromtimestamp(lock.until, UTC).isoformat()}


def _verify(
    target: Target,
    prefix: str,
    gen: Generation,
    identities: _Identities,
    subset: float | None,
    rng: random.Random,
    check: GenerationCheck,
) -> None:
    # 1. the manifest: the commit point of a generation
    if "manifest.json" not in gen.objects:
        check.result = INCOMPLETE
        check.reasons.append(NO_MANIFEST)
        return
    try:
        data = target.get(gen.manifest_key)
    except NotFoundError:
        check.result = INCOMPLETE
        check.reasons.append(NO_MANIFEST)
        return
    check.objects_checked += 1
    check.bytes_read += len(data)
    try:
        manifest = Manifest.from_bytes(data, gen.manifest_key)
    except IntegrityError as exc:
        check.fail(exc.message)
        return
    check.encrypted = manifest.encrypted
    if not _consistent(manifest, prefix, gen, check):
        return

    # 2. the objects it names: present, with the recorded sizes
    archive_ok = _object_ok(target, manifest.archive.key, manifest.archive.size, "archive", check)
    index_ok = _object_ok(target, manifest.index.key, manifest.index.size, "file index", check)

    # 3. the file index: its SHA-256, then decrypted and parsed
    keys = identities.get() if manifest.encrypted and index_ok else []
    entries: list[Entry] | None = None
    if index_ok:
        check.bytes_read += manifest.index.size
        try:
            with contextlib.closing(spool_index(target, manifest, keys)) as spool:
                entries = list(spool.entries())
        except IntegrityError as exc:
            check.fail(exc.message)
    if not archive_ok:
        return
    if entries is None:
        # Without an index there is nothing to compare the members with; the object's
        # own SHA-256 still says whether it is what the backup wrote.
        check.bytes_read += manifest.archive.size
        problem = object_problem(target, manifest.archive)
        if problem is not None:
            check.fail(problem)
        return

    # 4. the archive, streamed as a restore reads it
    sample: set[str] = set()
    if subset is not None:
        files = [e.path for e in entries if e.type == "file"]
        count = len(files) if subset >= 100 else math.ceil(len(files) * subset / 100)
        sample = set(files) if count >= len(files) else set(rng.sample(files, count))
    check.files_sampled = len(sample)
    key = manifest.archive.key
    with DumpCopies(manifest.dumps) as dumps:
        result = check_archive(
            target.open_reader(key),
            manifest,
            keys,
            entries,
            sample | dumps.paths,
            reopen=lambda: target.open_reader(key),
            copy_to=dumps.open,
        )
        if result.ok:
            dumps.check(entries, check)
    check.bytes_read += result.archive_bytes
    check.members = result.members
    check.files = result.files
    check.files_hashed = result.files_hashed
    for problem in result.problems:
        check.fail(problem)


class DumpCopies:
    """The database dumps of a generation, copied (0600, in a private temporary
    folder, deleted on the way out) while the archive streams, then checked."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.records = [r for r in records if r.get("result") == "ok" and r.get("file")]
        self.paths = {str(r["file"]) for r in self.records}
        self.folder: Path | None = None
        self.files: dict[str, BinaryIO] = {}

    def __enter__(self) -> DumpCopies:
        if self.records:
            self.folder = Path(tempfile.mkdtemp(prefix="itsup-verify-"))
        return self

    def _local(self, path: str) -> Path:
        assert self.folder is not None
        return self.folder / hashlib.sha256(path.encode()).hexdigest()

    def open(self, path: str) -> BinaryIO | None:
        if path not in self.paths:
            return None
        fd = os.open(self._local(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.files[path] = os.fdopen(fd, "wb")
        return self.files[path]

    def check(self, entries: list[Entry], check: GenerationCheck) -> None:
        for f in self.files.values():
            f.close()
        listed = {e.path: e.sha256 for e in entries}
        for record in self.records:
            file = str(record["file"])
            problem, how = None, "SHA-256"
            if listed.get(file) != record.get("sha256"):
                problem = "its SHA-256 differs from the one the manifest records"
            elif file not in self.files:
                problem = "missing from the archive"
            else:
                problem, how = check_dump(str(record["adapter"]), file, self._local(file))
                how = f"SHA-256, {how}"
            check.dumps.append(
                {"file": file, "adapter": record["adapter"], "checked": how, "problem": problem}
            )
            if problem:
                check.fail(f"{file}: database dump: {problem}")

    def __exit__(self, *exc: object) -> None:
        for f in self.files.values():
            f.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _consistent(manifest: Manifest, prefix: str, gen: Generation, check: GenerationCheck) -> bool:
    """Does the manifest describe this generation and name its own objects?"""
    if manifest.generation != gen.name:
        check.fail(
            f"{gen.manifest_key}: the manifest describes {manifest.generation!r}, not {gen.name!r}"
        )
        return False
    expected = {
        "archive": (
            manifest.archive.key,
            f"{prefix}{gen.name}{archive_suffix(manifest.compression, manifest.encrypted)}",
        ),
        "file index": (manifest.index.key, f"{prefix}{gen.name}{index_suffix(manifest.encrypted)}"),
    }
    for label, (key, wanted) in expected.items():
        if key != wanted:
            check.fail(
                f"{gen.manifest_key}: the manifest names {key!r} as its {label}, not {wanted!r}"
            )
            return False
    return True


def object_problem(target: Target, ref: ObjectRef) -> str | None:
    """Does the stored object `ref` names have its size and SHA-256? None when it
    does, else what is wrong (the object is read to its end; nothing is written)."""
    try:
        size, digest = hash_stream(target.open_reader(ref.key))
    except NotFoundError:
        return f"{ref.key} is missing"
    if size != ref.size or digest != ref.sha256:
        return f"{ref.key}: SHA-256 does not match the manifest"
    return None


def _object_ok(target: Target, key: str, size: int, label: str, check: GenerationCheck) -> bool:
    try:
        info = target.stat(key)
    except NotFoundError:
        check.fail(f"its {label} {key} is missing")
        return False
    check.objects_checked += 1
    if info.size != size:
        check.fail(
            f"its {label} {key} is {info.size} bytes, the manifest records {size} "
            "(truncated or replaced)"
        )
        return False
    return True
