"""Compose projects laid out the way itsUP lays them out, on real database engines.

A project is `upstream/{project}/docker-compose.yml` with its `.env` next to it;
the folder name is the Compose project name, so every test picks a folder name
of its own (`unique_project("shop")`), also across xdist workers and other test
runs sharing the daemon. Services use the stand-in images of tests/dockerenv.py
(`postgres:15`, `mariadb:10.11`, `redis:7`), which take the official images'
environment and set the engine up on first start:

    project = write_project(tmp_path, unique_project("shop"), {
        "db": postgres_service(db="shop"),
        "cache": redis_service(password_var="REDIS_PASSWORD"),
    }, env={"POSTGRES_PASSWORD": "pw1", "REDIS_PASSWORD": "pw2"})
    up(project)
    wait_ready(project, "db", "postgres")
    psql(project, "db", "SELECT 1", db="shop", password="pw1")
    down(project)           # down -v --remove-orphans, and the data folders go

Data volumes are relative bind mounts under the project folder
(`./data/postgres:/var/lib/postgresql/data`), as itsUP writes them. Credentials
are written `${POSTGRES_PASSWORD}` in the compose file with their values in the
project's `.env`, so Compose itself resolves them (it reads the `.env` of the
project folder, where `compose()` runs it). Checked with v1 1.29 (`config`):
a variable set in the environment of the compose command wins over `.env`, so
a test that exports POSTGRES_PASSWORD changes what the compose file gets (v2
does the same); `.env` values are written single-quoted, which v1 and v2 read
literally (v1 also reads unquoted values literally, `$` included; v2 would
expand `$NAME` in them); a value holding a quote or a newline is refused.

Networking: every service gets `network_mode: none` unless it names one, so
Compose creates no network at all (checked with v1 1.29: `up` with every
service on `network_mode: none` creates none, and `docker network ls` still
shows only `host` and `none`). A service left on Compose's default would make
it create a `{project}_default` bridge network, so `write_project` gives
every service a `network_mode` and refuses `networks:` and any mode but none,
host or another container's (not tried here: bridge networks are off-limits).
Each container then has a loopback of its own, and the engines listen on
their default ports (5432, 3306, 6379) without clashing with the host's own
engines; tests reach them through `docker compose exec -T`. A test that must
reach an engine from the host gives the service builder a `port`: the service
then uses `network_mode: host` and the engine listens on 127.0.0.1 at that
port only (`free_port()`).

Secrets never go on a command line: `exec_(..., env={"PGPASSWORD": pw})` runs
`exec -T -e PGPASSWORD` with the value in the compose command's environment,
and the docker CLI copies it into the container (checked with v1 1.29, which
runs `docker exec --env PGPASSWORD`).
"""

from __future__ import annotations

import copy
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from dockerenv import SYSTEM_MOUNTS, compose_command

ENGINES = ("postgres", "mariadb", "redis")
POSTGRES_IMAGE = "postgres:15"
MARIADB_IMAGE = "mariadb:10.11"
REDIS_IMAGE = "redis:7"
STANDIN_IMAGES = (POSTGRES_IMAGE, MARIADB_IMAGE, REDIS_IMAGE)

# Variables of the caller's environment that would change which project Compose uses.
COMPOSE_OVERRIDES = ("COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_PATH_SEPARATOR")


class StackError(AssertionError):
    """A compose command failed, or an engine did not get ready."""


# -- service definitions ---------------------------------------------------------------


def _service(
    image: str, data: str, target: str, environment: dict[str, str], extra: dict[str, Any]
) -> dict[str, Any]:
    service: dict[str, Any] = {"image": image, "network_mode": "none"}
    if environment:
        service["environment"] = environment
    service["volumes"] = [f"{data}:{target}"]
    service.update(extra)
    return service


