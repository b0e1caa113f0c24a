"""Engines outside containers, reached by host/port with the host's own clients.

The machine's PostgreSQL (127.0.0.1:5432) and MariaDB (127.0.0.1:3306) get a
database of this test's own; Redis is a server this test starts on a free
loopback port (never the machine's shared one, whose data a restore would
replace).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from secrets import token_hex

import pytest
from helpers import itsup, write_config

HOST_PG = ["-h", "127.0.0.1", "-p", "5432", "-U", "postgres"]
HOST_MARIA = ["-h", "127.0.0.1", "-P", "3306", "-u", "root", "--protocol=TCP"]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def pg_db() -> Iterator[str]:
    name = f"itsup_direct_{token_hex(4)}"
    sh("createdb", *HOST_PG, name)
    yield name
    sh("dropdb", *HOST_PG, "--if-exists", "--force", name)


@pytest.fixture
def maria_db() -> Iterator[str]:
    name = f"itsup_direct_{token_hex(4)}"
    sh("mariadb", *HOST_MARIA, "-e", f"CREATE DATABASE {name}")
    yield name
    sh("mariadb", *HOST_MARIA, "-e", f"DROP DATABASE IF EXISTS {name}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--save", "", "--repl-diskless-sync-delay", "0"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True,
                         text=True).stdout.strip() != "PONG":  # fmt: skip
        assert time.monotonic() < deadline, "redis-server did not start"
        time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(timeout=20)


def host(tmp_path: Path, backup_yml: str) -> Path:
    root = tmp_path / "host"
    write_config(root, f"backup:\n  local:\n    path: {tmp_path / 'store'}\n    prefix: ''\n")
    (root / "upstream" / "legacy").mkdir(parents=True)
    (root / "upstream" / "legacy" / "docker-compose.yml").write_text("services: {}\n")
    (root / "projects" / "legacy").mkdir(parents=True)
    (root / "projects" / "legacy" / "backup.yml").write_text(backup_yml)
    return root


def test_direct_mode_round_trip_postgres_mariadb_redis(
    tmp_path: Path, pg_db: str, maria_db: str, redis_port: int
) -> None:
    psql = ["psql", *HOST_PG, "-XAtq", "-d", pg_db, "-c"]
    sh(*psql, "CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text) "
       "FROM generate_series(1, 500) g")  # fmt: skip
    maria = ["mariadb", *HOST_MARIA, "-N", "-B", maria_db, "-e"]
    sh(*maria, "CREATE TABLE t (id INT, v TEXT); INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    rcli = ["redis-cli", "-p", str(redis_port)]
    sh(*rcli, "SET", "answer", "42")
    root = host(
        tmp_path,
        "databases:\n"
        f"  - {{adapter: postgres, host: 127.0.0.1, port: 5432, user: postgres, names: [{pg_db}]}}\n"
        f"  - {{adapter: mariadb, host: 127.0.0.1, port: 3306, user: root, names: [{maria_db}]}}\n"
        f"  - {{adapter: redis, host: 127.0.0.1, port: {redis_port}}}\n",
    )
    pg_before = sh(*psql, "SELECT * FROM t ORDER BY 1")
    maria_before = sh(*maria, "SELECT * FROM t ORDER BY 1")
    itsup(root, "backup")
    manifest = json.loads(next((tmp_path / "store").glob("*.manifest.json")).read_text())
    assert {d["adapter"] for d in manifest["dumps"]} == {"postgres", "mariadb", "redis"}
    assert all(d["result"] == "ok" for d in manifest["dumps"])

    sh(*psql, "DELETE FROM t")
    sh(*maria, "DROP TABLE t")
    sh(*rcli, "FLUSHALL")
    itsup(root, "restore", "legacy", "--yes")
    assert sh(*psql, "SELECT * FROM t ORDER BY 1") == pg_before
    assert sh(*maria, "SELECT * FROM t ORDER BY 1") == maria_before
    assert sh(*rcli, "GET", "answer").strip() == "42"


def test_a_server_newer_than_the_hosts_client_is_named_with_both_versions(
    tmp_path: Path, pg_db: str
) -> None:
    # An older pg_dump first on PATH, as on a host whose client lags its server.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    old = bin_dir / "pg_dump"
    old.write_text("#!/bin/sh\necho 'pg_dump (PostgreSQL) 12.22'\n")
    old.chmod(0o755)
    (bin_dir / "psql").symlink_to(shutil.which("psql") or "psql")
    root = host(
        tmp_path,
        f"adapter: postgres\nhost: 127.0.0.1\nport: 5432\nuser: postgres\nnames: [{pg_db}]\n",
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = itsup(root, "backup", expect=3, env=env)
    assert "newer than this host's pg_dump 12.22" in result.err
    assert "version 15." in result.err and "postgresql-client-15" in result.err


def sqlite_host(tmp_path: Path) -> tuple[Path, Path]:
    import sqlite3

    root = host(tmp_path, "adapter: sqlite\npath: data/app.db\n")
    live = root / "upstream" / "legacy" / "data" / "app.db"
    live.parent.mkdir()
    with sqlite3.connect(live) as db:
        db.execute("CREATE TABLE t (v TEXT)")
        db.execute("INSERT INTO t VALUES ('kept')")
    return root, live


def test_dumps_a_killed_run_left_are_deleted_by_the_next_one(tmp_path: Path) -> None:
    root, _ = sqlite_host(tmp_path)
    spool = root / ".itsup" / "dumps" / "legacy"
    spool.mkdir(parents=True)
    (spool / "db.app.pgdump").write_bytes(b"PGDMP plaintext left by a SIGKILL")
    itsup(root, "backup")
    assert not (root / ".itsup" / "dumps").exists()


def test_restore_to_a_folder_extracts_the_dumps_as_private_files(tmp_path: Path) -> None:
    import sqlite3

    root, live = sqlite_host(tmp_path)
    itsup(root, "backup")
    out = tmp_path / "check"
    itsup(root, "restore", "legacy", "--to", str(out))
    dump = out / "upstream" / "legacy" / "_backup" / "data_app.db.sqlite"
    assert dump.stat().st_mode & 0o777 == 0o600
    assert (dump.parent.stat().st_mode & 0o777) == 0o700
    with sqlite3.connect(dump) as db:
        assert db.execute("SELECT v FROM t").fetchall() == [("kept",)]
    assert not (out / "upstream" / "legacy" / "data" / "app.db").exists()  # the live file: left out
    # --no-databases: the dumps stay out; --databases-only: nothing else comes
    itsup(root, "restore", "legacy", "--to", str(tmp_path / "nodb"), "--no-databases")
    assert not (tmp_path / "nodb" / "upstream" / "legacy" / "_backup").exists()
    assert (tmp_path / "nodb" / "upstream" / "legacy" / "docker-compose.yml").exists()
    itsup(root, "restore", "legacy", "--to", str(tmp_path / "only"), "--databases-only")
    assert (tmp_path / "only" / "upstream" / "legacy" / "_backup" / "data_app.db.sqlite").exists()
    assert not (tmp_path / "only" / "upstream" / "legacy" / "docker-compose.yml").exists()
    assert live.exists()
