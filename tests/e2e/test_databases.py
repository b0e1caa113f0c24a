"""Databases dumped while they run, restored into the running engines, proven by the drill.

Real PostgreSQL, MariaDB and Redis in real containers (tests/dockerstack.py),
reached the way itsup reaches them on a host: `docker compose exec -T` in the
project's folder. Each round trip creates data, backs it up with the `itsup`
command, destroys it (drop, flush, delete), restores it, and compares every
row and key.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from secrets import token_hex
from typing import TYPE_CHECKING, Any

import pytest
from dockerstack import (
    compose,
    container_state,
    mariadb,
    mariadb_service,
    postgres_service,
    psql,
    redis_cli,
    redis_service,
    up,
    wait_ready,
)
from helpers import ITSUP, itsup, write_config

if TYPE_CHECKING:
    from dockerfixtures import ProjectFactory

pytest_plugins = ("dockerfixtures",)
pytestmark = pytest.mark.docker

PG_PASSWORD = "pg-" + token_hex(6)
MARIA_PASSWORD = "maria-" + token_hex(6)
REDIS_PASSWORD = "redis-" + token_hex(6)


class DbHost:
    """A host root whose projects run real engines; backups go to a local folder."""

    def __init__(self, root: Path, make: ProjectFactory) -> None:
        self.root = root
        self.make = make
        self.store = root / "store"  # beside upstream/ and proxy/: never backed up itself
        write_config(
            root,
            f"backup:\n  local:\n    path: {self.store}\n    prefix: ''\n  databases: auto\n",
        )
        (root / "proxy").mkdir(exist_ok=True)
        (root / "proxy" / "traefik.yml").write_text("entryPoints: {}\n")

    def project(
        self, base: str, services: dict[str, Any], env: dict[str, str] | None = None
    ) -> Path:
        folder = self.make(base, services, env)
        (folder / "app.conf").write_text("setting = 1\n")  # an ordinary file beside the data
        secrets = self.root / "secrets"
        secrets.mkdir(exist_ok=True)
        if env:  # itsup reads a project's credentials from its secrets, as itsUP keeps them
            text = "".join(f"{k}={v}\n" for k, v in env.items())
            (secrets / f"{folder.name}.txt").write_text(text)
        return folder

    def backup_yml(self, project: Path, text: str) -> None:
        folder = self.root / "projects" / project.name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "backup.yml").write_text(text)

    def itsup(self, *args: str, expect: int = 0, **kw: Any) -> Any:
        return itsup(self.root, *args, expect=expect, **kw)

    def manifest(self) -> dict[str, Any]:
        latest = json.loads((self.store / "latest.json").read_text())
        return json.loads((self.store / f"{latest['generation']}.manifest.json").read_text())

    def members(self) -> list[str]:
        with tarfile.open(self.store / "latest.tar.gz") as tar:
            return tar.getnames()


@pytest.fixture
def db_host(tmp_path: Path, docker_project: ProjectFactory) -> DbHost:
    return DbHost(tmp_path, docker_project)  # docker_project writes tmp_path/upstream/


def started(project: Path, *services: tuple[str, str]) -> None:
    up(project)
    for service, engine in services:
        wait_ready(project, service, engine)


def pg(project: Path, sql: str, db: str = "app") -> str:
    return psql(project, "db", sql, user="app", db=db, password=PG_PASSWORD)


def pg_rows(project: Path, db: str, table: str) -> list[str]:
    return pg(project, f"SELECT * FROM {table} ORDER BY 1", db).splitlines()


# -- PostgreSQL -------------------------------------------------------------------------------


def make_postgres(db_host: DbHost, base: str = "pgapp") -> Path:
    project = db_host.project(
        base, {"db": postgres_service(user="app", db="app")}, {"POSTGRES_PASSWORD": PG_PASSWORD}
    )
    started(project, ("db", "postgres"))
    pg(project, "CREATE ROLE reader LOGIN PASSWORD 'r-pass'")
    pg(
        project,
        "CREATE TABLE items (id int PRIMARY KEY, name text, data bytea);"
        "INSERT INTO items SELECT g, 'item ' || g, decode(md5(g::text), 'hex') "
        "FROM generate_series(1, 2000) g;"
        "GRANT SELECT ON items TO reader",
    )
    pg(project, "CREATE DATABASE shop OWNER reader")
    pg(project, "CREATE TABLE orders (id int, total numeric); INSERT INTO orders VALUES "
       "(1, 9.99), (2, 120.50)", db="shop")  # fmt: skip
    return project


def test_postgres_round_trip_roles_first_every_row_back(db_host: DbHost) -> None:
    project = make_postgres(db_host)
    before = {
        "items": pg_rows(project, "app", "items"),
        "orders": pg_rows(project, "shop", "orders"),
    }
    db_host.itsup("backup")

    dumps = [d for d in db_host.manifest()["dumps"] if d["project"] == project.name]
    assert {d["database"] for d in dumps} >= {None, "app", "shop"}
    assert all(d["result"] == "ok" and d["engine_version"].startswith("15") for d in dumps)
    members = db_host.members()
    base = f"upstream/{project.name}"
    assert f"{base}/_backup/db.globals.sql" in members
    assert f"{base}/_backup/db.app.pgdump" in members and f"{base}/app.conf" in members
    assert not [m for m in members if m.startswith(f"{base}/data/postgres")]  # live data left out

    # Destroy: a database, rows, and the role that owns it.
    pg(project, "DROP DATABASE shop")
    pg(project, "DELETE FROM items WHERE id > 10; DROP TABLE IF EXISTS nothing")
    pg(project, "REVOKE ALL ON items FROM reader; DROP ROLE reader")

    out = db_host.itsup("-v", "restore", project.name, "--yes")
    assert f"{project.name}/db" in out.out
    assert pg_rows(project, "app", "items") == before["items"]
    assert pg_rows(project, "shop", "orders") == before["orders"]
    assert pg(project, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'",
              "postgres").strip() == "reader"  # fmt: skip
    grants = pg(project, "SELECT privilege_type FROM information_schema.role_table_grants "
                "WHERE grantee = 'reader' AND table_name = 'items'")  # fmt: skip
    assert grants.split() == ["SELECT"]
    assert not (project / "_backup").exists()  # dumps are loaded, never left as files
    assert not (db_host.root / ".itsup" / "dumps").exists()


def test_plain_tar_and_pg_restore_bring_a_database_back_without_itsup(
    db_host: DbHost, tmp_path: Path
) -> None:
    project = make_postgres(db_host, "plain")
    db_host.itsup("backup")
    out = tmp_path / "plain"
    out.mkdir()
    member = f"upstream/{project.name}/_backup/db.app.pgdump"
    subprocess.run(["tar", "-xzf", str(db_host.store / "latest.tar.gz"), "-C", str(out), member],
                   check=True)  # fmt: skip
    name = f"itsup_plain_{token_hex(4)}"
    host_pg = ["-h", "127.0.0.1", "-U", "postgres"]
    subprocess.run(["createdb", *host_pg, name], check=True)
    try:
        subprocess.run(
            ["pg_restore", *host_pg, "--no-owner", "--no-acl", "-d", name, str(out / member)],
            check=True,
        )
        rows = subprocess.run(
            ["psql", *host_pg, "-XAt", "-d", name, "-c", "SELECT * FROM items ORDER BY 1"],
            check=True, capture_output=True, text=True,
        ).stdout.splitlines()  # fmt: skip
    finally:
        subprocess.run(["dropdb", *host_pg, "--if-exists", name], check=True)
    assert rows == pg_rows(project, "app", "items")


# -- MariaDB ----------------------------------------------------------------------------------


def maria(project: Path, sql: str, database: str | None = None) -> str:
    return mariadb(project, "sql", sql, password=MARIA_PASSWORD, database=database)


def test_mariadb_round_trip_users_and_grants_back(db_host: DbHost) -> None:
    project = db_host.project(
        "maria", {"sql": mariadb_service()}, {"MARIADB_ROOT_PASSWORD": MARIA_PASSWORD}
    )
    started(project, ("sql", "mariadb"))
    maria(project, "CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY, "
          "note TEXT); INSERT INTO shop.orders VALUES (1, 'first'), (2, 'tab\there'), "
          "(3, 'quote''s');"
          "CREATE USER 'clerk'@'%' IDENTIFIED BY 'clerk-pass';"
          "GRANT SELECT, INSERT ON shop.* TO 'clerk'@'%'")  # fmt: skip
    before = maria(project, "SELECT * FROM shop.orders ORDER BY id")
    db_host.itsup("backup")
    dumps = {d["file"].rsplit("/", 1)[1] for d in db_host.manifest()["dumps"]}
    assert {"sql.users.sql", "sql.shop.sql"} <= dumps

    maria(project, "DROP DATABASE shop; DROP USER 'clerk'@'%'")
    db_host.itsup("restore", project.name, "--yes")
    assert maria(project, "SELECT * FROM shop.orders ORDER BY id") == before
    grants = maria(project, "SHOW GRANTS FOR 'clerk'@'%'")
    assert "GRANT SELECT, INSERT ON `shop`.* TO `clerk`@`%`" in grants
    # The user's password came back too: it can log in.
    assert mariadb(project, "sql", "SELECT 1", user="clerk", password="clerk-pass").strip() == "1"


# -- Redis ------------------------------------------------------------------------------------


def redis(project: Path, *args: str) -> str:
    return redis_cli(project, "cache", *args, password=REDIS_PASSWORD)


def redis_state(project: Path) -> dict[str, str]:
    """Every key with its type and value."""
    read = {"string": ("GET",), "hash": ("HGETALL",), "list": ("LRANGE", "0", "-1")}
    state = {}
    for key in sorted(redis(project, "--scan").split()):
        kind = redis(project, "TYPE", key).strip()
        state[key] = f"{kind}: {redis(project, *read[kind][:1], key, *read[kind][1:])}"
    return state


def test_redis_round_trip_replaces_the_live_data_set(db_host: DbHost) -> None:
    project = db_host.project(
        "cache", {"cache": redis_service("REDIS_PASSWORD")}, {"REDIS_PASSWORD": REDIS_PASSWORD}
    )
    started(project, ("cache", "redis"))
    redis(project, "SET", "greeting", "hello")
    redis(project, "HSET", "user:1", "name", "ada", "role", "admin")
    redis(project, "RPUSH", "queue", "a", "b", "c")
    redis(project, "MSET", *next(f"k{i} {i}" for i in range(50)).split(), "k2", "2")
    redis(project, "SET", "temp", "x", "EX", "3600")
    before = redis_state(project)
    db_host.itsup("backup")
    (record,) = [d for d in db_host.manifest()["dumps"] if d["adapter"] == "redis"]
    assert record["result"] == "ok" and record["engine_version"].startswith("7.")

    redis(project, "FLUSHALL")
    redis(project, "SET", "intruder", "1")
    db_host.itsup("restore", project.name, "--yes")
    assert redis_state(project) == before
    ttl = int(redis(project, "TTL", "temp"))
    assert 0 < ttl <= 3600
    assert redis(project, "ROLE").split()[0] == "master"  # back to a primary after the copy


# -- SQLite (no container) -------------------------------------------------------------------


def test_sqlite_online_backup_and_restore_into_the_live_file(db_host: DbHost) -> None:
    import sqlite3

    folder = db_host.root / "upstream" / "notes"
    (folder / "data").mkdir(parents=True)
    (folder / "docker-compose.yml").write_text("services:\n  app:\n    image: busybox\n")
    live = folder / "data" / "app.db"
    with sqlite3.connect(live) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {i}",) for i in range(300)])
    writer = sqlite3.connect(live)  # an open connection with uncheckpointed WAL pages
    writer.execute("INSERT INTO notes (body) VALUES ('in the wal')")
    writer.commit()
    db_host.backup_yml(folder, "adapter: sqlite\npath: data/app.db\n")
    db_host.itsup("backup")
    members = db_host.members()
    assert "upstream/notes/_backup/data_app.db.sqlite" in members
    assert "upstream/notes/data/app.db" not in members  # never a copy of the live file
    assert "upstream/notes/data/app.db-wal" not in members

    writer.execute("DELETE FROM notes")
    writer.commit()
    writer.close()
    db_host.itsup("restore", "notes", "--yes")
    with sqlite3.connect(live) as db:
        rows = db.execute("SELECT count(*), max(body) FROM notes").fetchone()
    assert rows == (301, "note 99")


# -- failures ---------------------------------------------------------------------------------


def test_a_failing_dump_is_partial_and_the_other_projects_are_intact(db_host: DbHost) -> None:
    good = make_postgres(db_host, "good")
    bad = db_host.project(
        "bad", {"sql": mariadb_service()}, {"MARIADB_ROOT_PASSWORD": MARIA_PASSWORD}
    )
    started(bad, ("sql", "mariadb"))
    wrong = "wrong-" + token_hex(4)
    db_host.backup_yml(bad, f"adapter: mariadb\nservice: sql\npassword: {wrong}\n")
    result = db_host.itsup("backup", expect=3)
    text = result.out + result.err
    assert "Access denied" in text and f"{bad.name}/sql (mariadb): " in text
    assert wrong not in text and MARIA_PASSWORD not in text
    records = db_host.manifest()["dumps"]
    failed = [r for r in records if r["result"] == "failed"]
    assert [r["project"] for r in failed] == [bad.name]
    assert "Access denied" in failed[0]["error"] and wrong not in failed[0]["error"]
    assert {r["database"] for r in records if r["project"] == good.name} >= {"app", "shop"}
    assert db_host.manifest()["partial"] is True

    # An engine that is stopped: also exit 3, named.
    compose(bad, "stop", "sql")
    db_host.backup_yml(bad, "adapter: mariadb\nservice: sql\n")
    db_host.itsup("backup", expect=3)
    # The good project's dumps still restore.
    pg(good, "DROP DATABASE shop", "postgres")
    db_host.itsup("restore", good.name, "--yes")
    assert pg_rows(good, "shop", "orders") == ["1|9.99", "2|120.50"]


def test_restore_refuses_before_changing_anything_when_an_engine_is_down(db_host: DbHost) -> None:
    project = make_postgres(db_host, "down")
    db_host.itsup("backup")
    (project / "app.conf").write_text("setting = 2\n")
    compose(project, "stop", "db")
    result = db_host.itsup("restore", project.name, "--yes", expect=1)
    assert f"{project.name}/db (postgres) does not answer" in result.err
    assert "up -d db" in result.err and "--no-databases" in result.err
    assert (project / "app.conf").read_text() == "setting = 2\n"  # nothing changed
    # The files alone, then the dumps once the engine runs.
    db_host.itsup("restore", project.name, "--yes", "--no-databases")
    assert (project / "app.conf").read_text() == "setting = 1\n"
    started(project, ("db", "postgres"))
    pg(project, "DROP DATABASE shop", "postgres")
    db_host.itsup("restore", project.name, "--yes", "--databases-only")
    assert pg_rows(project, "shop", "orders") == ["1|9.99", "2|120.50"]


def test_a_hanging_dump_is_cut_at_its_idle_timeout(db_host: DbHost) -> None:
    project = db_host.project("hang", {"svc": redis_service()})
    started(project, ("svc", "redis"))
    db_host.backup_yml(
        project,
        "adapter: command\nservice: svc\ndump: sleep 600\nidle_timeout: 3s\n",
    )
    begun = time.monotonic()
    result = db_host.itsup("backup", expect=3)
    assert time.monotonic() - begun < 60
    assert "no output for 3 s" in result.err


def service_running(project: Path, service: str) -> bool:
    return container_state(project, service) == "running"


def test_stop_services_run_again_after_the_copy_a_failure_and_sigterm(db_host: DbHost) -> None:
    project = db_host.project(
        "stopper", {"worker": redis_service(), "idle": redis_service(data="./data/idle")}
    )
    started(project, ("worker", "redis"), ("idle", "redis"))
    compose(project, "stop", "idle")  # stopped before the run: stays stopped
    db_host.backup_yml(project, "stop: [worker, idle]\n")
    big = project / "blob"
    big.write_bytes(os.urandom(400 * 1024 * 1024))  # long enough to catch the run mid-copy

    db_host.itsup("backup")
    states = (container_state(project, "worker"), container_state(project, "idle"))
    assert states == ("running", "exited"), (states, (db_host.root / "logs").exists())

    # SIGTERM while the files are copied: the worker runs again, exit 130.
    env = {**os.environ, "ITSUP_ROOT": str(db_host.root)}
    proc = subprocess.Popen(
        [*ITSUP, "backup"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while service_running(project, "worker") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not service_running(project, "worker"), "the worker was never stopped"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    assert service_running(project, "worker") and not service_running(project, "idle")
    assert not (db_host.root / ".itsup" / "dumps").exists()


# -- discovery, verify, drill -----------------------------------------------------------------


def test_plan_shows_engines_credentials_and_commands_never_secrets(db_host: DbHost) -> None:
    project = db_host.project(
        "shop",
        {
            "db": postgres_service(user="app", db="app"),
            "sql": mariadb_service(),
            "cache": redis_service("REDIS_PASSWORD"),
        },
        {"POSTGRES_PASSWORD": PG_PASSWORD, "MARIADB_ROOT_PASSWORD": MARIA_PASSWORD,
         "REDIS_PASSWORD": REDIS_PASSWORD},
    )  # fmt: skip
    out = db_host.itsup("backup", "plan").out
    for secret in (PG_PASSWORD, MARIA_PASSWORD, REDIS_PASSWORD):
        assert secret not in out
    assert f"{project.name}  (discovered)" in out
    assert f"password from POSTGRES_PASSWORD (secrets/{project.name}.txt)" in out
    assert "exec -T -e PGPASSWORD db pg_dumpall -U app --globals-only" in out
    assert "exec -T -e MYSQL_PWD sql mariadb-dump" in out
    assert "exec -T -e REDISCLI_AUTH cache redis-cli --rdb -" in out
    assert f"left out of the file copy: upstream/{project.name}/data/postgres" in out
    data = json.loads(db_host.itsup("backup", "plan", "--json").out)
    (mine,) = [p for p in data if p["project"] == project.name]
    assert [d["adapter"] for d in mine["dumps"]] == ["postgres", "mariadb", "redis"]


def test_verify_checks_dumps_and_the_drill_loads_them_into_throwaway_engines(
    db_host: DbHost,
) -> None:
    project = make_postgres(db_host, "drilled")
    maria_project = db_host.project(
        "mdrill", {"sql": mariadb_service()}, {"MARIADB_ROOT_PASSWORD": MARIA_PASSWORD}
    )
    started(maria_project, ("sql", "mariadb"))
    maria(maria_project, "CREATE DATABASE shop; CREATE TABLE shop.t (a INT);"
          "INSERT INTO shop.t VALUES (1), (2), (3)")  # fmt: skip
    db_host.itsup("backup")
    verify = json.loads(db_host.itsup("backup", "verify", "--json").out)
    (gen,) = verify["generations"]
    checked = {d["file"].rsplit("/", 1)[1]: d["checked"] for d in gen["dumps"]}
    assert checked["db.app.pgdump"].startswith("SHA-256, pg_restore --list")
    assert checked["sql.shop.sql"] == "SHA-256, trailer"

    report = db_host.root / "drill.json"
    db_host.itsup("backup", "drill", "--no-git", "--report", str(report))
    data = json.loads(report.read_text())
    found = {d["engine"]: d["databases"] for d in data["databases"]}
    assert found[f"{project.name}/db"]["app"] == {"public.items": 2000}
    assert found[f"{project.name}/db"]["shop"] == {"public.orders": 2}
    assert found[f"{maria_project.name}/sql"]["shop"] == {"t": 3}
    # The throwaway containers are gone.
    left = subprocess.run(
        ["docker", "ps", "-a", "--filter", "name=itsup-drill", "-q"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert left == []
