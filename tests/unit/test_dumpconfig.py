"""backup.yml, compose discovery and the dump plan: what `itsup backup plan` shows and
`itsup backup` runs, checked without running an engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from itsup.compose import engine_of, load_services, resolve
from itsup.dbconfig import load_project_backup
from itsup.dumps.plan import plan_dumps
from itsup.errors import ConfigError, ExitCode
from itsup.layout import Layout

# How itsUP writes a project's generated compose file: credentials by placeholder,
# data in a relative bind mount below the project folder.
COMPOSE = """\
services:
  db:
    image: postgres:16-alpine
    environment:
      POSTGRES_USER: app
      POSTGRES_PASSWORD: ${DB_PASSWORD}
      POSTGRES_DB: app
    volumes:
      - ./data/postgres:/var/lib/postgresql/data
  sql:
    image: docker.io/library/mariadb:11
    environment:
      - MARIADB_ROOT_PASSWORD=${MARIADB_ROOT_PASSWORD}
    volumes:
      - ./data/mariadb:/var/lib/mysql
  cache:
    image: valkey/valkey:8
    command: valkey-server --requirepass ${REDIS_PASSWORD}
    volumes:
      - ./data/redis:/data
  search:
    image: mongo:7
  web:
    image: nginx:1.27
    volumes:
      - ./html:/usr/share/nginx/html:ro
