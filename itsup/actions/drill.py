"""`itsup backup drill`: the spec's restore drill, automated and measured.

1. Restore the newest complete generation (or the one asked for) in full
   into a fresh temporary host root, with the restore itself (plan_restore,
   run_restore: archive SHA-256 and every member checked before the swap).
2. Walk the restored tree and check every path against the file index
   (type, size, mode, content SHA-256, symlink target), independently of
   the restore's own checks, and look for paths the index does not list.
3. Clone the git remotes of projects/ and secrets/ into the same temporary
   root and check the configuration (snapshot verify's checks: itsup.yml
   loads, compose and ingress files, every secrets/*.enc.txt decrypts in
   memory). A host without git remotes has this step skipped, not failed.
4. Measure RTO (wall time of the drill: restore and checks) and RPO (age of
   the restored data: now minus the generation's start time) and compare
   them with backup.monitoring.rto / .rpo.

The live host tree is never written: the restore's destination is the
temporary root, which is deleted afterwards unless asked to keep it. The
JSON report goes to logs/ (or .itsup/), or where --report says.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from itsup import __version__
from itsup.actions.dbrestore import DumpLoad, plan_loads, service_environment
from itsup.actions.restore import RestoreOptions, describe_links, plan_restore, run_restore
from itsup.compose import Service, find_compose_file, load_services
from itsup.dumps.sandbox import load_in_throwaway
from itsup.errors import (
    ConfigError,
    ExitCode,
    IntegrityError,
    ItsupError,
    NotFoundError,
    StorageError,
)
from itsup.generation import location, scan, select_generation
from itsup.host import Host
from itsup.manifest import Entry, Manifest

log = logging.getLogger("itsup.drill")
CHUNK = 1 << 20
MAX_LISTED = 20
SANDBOXED = (
    "postgres",
    "mariadb",
    "mysql",
)  # engines the drill loads dumps into  # failing paths listed one by one in the report; the rest are counted


@dataclass
class DrillCheck:
    item: str
    status: str  # ok | info | warn | fail | skipped; only fail fails the drill
    detail: str


@dataclass
class TreeCheck:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (path, what is wrong)


@dataclass
class DrillResult:
    generation: str
    target: str
    started: str  # ISO 8601, UTC
    generation_started: str
    rto_target: int | None
    rpo_target: int | None
    finished: str | None = None
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    files_checked: int = 0
    bytes_checked: int = 0
    archive_bytes: int = 0
    restored: dict[str, int] = field(default_factory=dict)
    checks: list[DrillCheck] = field(default_factory=list)
    # Dumps loaded into throwaway engines: tables and rows per database.
    databases: list[dict[str, Any]] = field(default_factory=list)
    workdir: str | None = None  # the temporary root, when kept
    report: str | None = None
    report_problem: str | None = None
    error: ItsupError | None = None  # why the drill failed (None: it passed)

    def add(self, item: str, status: str, detail: str) -> None:
        self.checks.append(DrillCheck(item, status, detail))
        level = {
            "ok": logging.INFO,
            "info": logging.INFO,
            "skipped": logging.INFO,
            "warn": logging.WARNING,
        }
        log.log(
            level.get(status, logging.ERROR),
            "drill %s: %s: %s",
            item,
            status,
            detail,
            extra={"console": False},
        )

    @property
    def failed(self) -> list[DrillCheck]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def exit_code(self) -> int:
        return ExitCode.SUCCESS if self.error is None else int(self.error.exit_code)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "exit_code": self.exit_code,
            "error": self.error.message if self.error else None,
            "generation": self.generation,
            "generation_started": self.generation_started,
            "target": self.target,
            "started": self.started,
            "finished": self.finished,
            "rto_seconds": _round(self.rto_seconds),
            "rpo_seconds": _round(self.rpo_seconds),
            "targets": {"rto_seconds": self.rto_target, "rpo_seconds": self.rpo_target},
            "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked,
            "archive_bytes": self.archive_bytes,
            "restored": self.restored,
            "checks": [asdict(c) for c in self.checks],
            "databases": self.databases,
            "failed": len(self.failed),
            "workdir": self.workdir,
            "tool_version": __version__,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _typed(code: int, message: str, hint: str | None = None) -> ItsupError:
    """An error of the class that carries `code`.

    A drill's exit 1 means only "every check passed but RTO/RPO was missed"
    (see _verdict): any other failure (a full disk, a restore that failed for a
    reason with no code of its own) is a failed drill, exit 5.
    """
    if code == ExitCode.FAILURE:
        code = ExitCode.DAMAGED
    cls: type[ItsupError] = {
        ExitCode.DAMAGED: IntegrityError,
        ExitCode.STORAGE: StorageError,
        ExitCode.CONFIG: ConfigError,
    }.get(ExitCode(code), ItsupError)
    error = cls(message, hint=hint)
    error.exit_code = ExitCode(code)
    return error


def _started_at(manifest: Manifest) -> datetime | None:
    try:
        when = datetime.fromisoformat(manifest.started)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def run_drill(
    host: Host,
    *,
    target_choice: str | None = None,
    generation: str | None = None,
    keep: bool = False,
    git: bool = True,
    report: Path | None = None,
) -> DrillResult:
    """Run the drill; the outcome (and why it failed) is in the result, never raised.

    Raises only before the drill starts: StorageError (target unreachable),
    NotFoundError (no complete generation), IntegrityError (a named
    generation that is incomplete).
    """
    clock = time.monotonic()
    now = datetime.now(UTC)
    # Without --target: the first target that answers; the restore reads the same one.
    target_choice, target, prefix, found = host.first_answering(
        target_choice, lambda t, p: scan(t, p, load_manifests=False)
    )
    gen = select_generation(found, generation, target, location(target, prefix))
    assert gen.manifest is not None
    manifest = gen.manifest
    monitoring = host.config.backup.monitoring
    result = DrillResult(
        gen.name,
        target.name,
        now.isoformat(timespec="seconds"),
        manifest.started,
        monitoring.rto,
        monitoring.rpo,
    )
    log.info("drill of %s from %s started", gen.name, target.name)
    try:
        root = Path(tempfile.mkdtemp(prefix="itsup-drill-"))
    except OSError as exc:
        raise ItsupError(
            f"cannot make a temporary folder for the drill in {tempfile.gettempdir()}: "
            f"{exc.strerror or exc}",
            hint="set TMPDIR to a folder with room for a full restore",
        ) from None
    try:
        data_error = _restore_and_check(host, result, gen.name, target_choice, root)
        git_error = _check_git(host, result, root) if git else None
        if not git:
            result.add("git", "skipped", "not asked for (--no-git)")
        elapsed = time.monotonic() - clock
        if keep:
            result.workdir = str(root)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    started = _started_at(manifest)
    if started is not None:
        result.rpo_seconds = max(0.0, (now - started).total_seconds())
    if data_error is None:
        result.rto_seconds = elapsed
    missed = _targets(result)
    result.error = _verdict(result, data_error, git_error, missed)
    result.finished = datetime.now(UTC).isoformat(timespec="seconds")
    _write_report(host, result, report, now)
    return result


def _restore_and_check(
    host: Host, result: DrillResult, name: str, target_choice: str | None, root: Path
) -> ItsupError | None:
    """Restore the generation into `root` and check the tree; the error, if it failed."""
    try:
        options = RestoreOptions("all", generation=name, to=str(root), target_choice=target_choice)
        # Links pointing outside: created as links, never followed (the default).
        plan = plan_restore(host, options, prefetch=True)
        restored = run_restore(plan)
    except ItsupError as exc:
        result.add("restore", "fail", exc.message)
        # An object a complete generation names but the target lacks: the backup is damaged.
        code = ExitCode.DAMAGED if isinstance(exc, NotFoundError) else exc.exit_code
        return _typed(code, f"drill of {name} FAILED: the restore failed: {exc.message}", exc.hint)
    manifest = plan.manifest
    result.archive_bytes = restored.archive_bytes
    result.restored = {
        "files": restored.files,
        "dirs": restored.dirs,
        "symlinks": restored.symlinks,
        "bytes": restored.bytes,
    }
    result.add(
        "restore",
        "ok",
        f"{restored.files} files, {restored.dirs} folders, {restored.symlinks} symlinks, "
        f"{restored.bytes} bytes restored in {restored.seconds:.1f} s "
        "(archive SHA-256 and every member checked by the restore)",
    )
    if restored.external_links:  # as a restore does by default: noted, never a failure
        result.add(
            "external symlinks",
            "info",
            f"{len(restored.external_links)} symlink(s) point outside the tree, restored as "
            f"links: {describe_links(restored.external_links, MAX_LISTED)}",
        )
    tree = check_tree(root, plan.entries(), manifest.roots)
    result.files_checked, result.bytes_checked = tree.files, tree.bytes
    if not tree.problems:
        result.add(
            "restored tree",
            "ok",
            f"{tree.entries} paths ({tree.files} files, {tree.bytes} bytes) match the file "
            "index: type, size, mode, SHA-256, symlink target",
        )
        return _check_dumps(host, result, root, manifest)
    first_path, first_problem = tree.problems[0]
    result.add(
        "restored tree",
        "fail",
        f"{len(tree.problems)} of {tree.entries} paths differ from the file index, "
        f"e.g. {first_path}: {first_problem}",
    )
    for path, problem in tree.problems[:MAX_LISTED]:
        result.add(path, "fail", problem)
    return IntegrityError(
        f"drill of {name} FAILED: {len(tree.problems)} restored path(s) differ from the file "
        f"index, e.g. {first_path}: {first_problem}",
        hint="the generation cannot be trusted for a restore; take a new backup",
    )


def _check_dumps(
    host: Host, result: DrillResult, root: Path, manifest: Manifest
) -> ItsupError | None:
    """Load each PostgreSQL and MariaDB/MySQL dump into a throwaway container of its
    service's own image, and count tables and rows; a dump that does not load fails."""
    records = [r for r in manifest.dumps if r.get("result") == "ok"]
    if not records:
        return None
    failed: list[str] = []
    for load in plan_loads(host, records):
        item = f"database {load.name}"
        if load.adapter not in SANDBOXED:
            result.add(
                item, "info", f"{load.adapter} dump restored and checked by SHA-256 (not loaded)"
            )
            continue
        service = _restored_service(root, load)
        if service is None or not load.engine.client.in_container:
            result.add(
                item, "skipped", "not run in a container of the project: nothing to load it into"
            )
            continue
        env = {**service_environment(host, load.project, service), **load.engine.client.env}
        try:
            loaded = load_in_throwaway(service, env, load.engine.db, load.files(root, tree=True))
        except ItsupError as exc:
            result.add(item, "fail", f"the dump does not load into {service.image}: {exc.message}")
            failed.append(f"{load.name}: {exc.message}")
            continue
        result.databases.append(
            {"engine": load.name, "adapter": load.adapter, "image": loaded.image,
             "seconds": round(loaded.seconds, 1), "databases": loaded.databases}
        )  # fmt: skip
        result.add(
            item,
            "ok",
            f"loaded into a throwaway {loaded.image} in {loaded.seconds:.1f} s: {loaded.summary()}",
        )
    if not failed:
        return None
    return IntegrityError(
        f"drill of {manifest.generation} FAILED: {len(failed)} database dump(s) do not load, "
        f"e.g. {failed[0]}",
        hint="the generation cannot be trusted for a database restore; take a new backup",
    )


