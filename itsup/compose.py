"""A project's compose file as itsup needs it: services, images, environment, mounts.

itsUP generates `upstream/{project}/docker-compose.yml` and runs `docker
compose` in that folder, so the folder's name is the compose project and a
relative bind mount (`./data/postgres:/var/lib/postgresql/data`) lives below
it. This module reads the file (it never runs it), recognises database
engines by image, finds the bind mount that holds an engine's data, resolves
`${VAR}` in environment values, and finds the compose command the host has:
`docker compose` (v2) or `docker-compose` (v1).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from itsup.errors import ConfigError

COMPOSE_FILES = ("docker-compose.yml", "docker-compose.yaml", "compose.yml", "compose.yaml")

# Image names (the last path part, without tag) by engine. Wrappers of an engine
# (PostGIS, TimescaleDB, Bitnami's builds) speak its protocol and tools.
ENGINE_IMAGES: dict[str, tuple[str, ...]] = {
    "postgres": ("postgres", "postgis", "timescaledb", "timescaledb-ha", "postgresql", "pgvector"),
    "mariadb": ("mariadb",),
    "mysql": ("mysql", "percona-server", "percona"),
    "redis": ("redis", "valkey", "redis-stack-server", "keydb"),
    "mongo": ("mongo", "mongodb"),
}
# Where each engine keeps its data inside the official image.
DATA_DIRS = {
    "postgres": "/var/lib/postgresql/data",
    "mariadb": "/var/lib/mysql",
    "mysql": "/var/lib/mysql",
    "redis": "/data",
    "mongo": "/data/db",
}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class Mount:
    source: str  # a host path (absolute, resolved against the project folder) or a volume name
    target: str
    read_only: bool
    bind: bool


@dataclass
class Service:
    name: str
    image: str
    environment: dict[str, str]
    mounts: list[Mount]
    raw: dict[str, Any] = field(repr=False)

    @property
    def engine(self) -> str | None:
        return engine_of(self.image)

    def data_mount(self, engine: str | None = None) -> Mount | None:
        """The bind mount holding the engine's data folder (PGDATA for PostgreSQL)."""
        engine = engine or self.engine
        if engine is None:
            return None
        wanted = self.environment.get("PGDATA") if engine == "postgres" else None
        wanted = wanted or DATA_DIRS[engine]
        best: Mount | None = None
        for mount in self.mounts:
            target = mount.target.rstrip("/") or "/"
            inside = wanted == target or wanted.startswith(target + "/")
            longer = best is None or len(target) > len(best.target)
            if inside and not mount.read_only and target != "/" and longer:
                best = mount
        return best if best is not None and best.bind else None


def engine_of(image: str) -> str | None:
    """`postgres`, `mariadb`, `mysql`, `redis` or `mongo` for an image reference, else None."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        last = last.split(":", 1)[0]
    for engine, names in ENGINE_IMAGES.items():
        if last in names:
            return engine
    return None


def find_compose_file(folder: Path) -> Path | None:
    for name in COMPOSE_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_services(path: Path) -> dict[str, Service]:
    """The services of a compose file; ConfigError (naming the file) when it cannot be read."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the compose file: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: not a readable compose file ({' '.join(str(exc).split())[:200]})"
        ) from None
    services = (data or {}).get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict):
        return {}
    out = {}
    for name, spec in services.items():
        if isinstance(spec, dict):
            out[str(name)] = Service(
                name=str(name),
                image=str(spec.get("image") or ""),
                environment=_environment(spec.get("environment")),
                mounts=_mounts(spec.get("volumes"), path.parent),
                raw=spec,
            )
    return out


def _environment(value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        return {str(k): "" if v is None else str(v) for k, v in value.items()}
    if isinstance(value, list):
        env = {}
        for item in value:
            key, _, val = str(item).partition("=")
            env[key] = val
        return env
    return {}


def _mounts(value: Any, folder: Path) -> list[Mount]:
    mounts = []
    for item in value or []:
        if isinstance(item, dict):
            source = str(item.get("source") or "")
            target = str(item.get("target") or "")
            read_only = bool(item.get("read_only"))
            bind = item.get("type", "volume") == "bind"
        else:
            parts = str(item).split(":")
            if len(parts) == 1:
                continue  # an anonymous volume: nothing on the host to name
            source, target = parts[0], parts[1]
            read_only = len(parts) > 2 and "ro" in parts[2].split(",")
            bind = source.startswith((".", "/", "~"))
        if bind:
            source = str((folder / os.path.expanduser(source)).resolve())
        mounts.append(Mount(source, target, read_only, bind))
    return mounts


def resolve(value: str, lookup: Callable[[str], str | None]) -> tuple[str, list[str]]:
    """`value` with `${VAR}`, `${VAR:-default}` and `$VAR` resolved; also the names not found."""
    missing: list[str] = []

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        found = lookup(name)
        if found is not None and (found or m.group(2) is None):
            return found
        if m.group(2) is not None:
            return m.group(2)
        missing.append(name)
        return ""

    return _VAR.sub(repl, value.replace("$$", "\0")).replace("\0", "$"), missing


_detected: list[str] | None = None


def compose_command() -> list[str]:
    """The compose command this host has: `docker compose` (v2) or `docker-compose` (v1).

    `ITSUP_COMPOSE` overrides it (for example `docker-compose` or `podman-compose`).
    """
    global _detected
    given = os.environ.get("ITSUP_COMPOSE")
    if given:
        return given.split()
    if _detected is None:
        if shutil.which("docker") and _answers(["docker", "compose", "version"]):
            _detected = ["docker", "compose"]
        elif shutil.which("docker-compose"):
            _detected = ["docker-compose"]
        else:
            raise ConfigError(
                "neither `docker compose` nor `docker-compose` was found on this host",
                hint="install Docker Compose (v2 plugin or v1), or set ITSUP_COMPOSE",
            )
    return list(_detected)


def _answers(argv: list[str]) -> bool:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0
