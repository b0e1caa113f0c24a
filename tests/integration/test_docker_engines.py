"""Real PostgreSQL, MariaDB and Redis in real containers, driven through `compose exec -T`.

The stand-in images (tests/dockerenv.py) must behave like the official ones:
set up from the same environment, credentials checked, data in the project's
relative bind mounts. The tests also pin down what a backup tool relies on:
secrets passed by name only (`exec -T -e NAME`), dumps that cross `exec -T`
byte for byte, restart behaviour and `ps` filters. Each prints what it
measured as `FACT` lines (`pytest -rP` shows them).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING

import pytest
from dockerenv import compose_command
from dockerstack import (
    StackError,
    compose,
    container_id,
    exec_,
    inspect,
    mariadb,
    mariadb_service,
    postgres_service,
    psql,
    redis_cli,
    redis_service,
    up,
    wait_ready,
    write_project,
)

if TYPE_CHECKING:
    from dockerfixtures import ProjectFactory

pytest_plugins = ("dockerfixtures",)
pytestmark = pytest.mark.docker


def fact(label: str, text: str) -> None:
    print(f"FACT {label}: {text}")


def up_and_ready(project: Path, service: str, engine: str) -> float:
    started = time.monotonic()
    up(project)
    wait_ready(project, service, engine)
    return time.monotonic() - started


def wait_for(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - started


# -- PostgreSQL ---------------------------------------------------------------------------


def test_postgres_standin_sets_up_from_env_and_dumps_cross_exec_byte_for_byte(
    docker_project: ProjectFactory, tmp_path: Path
) -> None:
    password = f"pg-{token_hex(8)}"
    project = docker_project(
        "pg", {"db": postgres_service(user="app", db="shop")}, {"POSTGRES_PASSWORD": password}
    )
    compose_file = (project / "docker-compose.yml").read_text()
    assert "${POSTGRES_PASSWORD}" in compose_file and password not in compose_file
    elapsed = up_and_ready(project, "db", "postgres")
    fact("(g) postgres up + ready", f"{elapsed:.1f} s")

    # POSTGRES_USER, POSTGRES_DB and the password from .env, checked over TCP.
    psql(
        project, "db",
        "CREATE TABLE items (id int PRIMARY KEY, name text, raw bytea);"
        "INSERT INTO items SELECT i, 'item ' || i, decode(lpad(to_hex(i), 2, '0'), 'hex')"
        " FROM generate_series(0, 255) i;",
        user="app", db="shop", password=password,
    )  # fmt: skip
    count = psql(
        project, "db", "SELECT count(*) FROM items", user="app", db="shop", password=password
    )
    assert count == "256"
    with pytest.raises(StackError, match="password authentication failed"):
        psql(project, "db", "SELECT 1", user="app", db="shop", password="wrong")
    local = psql(project, "db", "SELECT current_user", user="app", db="shop")  # socket: trust
    assert local == "app"
    assert (project / "data/postgres/PG_VERSION").read_text().strip() == "15"

    # (c) pg_dumpall --globals-only and pg_dump -Fc through exec -T.
    creds = {"PGPASSWORD": password}
    tcp = ["-h", "127.0.0.1", "-U", "app"]
    globals_sql = exec_(project, "db", "pg_dumpall", "--globals-only", *tcp, env=creds).stdout
    assert b"CREATE ROLE app;" in globals_sql
    assert re.search(rb"ALTER ROLE app WITH SUPERUSER .* PASSWORD 'SCRAM-SHA-256\$", globals_sql)
    dump = exec_(project, "db", "pg_dump", "-Fc", *tcp, "-d", "shop", env=creds).stdout
    assert dump.startswith(b"PGDMP")
    dump_file = tmp_path / "shop.dump"
    dump_file.write_bytes(dump)
    listing = subprocess.run(
        ["pg_restore", "--list", str(dump_file)], capture_output=True, text=True, check=True
    ).stdout
    assert "TABLE DATA public items app" in listing
    # stdin is binary-safe: the container hashes the bytes it got as we do ...
    got = exec_(project, "db", "sha256sum", input=dump).stdout.split()[0].decode()
    assert got == hashlib.sha256(dump).hexdigest()
    # ... and stdout too: a dump file read back with cat hashes as in the container.
    made = exec_(
        project, "db", "sh", "-c",
        'pg_dump -Fc -h 127.0.0.1 -U app -d shop -f /tmp/shop.dump && sha256sum /tmp/shop.dump',
        env=creds,
    ).stdout.split()[0].decode()  # fmt: skip
    assert hashlib.sha256(exec_(project, "db", "cat", "/tmp/shop.dump").stdout).hexdigest() == made
    # ... and the dump restores, bytea included.
    psql(project, "db", "CREATE DATABASE restored")  # as POSTGRES_USER, app
    exec_(project, "db", "pg_restore", "--no-owner", *tcp, "-d", "restored", input=dump, env=creds)
    checksum = "SELECT count(*), md5(string_agg(raw, '' ORDER BY id)) FROM items"
    assert psql(project, "db", checksum, user="app", db="restored") == psql(
        project, "db", checksum, user="app", db="shop"
    )
    fact(
        "(c) pg_dump -Fc / pg_dumpall --globals-only through exec -T",
        f"binary-safe both ways: {len(dump)} bytes, sha256 equal in and out of the container, "
        "pg_restore --list on the host reads it, pg_restore through stdin restores it",
    )


# -- MariaDB ------------------------------------------------------------------------------


def test_mariadb_standin_sets_up_from_env_and_dumps_through_exec(
    docker_project: ProjectFactory,
) -> None:
    root_pw, app_pw = f"root-{token_hex(8)}", f"app-{token_hex(8)}"
    project = docker_project(
        "maria",
        {"db": mariadb_service(database="shop", user="app", password_var="APP_PASSWORD")},
        {"MARIADB_ROOT_PASSWORD": root_pw, "APP_PASSWORD": app_pw},
    )
    elapsed = up_and_ready(project, "db", "mariadb")
    fact("(g) mariadb up + ready", f"{elapsed:.1f} s")

    mariadb(
        project, "db",
        "CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(40), raw VARBINARY(4));"
        "INSERT INTO items VALUES (1, 'one', 0x00FF0A27), (2, 'two', 0x5C22), (3, 'three', NULL);",
        user="app", password=app_pw, database="shop",
    )  # fmt: skip
    assert mariadb(project, "db", "SELECT count(*) FROM items", user="app", password=app_pw, database="shop") == "3"  # fmt: skip
    with pytest.raises(StackError, match="Access denied"):
        mariadb(project, "db", "SELECT 1")  # root needs its password, as in the official image
    with pytest.raises(StackError, match="Access denied"):
        mariadb(project, "db", "SELECT 1", password="wrong")
    assert (project / "data/mariadb/shop").is_dir()

    # (d) mariadb-dump --single-transaction --databases through exec -T.
    creds = {"MYSQL_PWD": root_pw}
    dump = exec_(
        project, "db", "mariadb-dump", "-uroot", "--single-transaction", "--databases", "shop",
        env=creds,
    ).stdout  # fmt: skip
    assert b"CREATE DATABASE /*!32312 IF NOT EXISTS*/ `shop`" in dump
    assert b"INSERT INTO `items` VALUES" in dump
    checksum = "SELECT count(*), md5(group_concat(hex(raw) ORDER BY id)) FROM shop.items"
    before = mariadb(project, "db", checksum, password=root_pw)
    mariadb(project, "db", "DROP DATABASE shop", password=root_pw)
    exec_(project, "db", "mariadb", "-uroot", input=dump, env=creds)
    assert mariadb(project, "db", checksum, password=root_pw) == before

    create_user = mariadb(project, "db", "SHOW CREATE USER 'app'@'%'", password=root_pw)
    grants = mariadb(project, "db", "SHOW GRANTS FOR 'app'@'%'", password=root_pw)
    root_grants = mariadb(project, "db", "SHOW GRANTS FOR 'root'@'%'", password=root_pw)
    assert re.fullmatch(
        r"CREATE USER `app`@`%` IDENTIFIED BY PASSWORD '\*[0-9A-F]{40}'", create_user
    )
    assert "GRANT ALL PRIVILEGES ON `shop`.* TO `app`@`%`" in grants
    fact("(d) mariadb-dump through exec -T", f"{len(dump)} bytes, restores through exec -T stdin")
    fact("(d) SHOW CREATE USER 'app'@'%'", create_user)
    fact("(d) SHOW GRANTS FOR 'app'@'%'", " | ".join(grants.splitlines()))
    fact("(d) SHOW GRANTS FOR 'root'@'%'", " | ".join(root_grants.splitlines()))


# -- Redis --------------------------------------------------------------------------------


def rdb_end(data: bytes) -> bool:
    """True when `data` ends like an RDB file: the EOF opcode, then an 8-byte checksum."""
    return len(data) > 9 and data[-9] == 0xFF


def test_redis_standin_and_rdb_through_exec(
    docker_project: ProjectFactory,
) -> None:
    password = f"rd-{token_hex(8)}"
    project = docker_project("redis", {"cache": redis_service("REDIS_PASSWORD")}, {"REDIS_PASSWORD": password})  # fmt: skip
    assert "--requirepass" in (project / "docker-compose.yml").read_text()
    elapsed = up_and_ready(project, "cache", "redis")
    fact("(g) redis up + ready", f"{elapsed:.1f} s")

    assert redis_cli(project, "cache", "SET", "greeting", "hello", password=password) == "OK"
    assert redis_cli(project, "cache", "RPUSH", "list", "a", "b", "c", password=password) == "3"
    blob = bytes(range(256))
    assert redis_cli(project, "cache", "-x", "SET", "blob", password=password, input=blob) == "OK"
    assert redis_cli(project, "cache", "STRLEN", "blob", password=password) == "256"
    # Without the password: refused (redis-cli still exits 0 on an error reply).
    assert redis_cli(project, "cache", "GET", "greeting").startswith("NOAUTH")

    # (b) redis-cli --rdb - through exec -T.
    creds = {"REDISCLI_AUTH": password}
    started = time.monotonic()
    streamed = exec_(project, "cache", "redis-cli", "--rdb", "-", env=creds)
    diskless_took = time.monotonic() - started
    stream = streamed.stdout
    assert stream.startswith(b"REDIS")
    # Still diskless, without the wait for more replicas (the calls below: seconds less).
    redis_cli(project, "cache", "CONFIG", "SET", "repl-diskless-sync-delay", "0", password=password)
    filed = exec_(
        project, "cache", "sh", "-c", "redis-cli --rdb /tmp/dump.rdb >/dev/null 2>&1 && cat /tmp/dump.rdb",
        env=creds,
    ).stdout  # fmt: skip
    assert filed.startswith(b"REDIS") and rdb_end(filed)
    # Redis 7.0 with diskless replication (its default) streams the RDB followed by the
    # 40-character EOF marker of the transfer: redis-cli cannot truncate a pipe.
    marker = stream[-40:]
    assert re.fullmatch(rb"[0-9a-f]{40}", marker), stream[-60:]
    assert not rdb_end(stream) and rdb_end(stream[:-40])
    assert b"Transfer finished with success" in streamed.stderr
    # /dev/stdout fails outright: ftruncate and fsync on a pipe.
    dev_stdout = exec_(
        project, "cache", "redis-cli", "--rdb", "/dev/stdout", env=creds, check=False
    )
    assert dev_stdout.returncode != 0
    assert b"Fail to fsync" in dev_stdout.stderr
    # The RDB without the marker checks out with redis-check-rdb.
    check = exec_(
        project, "cache", "sh", "-c", "cat >/tmp/streamed.rdb && redis-check-rdb /tmp/streamed.rdb",
        input=stream[:-40],
    )  # fmt: skip
    assert b"RDB looks OK" in check.stdout
    # With disk-based replication, the stream is the RDB exactly.
    redis_cli(project, "cache", "CONFIG", "SET", "repl-diskless-sync", "no", password=password)
    started = time.monotonic()
    exact = exec_(project, "cache", "redis-cli", "--rdb", "-", env=creds).stdout
    disk_took = time.monotonic() - started
    assert exact.startswith(b"REDIS") and rdb_end(exact)
    fact(
        "(b) redis-cli --rdb - through exec -T (Redis 7.0)",
        f"writes to stdout, exit 0, but {len(stream)} bytes = RDB + 40-byte EOF marker "
        f"(diskless sync, the default; RDB to a file: {len(filed)} bytes); "
        f"--rdb /dev/stdout exits {dev_stdout.returncode} (Fail to fsync); with "
        f"repl-diskless-sync no, --rdb - is the RDB exactly ({len(exact)} bytes); "
        f"--rdb took {diskless_took:.1f} s diskless (repl-diskless-sync-delay, 5 s by "
        f"default), {disk_took:.1f} s disk-based",
    )

    # The stripped stream restores into a fresh Redis.
    restored = docker_project("redisrestore", {"cache": redis_service("REDIS_PASSWORD")}, {"REDIS_PASSWORD": password})  # fmt: skip
    (restored / "data/redis").mkdir(parents=True)
    (restored / "data/redis/dump.rdb").write_bytes(stream[:-40])
    up(restored)
    wait_ready(restored, "cache", "redis")
    assert redis_cli(restored, "cache", "GET", "greeting", password=password) == "hello"
    assert redis_cli(restored, "cache", "LRANGE", "list", "0", "-1", password=password).split() == ["a", "b", "c"]  # fmt: skip
    assert redis_cli(restored, "cache", "STRLEN", "blob", password=password) == "256"


# -- Compose behaviour --------------------------------------------------------------------


def test_exec_e_name_takes_the_value_from_the_callers_environment(
    docker_project: ProjectFactory,
) -> None:
    project = docker_project("envpass", {"box": redis_service()})
    up_and_ready(project, "box", "redis")
    # network_mode: none on every service: Compose made no network for the project.
    networks = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", f"label=com.docker.compose.project={project.name}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert networks.strip() == ""
    assert inspect(project, "box", "{{.HostConfig.NetworkMode}}") == "none"
    secret = f"s3cret-{token_hex(8)}"

    done = exec_(project, "box", "env", env={"PGPASSWORD": secret})
    assert f"PGPASSWORD={secret}" in done.stdout.decode().splitlines()
    assert secret not in " ".join(map(str, done.args))
    # A name the caller has not set reaches the container unset.
    unset = compose(project, "exec", "-T", "-e", "ITSUP_NOT_SET_ANYWHERE", "box", "env")
    assert "ITSUP_NOT_SET_ANYWHERE" not in unset.stdout.decode()

    # No process on the host shows the value in its command line while exec runs.
    environment = {**os.environ, "PGPASSWORD": secret}
    running = subprocess.Popen(
        [*compose_command(), "exec", "-T", "-e", "PGPASSWORD", "box", "sleep", "3"],
        cwd=project, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.5)
        cmdlines = []
        for proc in Path("/proc").iterdir():
            try:
                cmdlines.append((proc / "cmdline").read_bytes().replace(b"\0", b" "))
            except (OSError, ValueError):
                continue
        assert not [line for line in cmdlines if secret.encode() in line]
        execs = [line.decode() for line in cmdlines if b" exec " in line and b"PGPASSWORD" in line]
    finally:
        assert running.wait(timeout=30) == 0
    fact(
        "(a) exec -T -e PGPASSWORD",
        "the value comes from the compose command's environment; no host command line "
        f"holds it; the processes: {execs}",
    )


def test_restart_policy_and_start_after_shutdown_nosave(docker_project: ProjectFactory) -> None:
    project = docker_project(
        "restart",
        {
            "kept": redis_service(data="./data/kept", restart="unless-stopped"),
            "plain": redis_service(data="./data/plain"),
        },
    )
    up(project)
    wait_ready(project, "kept", "redis")
    wait_ready(project, "plain", "redis")
    running = ["ps", "--services", "--filter", "status=running"]
    assert set(compose(project, *running).stdout.decode().split()) == {"kept", "plain"}

    # (e) SHUTDOWN NOSAVE: `restart: unless-stopped` brings the container back by itself.
    first_start = inspect(project, "kept", "{{.State.StartedAt}}")
    kept_id = container_id(project, "kept")
    exec_(project, "kept", "redis-cli", "SHUTDOWN", "NOSAVE", check=False)
    back_after = wait_for(
        lambda: (
            inspect(project, "kept", "{{.State.StartedAt}}") != first_start
            and inspect(project, "kept", "{{.State.Status}}") == "running"
        ),
        what="kept restarting",
    )
    wait_ready(project, "kept", "redis")
    assert container_id(project, "kept") == kept_id  # the same container, restarted
    restarts = inspect(project, "kept", "{{.RestartCount}}")

    # Without a restart policy it stays down, and `start` brings it back.
    exec_(project, "plain", "redis-cli", "SHUTDOWN", "NOSAVE", check=False)
    wait_for(
        lambda: inspect(project, "plain", "{{.State.Status}}") == "exited", what="plain exiting"
    )
    exit_code = inspect(project, "plain", "{{.State.ExitCode}}")
    time.sleep(2)
    assert inspect(project, "plain", "{{.State.Status}}") == "exited"

    # (f) ps --services --filter status=running lists the running services only.
    assert compose(project, *running).stdout.decode().split() == ["kept"]
    compose(project, "start", "plain")
    wait_ready(project, "plain", "redis")
    assert set(compose(project, *running).stdout.decode().split()) == {"kept", "plain"}
    fact(
        "(e) redis-cli SHUTDOWN NOSAVE",
        f"restart: unless-stopped: back by itself after {back_after:.1f} s (same container, "
        f"RestartCount {restarts}); no policy: stays exited (exit code {exit_code}); "
        "`start` brings it back",
    )
    fact("(f) ps --services --filter status=running", "works (lists the running services only)")


def test_write_project_refuses_bridge_networks(tmp_path: Path) -> None:
    for service in (
        {**redis_service(), "network_mode": "bridge"},
        {**redis_service(), "networks": ["default"]},
    ):
        with pytest.raises(ValueError, match="bridge networks are off-limits"):
            write_project(tmp_path, "refused", {"box": service})
    project = write_project(tmp_path, "accepted", {"box": {"image": "redis:7"}})
    assert "network_mode: none" in (project / "docker-compose.yml").read_text()