def _restored_service(root: Path, load: DumpLoad) -> Service | None:
    compose_file = find_compose_file(root / "upstream" / load.project)
    if compose_file is None or load.engine.db.service is None:
        return None
    return load_services(compose_file).get(load.engine.db.service)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "special file"


def _sha256(path: bytes) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        while chunk := os.read(fd, CHUNK):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def _entry_problem(base: bytes, entry: Entry) -> tuple[str | None, int]:
    """What is wrong with the restored `entry` (None if nothing), and the bytes hashed."""
    path = os.path.join(base, os.fsencode(entry.path))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing from the restored tree", 0
    kind = _kind(st.st_mode)
    if kind != entry.type:
        return f"restored as a {kind}, the index records a {entry.type}", 0
    if entry.type != "symlink" and stat.S_IMODE(st.st_mode) != entry.mode:
        return f"mode {stat.S_IMODE(st.st_mode):04o}, the index records {entry.mode:04o}", 0
    if entry.type == "symlink":
        link = os.fsdecode(os.readlink(path))
        if link != entry.link:
            return f"points to {link!r}, the index records {entry.link!r}", 0
        return None, 0
    if entry.type != "file":
        return None, 0
    if st.st_size != entry.size:
        return f"{st.st_size} bytes, the index records {entry.size}", 0
    if _sha256(path) != entry.sha256:
        return "its content does not match the SHA-256 in the file index", st.st_size
    return None, st.st_size


