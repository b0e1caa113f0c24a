"""Generation names and the set of generations on a target."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from itsup.errors import IntegrityError, NoBackupError, NotFoundError
from itsup.manifest import Manifest
from itsup.storage.base import ObjectInfo, Target

NAME_RE = re.compile(r"^backup-(\d{4}-\d{2}-\d{2}-\d{6})$")
KEY_RE = re.compile(
    r"(backup-\d{4}-\d{2}-\d{2}-\d{6})\.(tar(?:\.gz)?(?:\.age)?|manifest\.json|index\.jsonl\.gz(?:\.age)?)$"
)
LATEST = "latest"


def generation_name(when: datetime) -> str:
    return "backup-" + when.astimezone(UTC).strftime("%Y-%m-%d-%H%M%S")


def generation_time(name: str) -> datetime:
    m = NAME_RE.match(name)
    if not m:
        raise ValueError(name)
    return datetime.strptime(m.group(1), "%Y-%m-%d-%H%M%S").replace(tzinfo=UTC)


def archive_suffix(compression: str, encrypted: bool) -> str:
    return (".tar.gz" if compression == "gzip" else ".tar") + (".age" if encrypted else "")


def index_suffix(encrypted: bool) -> str:
    return ".index.jsonl.gz" + (".age" if encrypted else "")


@dataclass
class Generation:
    """What a target holds for one generation name."""

    name: str
    prefix: str
    objects: dict[str, ObjectInfo]  # suffix -> object
    manifest: Manifest | None = None
    problem: str | None = None  # why the manifest could not be read

    @property
    def manifest_key(self) -> str:
        return f"{self.prefix}{self.name}.manifest.json"

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    @property
    def time(self) -> datetime:
        return generation_time(self.name)


def scan(target: Target, prefix: str, load_manifests: bool = True) -> list[Generation]:
    """Every generation under `prefix`, newest first, manifests loaded when asked."""
    found: dict[str, Generation] = {}
    for info in target.list(prefix):
        rest = info.key[len(prefix) :]
        if "/" in rest:
            continue
        m = KEY_RE.match(rest)
        if not m:
            continue
        gen = found.setdefault(m.group(1), Generation(m.group(1), prefix, {}))
        gen.objects[m.group(2)] = info
    generations = sorted(found.values(), key=lambda g: g.name, reverse=True)
    if load_manifests:
        with ThreadPoolExecutor(8) as pool:  # one small GET each: overlap the round trips
            list(pool.map(lambda g: load_manifest(target, g), generations))
    return generations


def load_manifest(target: Target, gen: Generation) -> None:
    """Read `gen`'s manifest if it has one; a damaged one is recorded as its problem."""
    if gen.manifest is not None or gen.problem is not None or "manifest.json" not in gen.objects:
        return
    try:
        gen.manifest = Manifest.from_bytes(target.get(gen.manifest_key), gen.manifest_key)
    except (IntegrityError, NotFoundError) as exc:
        gen.problem = str(exc)


def location(target: Target, prefix: str) -> str:
    """Where a target keeps its generations, for messages: `s3://bucket/prefix/ at URL`."""
    base, sep, endpoint = target.name.partition(" at ")
    return f"{base.rstrip('/')}/{prefix}" + (f" at {endpoint}" if sep else "")


def no_backup(where: str, unfinished: int) -> NoBackupError:
    """The error every command gives when a target holds no complete generation."""
    detail = (
        f" ({unfinished} unfinished one(s) without a readable manifest: runs that did not complete)"
        if unfinished
        else ""
    )
    return NoBackupError(
        f"no complete backup generation in {where}{detail}",
        hint="check the bucket (or path) and prefix in projects/itsup.yml; "
        "`itsup backup list` shows what is there, `itsup backup` writes one",
    )


def select_generation(
    generations: list[Generation],
    wanted: str | None,
    target: Target | None = None,
    where: str | None = None,
) -> Generation:
    """The named generation, or the newest complete one; only complete ones qualify.

    With `target`, manifests are read only as far as needed (newest first).
    NoBackupError (naming `where`) when the target holds no complete generation.
    """

    def load(gen: Generation) -> None:
        if target is not None:
            load_manifest(target, gen)

    if wanted in (None, LATEST):
        for gen in generations:
            load(gen)
            if gen.complete:
                return gen
        raise no_backup(where or "the target", len(generations))
    name = wanted.removesuffix(".manifest.json")
    for suffix in (".tar.gz.age", ".tar.gz", ".tar.age", ".tar"):
        name = name.removesuffix(suffix)
    if not name.startswith("backup-"):
        name = "backup-" + name
    for gen in generations:
        if gen.name == name:
            load(gen)
            if not gen.complete:
                raise IntegrityError(
                    f"{gen.name} is not complete (no readable manifest"
                    + (f": {gen.problem}" if gen.problem else "")
                    + "); it cannot be restored"
                )
            return gen
    raise NotFoundError(f"no generation {name} on the target (see `itsup backup list`)")
