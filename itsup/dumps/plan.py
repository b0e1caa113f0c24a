"""What a backup dumps: per project, the databases, their clients, what is left out.

For each project, `projects/{project}/backup.yml` when there is one; else,
with `backup.databases: auto`, the engines found in
`upstream/{project}/docker-compose.yml` by image. Credentials not given come
from the service's environment in the compose file (POSTGRES_USER,
POSTGRES_PASSWORD, MARIADB_ROOT_PASSWORD ...), with `${VAR}` resolved from the
project's secrets (`secrets/{project}.txt`, else `.enc.txt` decrypted in
memory), then itsup's, then the project's `.env`, then the environment.

`itsup backup plan` prints this; `itsup backup` runs it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from itsup.compose import Service, compose_command, find_compose_file, load_services
from itsup.config import parse_dotenv, read_dotenv
from itsup.dbconfig import BACKUP_FILE, Database, ProjectBackup, load_project_backup
from itsup.dumps.engines import ENGINES, Engine
from itsup.dumps.runner import Client
from itsup.errors import ConfigError, ItsupError
from itsup.layout import DUMP_FOLDER, Layout

DISCOVERED = ("postgres", "mariadb", "mysql", "redis")
# Where each engine's credentials are found in its service's environment.
USER_VARS = {"postgres": ("POSTGRES_USER",), "mariadb": (), "mysql": (), "redis": ()}
PASSWORD_VARS = {
    "postgres": ("POSTGRES_PASSWORD",),
    "mariadb": ("MARIADB_ROOT_PASSWORD", "MYSQL_ROOT_PASSWORD"),
    "mysql": ("MYSQL_ROOT_PASSWORD", "MARIADB_ROOT_PASSWORD"),
    "redis": ("REDIS_PASSWORD",),
}
PASSWORD_ENV = {"postgres": "PGPASSWORD", "mariadb": "MYSQL_PWD", "mysql": "MYSQL_PWD"}
PASSWORD_ENV["redis"] = "REDISCLI_AUTH"


@dataclass
class Job:
    """One database entry of a project: an engine and where its dumps go."""

    project: str
    engine: Engine
    idle_timeout: float
    credentials: list[str] = field(default_factory=list)  # where each came from

    @property
    def label(self) -> str:
        return self.engine.label

    @property
    def adapter(self) -> str:
        return self.engine.adapter

    @property
    def service(self) -> str | None:
        return self.engine.db.service


@dataclass
class ProjectPlan:
    project: str
    folder: Path  # upstream/{project}/
    source: str  # `projects/{p}/backup.yml`, `discovered` or `none`
    jobs: list[Job] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)  # relative to the host root
    stop: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compose: list[str] | None = None

    @property
    def dump_folder(self) -> str:
        return f"upstream/{self.project}/{DUMP_FOLDER}"


class Secrets:
    """`${VAR}` lookups for one project: its secrets, itsup's, its .env, the environment."""

    def __init__(self, layout: Layout, project: str, shared: dict[str, str]) -> None:
        self.layout = layout
        self.project = project
        self.shared = shared
        self._own: dict[str, str] | None = None
        self._dotenv: dict[str, str] | None = None

    @property
    def name(self) -> str:
        return f"secrets/{self.project}.txt"

    def own(self) -> dict[str, str]:
        if self._own is None:
            plain = self.layout.secrets / f"{self.project}.txt"
            encrypted = self.layout.secrets / f"{self.project}.enc.txt"
            if plain.is_file():
                self._own = read_dotenv(plain)
            elif encrypted.is_file():
                from itsup import sops

                where = f"secrets/{self.project}.enc.txt"
                text = sops.decrypt(encrypted.read_bytes(), where, self.layout.secrets)
                self._own = parse_dotenv(text.decode("utf-8", "replace"), f"{where} (decrypted)")
            else:
                self._own = {}
        return self._own

    def dotenv(self) -> dict[str, str]:
        if self._dotenv is None:
            path = self.layout.upstream / self.project / ".env"
            try:
                self._dotenv = read_dotenv(path) if path.is_file() else {}
            except ConfigError:
                self._dotenv = {}
        return self._dotenv

    def lookup(self, name: str) -> str | None:
        for source in (self.own(), self.shared, self.dotenv(), os.environ):
            if name in source:
                return source[name]
        return None

    def where(self, name: str) -> str:
        if name in self.own():
            return self.name
        if name in self.shared:
            return "secrets/itsup.txt"
        if name in self.dotenv():
            return f"upstream/{self.project}/.env"
        return "the environment" if name in os.environ else "nowhere (not defined)"


