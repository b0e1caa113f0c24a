"""Load a generation's database dumps into the running engines (restore and drill).

Which dumps a generation holds comes from its manifest (one record per
file, in the order they were written: globals/users before databases); how
to reach each engine comes from the host as it is now (the project's
backup.yml, else its compose file), matched by project and service. Every
engine is asked to answer before the restore changes anything; then, once
the files are in place, the dumps are loaded one engine after another, each
in its own order. The first load that fails stops the rest: what was loaded
and what was not is named.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from itsup.compose import Service, compose_command, find_compose_file, load_services, resolve
from itsup.dbconfig import Database
from itsup.dumps.engines import Engine
from itsup.dumps.plan import Job, ProjectPlan, Secrets, job_for, plan_project
from itsup.dumps.runner import DumpError
from itsup.errors import IntegrityError, ItsupError
from itsup.host import Host
from itsup.layout import DUMP_FOLDER
from itsup.manifest import Manifest
from itsup.pipeline.codec import decode_section
from itsup.pipeline.tarformat import TarReader

log = logging.getLogger("itsup.restore")
CHUNK = 1 << 20


@dataclass
class DumpLoad:
    """The dumps of one engine (a project's service, or an SQLite file), to load in order."""

    project: str
    label: str
    adapter: str
    engine: Engine
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.project}/{self.label}"

    def files(self, folder: Path, tree: bool = False) -> list[tuple[str, str | None, Path]]:
        """(file name, database, path) of each dump: below `folder` as the spool holds
        them ({project}/{file}), or with `tree` as a restored tree does (the archive path)."""
        out = []
        for record in self.records:
            file = str(record["file"])
            name = file.rsplit("/", 1)[1]
            path = folder / file if tree else folder / self.project / name
            out.append((name, record.get("database"), path))
        return out


def dump_records(manifest: Manifest, selects: Callable[[str], bool]) -> list[dict[str, Any]]:
    return [
        r for r in manifest.dumps if r.get("result") == "ok" and selects(str(r.get("file", "")))
    ]


def plan_loads(host: Host, records: list[dict[str, Any]]) -> list[DumpLoad]:
    """One DumpLoad per engine, in the order the generation wrote them."""
    loads: dict[tuple[str, str], DumpLoad] = {}
    jobs: dict[str, dict[str, Job]] = {}
    for record in records:
        project, label = str(record["project"]), str(record["service"])
        key = (project, label)
        if key not in loads:
            if project not in jobs:
                jobs[project] = _jobs(host, project)
            job = jobs[project].get(label)
            engine = job.engine if job else _engine_from(host, record)
            loads[key] = DumpLoad(project, label, str(record["adapter"]), engine)
        loads[key].records.append(record)
    return list(loads.values())


def _jobs(host: Host, project: str) -> dict[str, Job]:
    cfg = host.config.backup
    plan = plan_project(host.layout, project, host.secrets, "auto", cfg.dump_idle_timeout)
    return {job.label: job for job in plan.jobs}


def _engine_from(host: Host, record: dict[str, Any]) -> Engine:
    """The engine of a dump whose project no longer lists it: its service, as recorded."""

    project, adapter = str(record["project"]), str(record["adapter"])
    folder = host.layout.upstream / project
    if adapter == "sqlite":
        db = Database(adapter="sqlite", path=record.get("path") or str(record["service"]))
    else:
        db = Database(adapter=adapter, service=str(record["service"]))  # type: ignore[arg-type]
    compose_file = find_compose_file(folder)
    services = load_services(compose_file) if compose_file else {}
    plan = ProjectPlan(project, folder, "manifest")
    plan.compose = compose_command() if db.service else None
    secrets = Secrets(host.layout, project, host.secrets)
    cfg = host.config.backup
    return job_for(plan, db, services.get(db.service or ""), secrets, cfg.dump_idle_timeout).engine


def service_environment(host: Host, project: str, service: Service) -> dict[str, str]:
    """The service's environment with `${VAR}` resolved from the project's secrets."""
    secrets = Secrets(host.layout, project, host.secrets)
    return {k: resolve(v, secrets.lookup)[0] for k, v in service.environment.items()}