"""
SECRETS = (
    "DB_PASSWORD=pg-secret-1\nMARIADB_ROOT_PASSWORD=maria-secret-2\nREDIS_PASSWORD=redis-secret-3\n"
)


@pytest.fixture(autouse=True)
def compose_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ITSUP_COMPOSE", "docker-compose")


def host(tmp_path: Path, backup_yml: str | None = None, compose: str = COMPOSE) -> Layout:
    (tmp_path / "projects" / "app").mkdir(parents=True)
    (tmp_path / "upstream" / "app").mkdir(parents=True)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "upstream" / "app" / "docker-compose.yml").write_text(compose)
    (tmp_path / "secrets" / "app.txt").write_text(SECRETS)
    if backup_yml is not None:
        (tmp_path / "projects" / "app" / "backup.yml").write_text(backup_yml)
    return Layout(tmp_path)


def problems(tmp_path: Path, text: str, secrets: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "backup.yml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_project_backup(path, (secrets or {}).get, "secrets/app.txt")
    assert caught.value.exit_code == ExitCode.CONFIG
    return [p.replace(str(path), "backup.yml") for p in caught.value.problems]


@pytest.mark.parametrize(
    ("image", "engine"),
    [
        ("postgres:15", "postgres"),
        ("postgis/postgis:16-3.4", "postgres"),
        ("timescale/timescaledb:latest-pg16", "postgres"),
        ("bitnami/postgresql:16", "postgres"),
        ("registry.example.com:5000/team/postgres:15@sha256:abc", "postgres"),
        ("mariadb:11", "mariadb"),
        ("mysql:8.4", "mysql"),
        ("redis:7-alpine", "redis"),
        ("valkey/valkey:8", "redis"),
        ("mongo:7", "mongo"),
        ("nginx:1.27", None),
        ("postgrest/postgrest", None),
        ("", None),
    ],
)
def test_engines_are_recognised_by_image(image: str, engine: str | None) -> None:
    assert engine_of(image) == engine


def test_data_folder_is_the_bind_mount_holding_the_engine_data(tmp_path: Path) -> None:
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "services:\n"
        "  a: {image: postgres, volumes: ['./pg:/var/lib/postgresql']}\n"
        "  b: {image: postgres, environment: {PGDATA: /pgdata/x}, volumes: ['./x:/pgdata']}\n"
        "  c: {image: mariadb, volumes: ['dbdata:/var/lib/mysql']}\n"
        "  d: {image: redis, volumes: ['./conf:/data:ro']}\n"
        "  e: {image: redis, volumes: [{type: bind, source: ./r, target: /data}]}\n"
    )
    services = load_services(compose)
    found = {n: s.data_mount() for n, s in services.items()}
    assert found["a"] is not None and found["a"].source == str(tmp_path / "pg")
    assert found["b"] is not None and found["b"].source == str(tmp_path / "x")
    assert found["c"] is None  # a named volume lives outside the host tree
    assert found["d"] is None  # read-only: not where the engine writes
    assert found["e"] is not None and found["e"].source == str(tmp_path / "r")


def test_placeholders_resolve_like_compose() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert resolve("${A}-$A-${B:-dflt}-${EMPTY:-x}-$$A", env.get) == ("1-1-dflt-x-$A", [])
    assert resolve("${MISSING}", env.get) == ("", ["MISSING"])


def test_one_engine_form_and_list_form(tmp_path: Path) -> None:
    path = tmp_path / "backup.yml"
    path.write_text("adapter: postgres\nservice: db\nexclude: [data/pg]\nstop: [worker]\n")
    config = load_project_backup(path, {}.get, "secrets/app.txt")
    assert [d.adapter for d in config.databases] == ["postgres"]
    assert config.databases[0].service == "db" and config.databases[0].names == ["all"]
    assert config.exclude == ["data/pg"] and config.stop == ["worker"]
    path.write_text(
        "databases:\n  - {adapter: postgres, service: db}\n  - {adapter: redis, service: cache}\n"
        "  - {adapter: sqlite, path: data/app.db}\n"
        "  - {adapter: command, service: search, dump: mongodump --archive}\n"
    )
    config = load_project_backup(path, {}.get, "secrets/app.txt")
    assert [d.adapter for d in config.databases] == ["postgres", "redis", "sqlite", "command"]


def test_every_problem_is_named_with_its_line_and_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "databases:\n"
        "  - adapter: postgress\n"  # line 2
        "    service: db\n"
        "  - adapter: sqlite\n"  # line 4: no path
        "  - adapter: mariadb\n"  # line 5: neither service nor host
        "    names: [shop]\n"
        "  - adapter: redis\n"
        "    service: cache\n"
        "    pasword: x\n"  # line 9: a typo
        "exclude: [../../etc]\n",  # line 10: outside the project
    )
    assert any(p.startswith("backup.yml:2: databases.0.adapter:") for p in found), found
    assert any(p.startswith("backup.yml:4: databases.1:") and "path" in p for p in found), found
    assert any(p.startswith("backup.yml:5: databases.2:") and "service" in p for p in found)
    assert any(
        p.startswith("backup.yml:9: databases.3.pasword: unknown key (did you mean 'password'")
        for p in found
    ), found
    assert any(p.startswith("backup.yml:10: exclude.0:") for p in found), found


def test_one_engine_form_problems_point_at_its_own_lines(tmp_path: Path) -> None:
    found = problems(tmp_path, "# itsUP's form\nadapter: postgres\nsevice: db\n")
    assert any(
        p.startswith("backup.yml:3: sevice: unknown key (did you mean 'service'?)") for p in found
    ), found
    found = problems(tmp_path, "adapter: postgres\nuser: app\n")
    assert found == [
        "backup.yml:1: a postgres database needs either `service:` (the engine "
        "runs in a container of the project) or `host:`/`port:`/`socket:` (it runs outside)"
    ]


def test_undefined_placeholder_and_secret_values_never_shown(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "databases:\n  - adapter: postgres\n    service: db\n    password: ${NOPE}\n"
        "  - adapter: redis\n    service: cache\n    port: ${PORT}\n",
        {"PORT": "not-a-port-secret"},
    )
    assert any(
        p.startswith("backup.yml:4: databases.0.password: ${NOPE} is not defined in "
                     "secrets/app.txt")
        for p in found
    ), found  # fmt: skip
    assert all("not-a-port-secret" not in p for p in found), found
    assert any(p.startswith("backup.yml:7: databases.1.port:") for p in found), found


def test_discovery_finds_engines_credentials_and_data_folders(tmp_path: Path) -> None:
    layout = host(tmp_path)
    (plan,) = plan_dumps(layout, {}, "auto", 300)
    assert plan.source == "discovered"
    jobs = {j.label: j for j in plan.jobs}
    assert {k: j.adapter for k, j in jobs.items()} == {
        "db": "postgres",
        "sql": "mariadb",
        "cache": "redis",
    }
    db = jobs["db"]
    assert db.engine.db.user == "app"
    assert db.engine.client.env == {"PGPASSWORD": "pg-secret-1"}
    assert "password from POSTGRES_PASSWORD (secrets/app.txt)" in db.credentials
    assert jobs["sql"].engine.client.env == {"MYSQL_PWD": "maria-secret-2"}
    assert jobs["cache"].engine.client.env == {"REDISCLI_AUTH": "redis-secret-3"}
    assert sorted(plan.excludes) == [
        "upstream/app/data/mariadb",
        "upstream/app/data/postgres",
        "upstream/app/data/redis",
    ]
    assert any("MongoDB" in note for note in plan.notes)
    # The commands run in the project folder, in the engine's own container, and
    # pass the password by name only: it is never on a command line.
    argv = db.engine.client.argv(["pg_dumpall", "--globals-only"])
    assert argv[:6] == ["docker-compose", "exec", "-T", "-e", "PGPASSWORD", "db"]
    assert db.engine.client.cwd == tmp_path / "upstream" / "app"
    for job in plan.jobs:
        for step in job.engine.plan():
            shown = job.engine.client.shown(step.command)
            assert "secret" not in shown and "secret" not in " ".join(step.command)


def test_without_auto_nothing_is_dumped_and_an_explicit_file_wins(tmp_path: Path) -> None:
    layout = host(tmp_path)
    (plan,) = plan_dumps(layout, {}, "configured", 300)
    assert plan.jobs == [] and plan.excludes == []
    (shown,) = plan_dumps(layout, {}, "configured", 300, explain=True)
    assert shown.source.startswith("discovered (not dumped")
    (layout.projects / "app" / "backup.yml").write_text(
        "adapter: postgres\nservice: db\nuser: ${DB_USER:-admin}\nexclude: [data/postgres]\n"
    )
    (plan,) = plan_dumps(layout, {}, "auto", 300)
    assert plan.source == "projects/app/backup.yml"
    assert [j.label for j in plan.jobs] == ["db"]
    assert plan.jobs[0].engine.db.user == "admin"
    assert plan.excludes == ["upstream/app/data/postgres"]


def test_a_service_not_in_the_compose_file_is_refused(tmp_path: Path) -> None:
    layout = host(tmp_path, "adapter: postgres\nservice: dbb\n")
    with pytest.raises(ConfigError) as caught:
        plan_dumps(layout, {}, "configured", 300)
    assert "service 'dbb' is not in" in caught.value.message
    assert "db, sql, cache" in caught.value.message


def test_sqlite_file_and_its_journal_are_left_out(tmp_path: Path) -> None:
    layout = host(tmp_path, "adapter: sqlite\npath: data/app.db\n")
    (plan,) = plan_dumps(layout, {}, "configured", 300)
    assert plan.excludes[:2] == ["upstream/app/data/app.db", "upstream/app/data/app.db-wal"]
    assert not plan.jobs[0].engine.client.in_container