def projects(layout: Layout) -> list[str]:
    """Projects that have a compose file in upstream/ or a backup.yml in projects/."""
    names: set[str] = set()
    for base, wanted in ((layout.upstream, None), (layout.projects, BACKUP_FILE)):
        if not base.is_dir():
            continue
        for child in base.iterdir():
            if not child.is_dir() or child.name.startswith("."):
                continue
            if (wanted is None and find_compose_file(child) is not None) or (
                wanted is not None and (child / wanted).is_file()
            ):
                names.add(child.name)
    return sorted(names)


def plan_dumps(
    layout: Layout, shared: dict[str, str], mode: str, idle_timeout: float, explain: bool = False
) -> list[ProjectPlan]:
    """Every project's plan; ConfigError lists every broken backup.yml at once."""
    plans, problems = [], []
    for project in projects(layout):
        try:
            plan = plan_project(layout, project, shared, mode, idle_timeout, explain)
        except ConfigError as exc:
            problems += exc.problems
            continue
        plans.append(plan)
    if problems:
        raise ConfigError(problems)
    return plans


def plan_project(
    layout: Layout,
    project: str,
    shared: dict[str, str],
    mode: str,
    idle_timeout: float,
    explain: bool = False,
) -> ProjectPlan:
    folder = layout.upstream / project
    secrets = Secrets(layout, project, shared)
    compose_file = find_compose_file(folder)
    services = load_services(compose_file) if compose_file else {}
    config_file = layout.projects / project / BACKUP_FILE
    if config_file.is_file():
        config = load_project_backup(config_file, secrets.lookup, secrets.name)
        source = f"projects/{project}/{BACKUP_FILE}"
    elif mode == "auto" or explain:
        config = ProjectBackup(databases=_discover(services))
        source = (
            "discovered"
            if mode == "auto"
            else "discovered (not dumped: backup.databases is not auto)"
        )
    else:
        return ProjectPlan(project, folder, "none")
    plan = ProjectPlan(project, folder, source, stop=list(config.stop))
    for name in config.stop:
        if services and name not in services:
            raise ConfigError(f"{config_file}: stop: no service {name!r} in {compose_file}")
    needs_compose = any(db.service for db in config.databases) or config.stop
    if needs_compose:
        plan.compose = _compose_or_none(plan)
    for db in config.databases:
        service = services.get(db.service) if db.service else None
        if db.service and services and service is None:
            raise ConfigError(
                f"{config_file}: service {db.service!r} is not in {compose_file} "
                f"(it has: {', '.join(services) or 'none'})"
            )
        plan.jobs.append(job_for(plan, db, service, secrets, config.idle_timeout or idle_timeout))
    plan.excludes = _excludes(plan, config, services, layout)
    for service in services.values():
        if service.engine == "mongo" and not any(j.service == service.name for j in plan.jobs):
            plan.notes.append(
                f"{service.name}: MongoDB found, not dumped: add a `command` adapter "
                "(dump: mongodump --archive, restore: mongorestore --archive --drop)"
            )
    return plan


def _compose_or_none(plan: ProjectPlan) -> list[str] | None:
    try:
        return compose_command()
    except ItsupError as exc:
        plan.notes.append(exc.message)
        return None


