"""Run a backup's dumps: concurrently (bounded), into a private spool, recorded.

Each database entry (a job) runs in a worker thread while the file archive
streams; its dumps land in `{root}/.itsup/dumps/{project}/` (a folder of mode
0700, files 0600), are added to the archive under
`upstream/{project}/_backup/` once the file tree is written, and are deleted
when the run ends, whatever the outcome. A run killed by SIGKILL leaves the
spool behind; the next backup deletes it before doing anything else.

A failing job never stops the others: its record says `failed` with the
engine's error line, and the backup becomes partial (exit 3).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from itsup.dumps.plan import DUMP_FOLDER, Job, ProjectPlan
from itsup.errors import ItsupError

log = logging.getLogger("itsup.backup")
SPOOL = ".itsup/dumps"


@dataclass
class DumpRecord:
    """One dump file of a generation, as the manifest lists it."""

    project: str
    service: str
    adapter: str
    database: str | None
    file: str  # the archive path: upstream/{project}/_backup/...
    engine_version: str
    size: int
    sha256: str
    seconds: float
    result: str  # ok | failed
    error: str | None = None
    path: str | None = None  # an SQLite database's path below upstream/{project}/

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def spool_path(root: Path) -> Path:
    return root / SPOOL


def clear_spool(root: Path) -> None:
    """Delete dumps a killed run left (they are plaintext)."""
    path = spool_path(root)
    if path.exists() or path.is_symlink():
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)


class DumpRun:
    """The dumps of one backup run, started at once and collected after the file tree."""

    def __init__(self, plans: list[ProjectPlan], root: Path, workers: int) -> None:
        self.jobs = [job for plan in plans for job in plan.jobs]
        self.root = root
        self.spool = spool_path(root)
        self.workers = max(1, workers)
        self.cancel = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[tuple[Job, Future[list[DumpRecord]]]] = []

    def __enter__(self) -> DumpRun:
        if not self.jobs:
            return self
        clear_spool(self.root)
        os.makedirs(self.spool.parent, 0o700, exist_ok=True)
        os.mkdir(self.spool, 0o700)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dump")
        for job in self.jobs:
            job.engine.client.cancel = self.cancel
            self._futures.append((job, self._pool.submit(self._run, job)))
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self.jobs:
            clear_spool(self.root)

    def _run(self, job: Job) -> list[DumpRecord]:
        folder = self.spool / job.project
        folder.mkdir(mode=0o700, exist_ok=True)
        base = f"upstream/{job.project}/{DUMP_FOLDER}"
        try:
            version = job.engine.version()
            dumped = job.engine.dump(folder, job.idle_timeout)
        except ItsupError as exc:
            log.warning("dump of %s/%s failed: %s", job.project, job.label, exc.message)
            return [
                DumpRecord(job.project, job.label, job.adapter, None, f"{base}/{job.label}",
                           "", 0, "", 0.0, "failed", exc.message, job.engine.db.path)
            ]  # fmt: skip
        log.info(
            "dumped %s/%s (%s %s): %d files",
            job.project,
            job.label,
            job.adapter,
            version,
            len(dumped),
        )
        return [
            DumpRecord(job.project, job.label, job.adapter, d.database, f"{base}/{d.file}",
                       version, d.written.size, d.written.sha256, round(d.written.seconds, 3), "ok",
                       None, job.engine.db.path)
            for d in dumped
        ]  # fmt: skip

    def wait(self) -> tuple[list[DumpRecord], list[tuple[str, str, str | None]]]:
        """Every record, and the files to archive as (archive path, spool path, SHA-256:
        taken as the dump was spooled, or None for their folder), in job order."""
        records: list[DumpRecord] = []
        members: list[tuple[str, str, str | None]] = []
        folders: set[str] = set()
        for job, future in self._futures:
            for record in future.result():
                records.append(record)
                if record.result != "ok":
                    continue
                folder, name = record.file.rsplit("/", 1)
                if folder not in folders:  # the folder first, as tar lists it
                    folders.add(folder)
                    members.append((folder, str(self.spool / job.project), None))
                members.append((record.file, str(self.spool / job.project / name), record.sha256))
        return records, members