def postgres_service(
    password_var: str = "POSTGRES_PASSWORD",
    *,
    user: str | None = None,
    db: str | None = None,
    data: str = "./data/postgres",
    port: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A PostgreSQL 15 service, set up like the official image from its environment.

    The password is `${password_var}` (its value goes in the project's .env);
    `user` and `db` become POSTGRES_USER and POSTGRES_DB. With `port`, the
    service shares the host's network and listens on 127.0.0.1:port only.
    Other keys (restart, healthcheck...) are added as given.
    """
    environment = {"POSTGRES_PASSWORD": f"${{{password_var}}}"}
    if user:
        environment["POSTGRES_USER"] = user
    if db:
        environment["POSTGRES_DB"] = db
    if port is not None:
        environment["PGPORT"] = str(port)  # the server and the clients in the container
        extra = {
            "network_mode": "host",
            "command": ["postgres", "-c", "listen_addresses=127.0.0.1"],
            **extra,
        }
    return _service(POSTGRES_IMAGE, data, "/var/lib/postgresql/data", environment, extra)


def mariadb_service(
    root_password_var: str = "MARIADB_ROOT_PASSWORD",
    *,
    database: str | None = None,
    user: str | None = None,
    password_var: str | None = None,
    data: str = "./data/mariadb",
    port: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A MariaDB 10.11 service, set up like the official image from its environment.

    root's password is `${root_password_var}`; `database`, `user` and
    `${password_var}` become MARIADB_DATABASE, MARIADB_USER and MARIADB_PASSWORD.
    With `port`, the service shares the host's network on 127.0.0.1:port only.
    """
    environment = {"MARIADB_ROOT_PASSWORD": f"${{{root_password_var}}}"}
    if database:
        environment["MARIADB_DATABASE"] = database
    if user:
        environment["MARIADB_USER"] = user
    if password_var:
        environment["MARIADB_PASSWORD"] = f"${{{password_var}}}"
    if port is not None:
        environment["MYSQL_TCP_PORT"] = str(port)  # the clients in the container
        extra = {
            "network_mode": "host",
            "command": ["mariadbd", f"--port={port}", "--bind-address=127.0.0.1"],
            **extra,
        }
    return _service(MARIADB_IMAGE, data, "/var/lib/mysql", environment, extra)


def redis_service(
    password_var: str | None = None,
    *,
    data: str = "./data/redis",
    port: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A Redis 7 service; with `password_var`, `--requirepass ${password_var}` as itsUP
    projects write it. With `port`, the host's network on 127.0.0.1:port only."""
    command = ["redis-server"]
    environment = {}
    if password_var:
        command += ["--requirepass", f"${{{password_var}}}"]
    if port is not None:
        command += ["--port", str(port), "--bind", "127.0.0.1"]
        environment["REDIS_PORT"] = str(port)  # for redis_cli() and wait_ready()
        extra = {"network_mode": "host", **extra}
    if len(command) > 1:
        extra = {"command": command, **extra}
    return _service(REDIS_IMAGE, data, "/data", environment, extra)


# -- projects ---------------------------------------------------------------------------


def unique_project(base: str = "proj") -> str:
    """A project (folder) name no other test uses: `base` and a random suffix."""
    return f"{base.lower()}-{secrets.token_hex(4)}"


def free_port() -> int:
    """A loopback TCP port that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_network(name: str, service: Mapping[str, Any]) -> None:
    mode = service.get("network_mode")
    shared = str(mode).startswith(("service:", "container:"))
    if "networks" in service or (mode not in ("none", "host") and not shared):
        raise ValueError(
            f"service {name}: network_mode must be none or host (bridge networks are "
            f"off-limits in tests), not {mode!r}"
        )


def _env_line(name: str, value: str) -> str:
    if "'" in value or "\n" in value or "\r" in value:
        raise ValueError(f".env value of {name} holds a quote or a newline")
    return f"{name}='{value}'\n"


def write_project(
    root: Path,
    project: str,
    services: Mapping[str, Mapping[str, Any]],
    env: Mapping[str, str] | None = None,
    *,
    system_mounts: bool = True,
) -> Path:
    """Write `root/upstream/{project}/docker-compose.yml` (and its `.env`); the folder.

    Each service gets `network_mode: none` unless it sets one (none or host
    only), and services on a stand-in image get the read-only host mounts the
    engine runs from (dockerenv.SYSTEM_MOUNTS) after their own volumes.
    """
    if project != project.lower() or not project.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"project {project!r}: lowercase letters, digits, - and _ only")
    folder = root / "upstream" / project
    folder.mkdir(parents=True, exist_ok=True)
    document: dict[str, Any] = {"services": {}}
    for name, given in services.items():
        service = copy.deepcopy(dict(given))
        service.setdefault("network_mode", "none")
        _check_network(name, service)
        if system_mounts and service.get("image") in STANDIN_IMAGES:
            service["volumes"] = [*service.get("volumes", []), *SYSTEM_MOUNTS]
        document["services"][name] = service
    (folder / "docker-compose.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    if env:
        (folder / ".env").write_text("".join(_env_line(k, v) for k, v in env.items()))
    return folder


def data_folders(project_dir: Path) -> list[Path]:
    """The folders of the project's relative bind mounts (its data)."""
    document = yaml.safe_load((project_dir / "docker-compose.yml").read_text()) or {}
    folders = []
    for service in (document.get("services") or {}).values():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("./") or source.startswith("../"):
                folders.append((project_dir / source).resolve())
    return folders


# -- compose ----------------------------------------------------------------------------


def compose(
    project_dir: Path,
    *args: str,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    """Run `docker compose ARGS` (or docker-compose) in the project's folder."""
    environment = {k: v for k, v in os.environ.items() if k not in COMPOSE_OVERRIDES}
    environment.update(env or {})
    done = subprocess.run(
        [*compose_command(), *args],
        cwd=project_dir,
        input=input,
        capture_output=True,
        env=environment,
        timeout=timeout,
    )
    if check and done.returncode != 0:
        raise StackError(
            f"{' '.join(compose_command())} {' '.join(args)} in {project_dir.name} "
            f"exited with {done.returncode}:\n{done.stderr.decode(errors='replace')}"
            f"{done.stdout.decode(errors='replace')[-2000:]}"
        )
    return done


def up(project_dir: Path, *services: str) -> None:
    """`up -d` (the images are local: nothing is pulled)."""
    compose(project_dir, "up", "-d", *services)


def down(project_dir: Path, *, remove_data: bool = True) -> None:
    """`down -v --remove-orphans`, then remove the data folders (owned by the engines' users)."""
    if not (project_dir / "docker-compose.yml").exists():
        return
    compose(project_dir, "down", "-v", "--remove-orphans", timeout=120)
    if remove_data:
        for folder in data_folders(project_dir):
            remove_tree(folder, stop=project_dir.resolve())


def remove_tree(folder: Path, stop: Path | None = None) -> None:
    """Remove a folder the containers wrote (through a container when we may not), then
    its parents up to `stop` that are left empty (`./data` of `./data/postgres`)."""
    if folder.exists():
        try:
            shutil.rmtree(folder)
        except PermissionError:
            subprocess.run(
                [
                    "docker", "run", "--rm", "--network", "none", "--entrypoint", "/bin/sh",
                    "-v", f"{folder}:/gone", REDIS_IMAGE,
                    "-c", "rm -rf /gone/* /gone/.[!.]* /gone/..?*",
                ],
                capture_output=True, check=True,
            )  # fmt: skip
            shutil.rmtree(folder)
    if stop is None:
        return
    parent = folder.parent
    while parent != stop and stop in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def exec_(
    project_dir: Path,
    service: str,
    *argv: str,
    input: bytes | str | None = None,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess[bytes]:
    """`exec -T service ARGV`; `env` goes in as `-e NAME`, the values never in argv."""
    names = [arg for name in (env or {}) for arg in ("-e", name)]
    data = input.encode() if isinstance(input, str) else input
    return compose(
        project_dir, "exec", "-T", *names, service, *argv,
        input=data, env=env, check=check, timeout=timeout,
    )  # fmt: skip


def container_id(project_dir: Path, service: str) -> str:
    """The id of the service's container, running or not ("" without one).

    Found by Compose's labels, which v1 and v2 both set (`ps -q` of v2 lists
    running containers only).
    """
    done = subprocess.run(
        [
            "docker", "ps", "-a", "-q", "--no-trunc",
            "--filter", f"label=com.docker.compose.project={project_dir.name}",
            "--filter", f"label=com.docker.compose.service={service}",
            "--filter", "label=com.docker.compose.oneoff=False",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ids = done.stdout.split()
    return ids[0] if ids else ""


def inspect(project_dir: Path, service: str, template: str) -> str:
    """`docker inspect --format TEMPLATE` of the service's container ("" without one)."""
    ident = container_id(project_dir, service)
    if not ident:
        return ""
    done = subprocess.run(
        ["docker", "inspect", "--format", template, ident], capture_output=True, text=True
    )
    return done.stdout.strip()


def container_state(project_dir: Path, service: str) -> str:
    """The service container's state (running, restarting, exited...), "" without one."""
    return inspect(project_dir, service, "{{.State.Status}}")


def logs(project_dir: Path, service: str) -> str:
    done = compose(project_dir, "logs", "--no-color", "--tail", "60", service, check=False)
    return (done.stdout + done.stderr).decode(errors="replace")


READY_CHECKS: dict[str, Sequence[str]] = {
    "postgres": ["sh", "-c", 'exec pg_isready -q -U "${POSTGRES_USER:-postgres}" -d postgres'],
    "mariadb": ["mariadb-admin", "ping", "--silent"],
    "redis": ["sh", "-c", 'exec redis-cli -p "${REDIS_PORT:-6379}" ping'],
}


def wait_ready(project_dir: Path, service: str, engine: str, timeout: float = 60) -> float:
    """Wait until the engine answers inside its container; the seconds it took.

    A container that stopped (not one that restarts) fails at once, with its log.
    """
    if engine not in READY_CHECKS:
        raise ValueError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    started = time.monotonic()
    while True:
        done = exec_(project_dir, service, *READY_CHECKS[engine], check=False, timeout=30)
        out = done.stdout.decode(errors="replace")
        if done.returncode == 0 and (engine != "redis" or "PONG" in out or "NOAUTH" in out):
            return time.monotonic() - started
        state = container_state(project_dir, service)
        if state in ("exited", "dead", ""):
            raise StackError(
                f"{service} ({engine}) in {project_dir.name} is not running ({state or 'no container'})"
                f":\n{logs(project_dir, service)}"
            )
        if time.monotonic() - started > timeout:
            raise StackError(
                f"{service} ({engine}) in {project_dir.name} not ready after {timeout:.0f} s "
                f"(state {state}):\n{logs(project_dir, service)}"
            )
        time.sleep(0.2)


# -- engine clients ---------------------------------------------------------------------


def _text(done: subprocess.CompletedProcess[bytes]) -> str:
    return done.stdout.decode().strip()


def psql(
    project_dir: Path,
    service: str,
    sql: str,
    *,
    user: str | None = None,
    db: str = "postgres",
    password: str | None = None,
) -> str:
    """Run SQL with psql in the container; its unaligned, tuples-only output.

    `user` defaults to the container's POSTGRES_USER (postgres when unset).
    Without a password psql uses the local socket (trusted, as in the official
    image); with one, it connects over the container's loopback, where the
    password is checked (scram-sha-256), passing it as PGPASSWORD.
    """
    argv = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db]
    if user is None:
        argv = ["sh", "-c", 'exec "$0" -U "${POSTGRES_USER:-postgres}" "$@"', *argv]
    else:
        argv += ["-U", user]
    env = None
    if password is not None:
        argv += ["-h", "127.0.0.1"]
        env = {"PGPASSWORD": password}
    return _text(exec_(project_dir, service, *argv, input=sql, env=env))


def mariadb(
    project_dir: Path,
    service: str,
    sql: str,
    *,
    user: str = "root",
    password: str | None = None,
    database: str | None = None,
) -> str:
    """Run SQL with the mariadb client in the container (password as MYSQL_PWD)."""
    argv = ["mariadb", "--batch", "--skip-column-names", "-u", user]
    if database:
        argv.append(database)
    env = {"MYSQL_PWD": password} if password is not None else None
    return _text(exec_(project_dir, service, *argv, input=sql, env=env))


def redis_cli(
    project_dir: Path,
    service: str,
    *args: str,
    password: str | None = None,
    input: bytes | str | None = None,
) -> str:
    """Run redis-cli ARGS in the container (password as REDISCLI_AUTH)."""
    argv = ["sh", "-c", 'exec redis-cli -p "${REDIS_PORT:-6379}" "$@"', "redis-cli", *args]
    env = {"REDISCLI_AUTH": password} if password is not None else None
    return _text(exec_(project_dir, service, *argv, input=input, env=env))