def _discover(services: dict[str, Service]) -> list[Database]:
    found = []
    for name, service in services.items():
        if service.engine in DISCOVERED:
            found.append(Database(adapter=service.engine, service=name))  # type: ignore[arg-type]
    return found


def job_for(
    plan: ProjectPlan, db: Database, service: Service | None, secrets: Secrets, idle: float
) -> Job:
    adapter = db.adapter
    env_of: Callable[[str], tuple[str | None, str]] = _env_reader(service, secrets)
    notes: list[str] = []
    user, password = db.user, db.password.get_secret_value() if db.password else None
    if user is not None:
        notes.append(f"user {user} from {BACKUP_FILE}")
    if password is not None:
        notes.append(f"password from {BACKUP_FILE}")
    for var in USER_VARS.get(adapter, ()):
        if user is None:
            user, where = env_of(var)
            if user is not None:
                notes.append(f"user {user} from {var} ({where})")
    for var in PASSWORD_VARS.get(adapter, ()):
        if password is None:
            password, where = env_of(var)
            if password is not None:
                notes.append(f"password from {var} ({where})")
    if adapter == "redis" and password is None and service is not None:
        command = service.raw.get("command") or ""
        if isinstance(command, list):
            command = " ".join(str(part) for part in command)
        found = re.search(r"--requirepass[\s=]+(\S+)", str(command))
        if found:
            password, _ = _resolved(found.group(1).strip("'\""), secrets)
            notes.append("password from --requirepass in the service's command")
    if adapter in PASSWORD_ENV and password is None:
        notes.append("no password (the engine's local trust, or none set)")
    env = {PASSWORD_ENV[adapter]: password} if adapter in PASSWORD_ENV and password else {}
    db = db.model_copy(update={"user": user})
    in_container = db.service is not None and adapter != "sqlite"
    client = Client(
        compose=(plan.compose or ["docker", "compose"]) if in_container else None,
        cwd=plan.folder,
        service=db.service if in_container else None,
        env=env,
    )
    engine = ENGINES[adapter](db, client, plan.folder, _label(db))
    return Job(plan.project, engine, float(db.idle_timeout or idle), notes)


def _env_reader(
    service: Service | None, secrets: Secrets
) -> Callable[[str], tuple[str | None, str]]:
    def read(var: str) -> tuple[str | None, str]:
        if service is None or var not in service.environment:
            return None, ""
        return _resolved(service.environment[var], secrets)

    return read


def _resolved(value: str, secrets: Secrets) -> tuple[str | None, str]:
    from itsup.compose import resolve

    names = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", value)
    text, missing = resolve(value, secrets.lookup)
    if missing:
        return None, f"{', '.join(missing)} undefined"
    where = ", ".join(secrets.where(n) for n in names) if names else "the compose file"
    return text, where


def _label(db: Database) -> str:
    if db.service:
        return db.service
    if db.path:
        return db.path.replace("/", "_")
    return (db.host or "socket").replace("/", "_") + (f"_{db.port}" if db.port else "")


def _excludes(
    plan: ProjectPlan, config: ProjectBackup, services: dict[str, Service], layout: Layout
) -> list[str]:
    base = f"upstream/{plan.project}"
    if config.exclude is not None:
        return [f"{base}/{path}" for path in config.exclude]
    out = []
    for job in plan.jobs:
        if job.adapter == "sqlite" and job.engine.db.path:
            path = f"{base}/{job.engine.db.path}"
            out += [path, f"{path}-wal", f"{path}-shm", f"{path}-journal"]
            continue
        service = services.get(job.service or "")
        mount = service.data_mount(_engine_kind(job.adapter)) if service else None
        if mount is None:
            continue
        try:
            rel = Path(mount.source).relative_to(layout.root.resolve())
        except ValueError:
            continue  # outside the host tree: never copied anyway
        out.append(rel.as_posix())
    return out


def _engine_kind(adapter: str) -> str | None:
    return adapter if adapter in ("postgres", "mariadb", "mysql", "redis") else None