def check_running(loads: list[DumpLoad]) -> None:
    """ItsupError naming every engine that does not answer, before anything is changed."""
    problems, hints = [], []
    for load in loads:
        try:
            load.engine.ready()
        except DumpError as exc:
            problems.append(f"{load.name} ({load.adapter}) does not answer: {exc.message}")
            if load.engine.client.in_container:
                compose = " ".join(load.engine.client.compose or ["docker", "compose"])
                hints.append(f"cd upstream/{load.project} && {compose} up -d {load.label}")
    if problems:
        raise ItsupError(
            "cannot load the database dumps, nothing was changed: " + "; ".join(problems),
            hint=(
                "start " + ("it: " if len(hints) == 1 else "them: ") + "; ".join(hints) + "; "
                if hints
                else ""
            )
            + "or restore the files alone with --no-databases, start the engines, then "
            "load the dumps with --databases-only",
        )


def load_all(loads: list[DumpLoad], folder: Path) -> list[str]:
    """Load every engine's dumps from `folder`; the names loaded. Stops at the first failure."""
    done: list[str] = []
    for i, load in enumerate(loads):
        try:
            load.engine.load(load.files(folder))
        except DumpError as exc:
            rest = [other.name for other in loads[i + 1 :]]
            raise ItsupError(
                f"loading the dumps of {load.name} ({load.adapter}) failed: {exc.message}"
                + (f"; loaded before it: {', '.join(done)}" if done else "")
                + (f"; not loaded (left as they were): {', '.join(rest)}" if rest else ""),
                hint="the files are restored; fix the engine, then run the restore again "
                "with --databases-only",
            ) from None
        log.info("loaded %d dump(s) into %s (%s)", len(load.records), load.name, load.adapter)
        done.append(load.name)
    return done


def reads_dumps_alone(manifest: Manifest) -> bool:
    """Whether the generation's dumps can be read without the rest of its archive."""
    return manifest.dumps_offset is not None and not manifest.encrypted


def read_dumps(
    raw: BinaryIO,
    manifest: Manifest,
    records: list[dict[str, Any]],
    spool: Path,
    on_bytes: Callable[[int], None] | None = None,
) -> int:
    """Read the dumps of `records` from the archive's own section for them (`raw`
    reads the archive object from `manifest.dumps_offset` to its end; the file tree
    before it is never fetched) into `spool` as {project}/{file name} (files 0600, folders 0700); the bytes
    written. Each dump is checked against the size and SHA-256 the manifest
    records for it, and the section is read to its end (gzip's CRC-32 and length).

    Raises IntegrityError when the section is damaged, a dump differs from its
    record, or one is missing; what was written to `spool` is the caller's to remove.
    """
    wanted = {_spool_name(record): record for record in records}
    os.makedirs(spool.parent, 0o700, exist_ok=True)
    os.mkdir(spool, 0o700)
    written = 0
    key = manifest.archive.key
    with contextlib.closing(decode_section(raw, manifest)) as stream:
        try:
            reader = TarReader(stream)
            for info in reader:
                record = wanted.get(info.name)
                if record is None or not info.isreg():
                    continue  # their folder, or the dumps of another project
                del wanted[info.name]
                written += _write_dump(reader, record, spool, key, on_bytes)
            while stream.read(CHUNK):  # to the end: the compression trailer is checked
                pass
        except tarfile.TarError as exc:
            raise IntegrityError(f"{key}: the database dumps' section is damaged: {exc}") from None
    if wanted:
        raise IntegrityError(f"{key}: the archive lacks the dump(s) {', '.join(sorted(wanted))}")
    return written


def _spool_name(record: dict[str, Any]) -> str:
    """A dump record's archive path, refused unless it is upstream/{project}/_backup/{name}."""
    file, project = str(record.get("file", "")), str(record.get("project", ""))
    parts = file.split("/")
    plain = all(p not in ("", ".", "..") and "\x00" not in p for p in parts)
    if not (plain and len(parts) == 4 and parts[:3] == ["upstream", project, DUMP_FOLDER]):
        raise IntegrityError(f"the manifest names a dump at {file!r}, outside its project's folder")
    return file


def _write_dump(
    reader: TarReader,
    record: dict[str, Any],
    spool: Path,
    key: str,
    on_bytes: Callable[[int], None] | None,
) -> int:
    file = str(record["file"])
    folder = spool / str(record["project"])
    os.makedirs(folder, 0o700, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd = os.open(folder / file.rsplit("/", 1)[1], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while chunk := reader.read(CHUNK):
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ItsupError(f"no space left on the device holding {spool}") from None
        raise ItsupError(f"writing {folder}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size != record.get("size") or digest.hexdigest() != record.get("sha256"):
        raise IntegrityError(
            f"{key}: the dump {file} does not match its SHA-256 in the manifest "
            f"({size} bytes read, {record.get('size')} recorded)"
        )
    return size