def check_tree(root: Path, entries: Any, tops: list[str]) -> TreeCheck:
    """Compare a restored tree with the file index, path by path, on its own terms."""
    check = TreeCheck()
    base = os.fsencode(root)
    listed: set[str] = set()
    for entry in entries:
        check.entries += 1
        listed.add(entry.path)
        problem, hashed = _entry_problem(base, entry)
        if entry.type == "file":
            check.files += 1
            check.bytes += hashed
        if problem is not None:
            check.problems.append((entry.path, problem))
    for top in tops:  # anything restored that the index does not list
        top_path = os.path.join(base, os.fsencode(top))
        if not os.path.lexists(top_path):
            continue
        for dirpath, dirnames, filenames in os.walk(top_path):
            for name in sorted(dirnames + filenames):
                rel = os.fsdecode(os.path.relpath(os.path.join(dirpath, name), base))
                if rel not in listed:
                    check.problems.append((rel, "restored, but the file index does not list it"))
    return check


def _check_git(host: Host, result: DrillResult, root: Path) -> ItsupError | None:
    """snapshot verify's checks, cloned into the drill's root; the error if they failed."""
    from itsup.actions.remote_verify import verify_remotes

    try:
        report = verify_remotes(host.layout, workdir=root / "git")
    except ConfigError as exc:  # no repositories or no remotes: nothing to verify
        result.add("git", "skipped", f"no git remotes to verify ({exc.message})")
        return None
    except ItsupError as exc:
        result.add("git", "fail", exc.message)
        return _typed(
            exc.exit_code, f"drill of {result.generation} FAILED: git: {exc.message}", exc.hint
        )
    for c in report.checks:
        result.add(f"git: {c.item}", c.status, c.detail)
    error = report.error()
    if error is None:
        return None
    return _typed(
        error.exit_code,
        f"drill of {result.generation} FAILED: git verification: "
        + error.message.removeprefix("snapshot verify: "),
        error.hint,
    )


def _targets(result: DrillResult) -> list[str]:
    """Add the RTO and RPO checks; return what was missed, in words."""
    missed = []
    for label, value, goal, knob, what in (
        ("RTO", result.rto_seconds, result.rto_target, "rto", "the drill took"),
        ("RPO", result.rpo_seconds, result.rpo_target, "rpo", "the restored data is"),
    ):
        if value is None:
            why = "the restore failed" if label == "RTO" else "no start time in the manifest"
            result.add(label, "skipped", f"not measured: {why}")
            continue
        words = f"{what} {value:.1f} s" + (" old" if label == "RPO" else "")
        if goal is None:
            result.add(label, "ok", f"{words}; no target set (backup.monitoring.{knob})")
        elif value <= goal:
            result.add(label, "ok", f"{words}, within the target of {goal} s")
        else:
            result.add(label, "fail", f"{words}, over the target of {goal} s")
            missed.append(f"{label}: {words}, over the target of {goal} s")
    return missed


def _verdict(
    result: DrillResult,
    data_error: ItsupError | None,
    git_error: ItsupError | None,
    missed: list[str],
) -> ItsupError | None:
    if data_error is not None:
        return data_error
    if git_error is not None:
        return git_error
    if missed:
        return ItsupError(
            f"drill of {result.generation} passed every check but MISSED its target: "
            + "; ".join(missed),
            hint="back up more often to meet the RPO; restore faster (or revise "
            "backup.monitoring.rto / rpo) to meet the RTO",
        )
    return None


def report_path(host: Host, when: datetime) -> Path:
    """logs/drill-YYYYmmdd-HHMMSS.json, or .itsup/ when the host keeps no logs/."""
    folder = host.layout.logs if host.layout.logs.is_dir() else host.layout.root / ".itsup"
    return folder / f"drill-{when.strftime('%Y%m%d-%H%M%S')}.json"


def _write_report(host: Host, result: DrillResult, wanted: Path | None, when: datetime) -> None:
    from itsup.fsutil import atomic_write

    path = wanted.expanduser() if wanted is not None else report_path(host, when)
    try:
        if wanted is None:
            path.parent.mkdir(mode=0o700, exist_ok=True)
            stem, n = path.stem, 2
            while path.exists():  # two drills in one second: keep both reports
                path = path.with_name(f"{stem}-{n}.json")
                n += 1
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
        result.report = str(path.absolute())
        data = json.dumps(result.as_dict(), indent=2) + "\n"
        atomic_write(path, data.encode(), 0o644)
    except OSError as exc:
        result.report = None
        result.report_problem = f"cannot write the drill report {path}: {exc.strerror or exc}"
        log.warning("%s", result.report_problem)
