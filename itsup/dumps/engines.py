"""One class per engine: how to ask its version, dump it, and load a dump back.

Every command runs through a `Client` (runner.py): inside the engine's own
container, so the client always matches the server, or on the host for an
engine reached by host/port/socket. The dump files, named below
`upstream/{project}/_backup/`:

| adapter | files | made by |
|---|---|---|
| postgres | `{svc}.globals.sql`, `{svc}.{db}.pgdump` | `pg_dumpall --globals-only`, `pg_dump -Fc` per database |
| mariadb/mysql | `{svc}.users.sql`, `{svc}.{db}.sql` | `SHOW CREATE USER`/`SHOW GRANTS`, `*-dump --single-transaction` per database |
| redis | `{svc}.rdb` | `redis-cli --rdb -` (a snapshot sent by the server) |
| sqlite | `{path}.sqlite` | SQLite's online backup API |
| command | `{svc}.dump` | the configured `dump:` command |

Loads run in that order (globals/users first, so owners and grants exist).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import secrets as _random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from itsup.dbconfig import Database
from itsup.dumps.runner import Client, DumpError, Written

# Databases an engine creates for itself: never dumped one by one.
MYSQL_SYSTEM = ("information_schema", "performance_schema", "sys", "mysql")
# Accounts the engine makes for itself (MariaDB's `mysql`@localhost included): never
# dropped and recreated by a restore.
MYSQL_SYSTEM_USERS = (
    "root",
    "mysql",
    "mariadb.sys",
    "mysql.sys",
    "mysql.session",
    "mysql.infoschema",
    "",
)
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def restore_jobs() -> int:
    """pg_restore's parallel jobs when it reads a dump file itself: one per core, up
    to 4 (data and indexes of different tables load at once)."""
    return max(1, min(4, os.cpu_count() or 1))


def file_part(name: str) -> str:
    """A database or service name as a file name part (`my db` -> `my%20db`)."""
    return _SAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), name) or "%"


@dataclass
class Step:
    """One dump file and the command that writes it."""

    file: str
    database: str | None
    command: list[str]


@dataclass
class Dumped:
    file: str
    database: str | None
    written: Written


class Engine:
    """What every adapter offers (the defaults suit a server engine)."""

    adapter = ""

    def __init__(self, db: Database, client: Client, folder: Path, label: str) -> None:
        self.db = db
        self.client = client
        self.folder = folder  # upstream/{project}/
        self.label = label  # the file name stem: the service (or path)

    def version(self) -> str:
        return ""

    def steps(self, names: list[str]) -> list[Step]:
        raise NotImplementedError

    def databases(self) -> list[str]:
        return []

    def plan(self) -> list[Step]:
        """The steps as `backup plan` shows them (databases not yet listed)."""
        return self.steps(["<each database>"] if self.db.names == ["all"] else self.db.names)

    def dump(self, spool: Path, idle_timeout: float) -> list[Dumped]:
        names = self.db.names
        if names == ["all"]:
            names = self.databases()
        out = []
        for step in self.steps(names):
            written = self.client.dump(step.command, spool / step.file, idle_timeout)
            out.append(Dumped(step.file, step.database, written))
        return out

    def load(self, files: list[tuple[str, str | None, Path]]) -> None:
        raise NotImplementedError

    def ready(self) -> None:
        """Raise DumpError when the engine does not answer (before a restore changes anything)."""
        self.version()


class Postgres(Engine):
    adapter = "postgres"

    def _conn(self) -> list[str]:
        args = ["-U", self.user]
        if self.db.socket:
            args += ["-h", self.db.socket]
        elif self.db.host:
            args += ["-h", self.db.host]
        if self.db.port:
            args += ["-p", str(self.db.port)]
        return args

    @property
    def user(self) -> str:
        return self.db.user or "postgres"

    def sql(self, query: str, database: str = "postgres") -> str:
        return self.client.run(
            ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", *self._conn(),
             "-d", database, "-c", query]
        )  # fmt: skip

    def version(self) -> str:
        server = self.sql("SHOW server_version").strip()
        if not self.client.in_container:
            self._check_client(server)
        return server

    @functools.cached_property
    def client_version(self) -> str:
        """The host's pg_dump version (asked once)."""
        return self.client.run(["pg_dump", "--version"]).strip().rsplit(" ", 1)[-1]

    def _check_client(self, server: str) -> None:
        client = self.client_version
        if _major(server) > _major(client):
            raise DumpError(
                f"the PostgreSQL server at {self.db.label} is version {server}, newer than "
                f"this host's pg_dump {client}: install the client of version "
                f"{_major(server)} (postgresql-client-{_major(server)}) or reach the engine "
                "through its container (`service:`)"
            )

    def databases(self) -> list[str]:
        rows = self.sql(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
        )
        return [line for line in rows.splitlines() if line]

    def steps(self, names: list[str]) -> list[Step]:
        steps = [
            Step(f"{self.label}.globals.sql", None, ["pg_dumpall", *self._conn(), "--globals-only"])
        ]
        for name in names:
            steps.append(
                Step(
                    f"{self.label}.{file_part(name)}.pgdump",
                    name,
                    ["pg_dump", *self._conn(), "-Fc", "-Z0", "-d", name],
                )
            )
        return steps

    def load(self, files: list[tuple[str, str | None, Path]]) -> None:
        server: str | None = None  # asked once, when the first database is loaded
        for _file, database, path in files:
            if database is None:  # roles first; "already exists" is expected
                with path.open("rb") as stdin:
                    self._load_globals(stdin)
                continue
            server = server or self.version()
            maintenance = "template1" if database == "postgres" else "postgres"
            force = " WITH (FORCE)" if _major(server) >= 13 else ""
            self.sql(f"DROP DATABASE IF EXISTS {_ident(database)}{force}", maintenance)
            restore = ["pg_restore", *self._conn(), "--create", "--exit-on-error"]
            if self.client.in_container:  # the file is on the host: the client reads stdin
                with path.open("rb") as stdin:
                    self.client.run([*restore, "-d", maintenance], stdin=stdin)
            else:  # the host's client reads the file itself, with parallel jobs
                jobs = f"--jobs={restore_jobs()}"
                self.client.run([*restore, jobs, "-d", maintenance, str(path)])

    def _load_globals(self, stdin: IO[bytes]) -> None:
        done = self.client.call(
            ["psql", "-X", "-q", *self._conn(), "-d", "postgres", "-f", "-"], stdin=stdin
        )
        text = done.stderr.decode("utf-8", "replace")
        errors = [
            line for line in text.splitlines() if "ERROR" in line and "already exists" not in line
        ]
        if done.returncode != 0 or errors:
            shown = "\n".join(errors).encode() or done.stderr
            raise DumpError(self.client.error_line(shown, b"", done.returncode))


class MySQL(Engine):
    adapter = "mysql"
    cli, dumper = "mysql", "mysqldump"

    def _conn(self) -> list[str]:
        args = ["-u", self.db.user or "root"]
        if self.db.socket:
            args += ["-S", self.db.socket]
        elif self.db.host:
            args += ["-h", self.db.host, "--protocol=TCP"]
        if self.db.port:
            args += ["-P", str(self.db.port)]
        return args

    def sql(self, query: str) -> str:
        return self.client.run([self.cli, *self._conn(), "-N", "-B", "-r", "-e", query])

    def version(self) -> str:
        return self.sql("SELECT VERSION()").strip()

    def databases(self) -> list[str]:
        names = self.sql("SHOW DATABASES").splitlines()
        return [n for n in names if n and n not in MYSQL_SYSTEM]

    def steps(self, names: list[str]) -> list[Step]:
        steps = [Step(f"{self.label}.users.sql", None, [])]  # made by `users()`
        for name in names:
            steps.append(
                Step(
                    f"{self.label}.{file_part(name)}.sql",
                    name,
                    [
                        self.dumper,
                        *self._conn(),
                        "--single-transaction",
                        "--routines",
                        "--triggers",
                        "--events",
                        "--add-drop-database",
                        "--databases",
                        name,
                    ],
                )
            )
        return steps

    def plan(self) -> list[Step]:
        steps = super().plan()
        steps[0].command = [
            self.cli,
            *self._conn(),
            "-e",
            "SHOW CREATE USER ...; SHOW GRANTS FOR ...",
        ]
        return steps

    def users_sql(self) -> str:
        """Users (but root and the engine's own) with their grants, as statements."""
        skip = ",".join(f"'{u}'" for u in MYSQL_SYSTEM_USERS)
        rows = self.sql(
            f"SELECT CONCAT(QUOTE(User), '@', QUOTE(Host)) FROM mysql.user WHERE User NOT IN ({skip})"
        ).splitlines()
        out = ["-- users and grants, written by itsup"]
        for account in filter(None, rows):
            shown = self.sql(f"SHOW CREATE USER {account}; SHOW GRANTS FOR {account}")
            out.append(f"DROP USER IF EXISTS {account};")
            out += [f"{line};" for line in shown.splitlines() if line.strip()]
        out.append("FLUSH PRIVILEGES;")
        return "\n".join(out) + "\n"

    def dump(self, spool: Path, idle_timeout: float) -> list[Dumped]:
        names = self.databases() if self.db.names == ["all"] else self.db.names
        steps = self.steps(names)
        out = [self._write_users(spool / steps[0].file, steps[0].file)]
        for step in steps[1:]:
            written = self.client.dump(step.command, spool / step.file, idle_timeout)
            out.append(Dumped(step.file, step.database, written))
        return out

    def _write_users(self, path: Path, file: str) -> Dumped:
        started = time.monotonic()
        data = self.users_sql().encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return Dumped(
            file,
            None,
            Written(len(data), hashlib.sha256(data).hexdigest(), time.monotonic() - started),
        )

    def load(self, files: list[tuple[str, str | None, Path]]) -> None:
        for _file, _database, path in files:  # users first: the order of `steps`
            with path.open("rb") as stdin:
                self.client.run([self.cli, *self._conn()], stdin=stdin)


class MariaDB(MySQL):
    adapter = "mariadb"
    cli, dumper = "mariadb", "mariadb-dump"


class Redis(Engine):
    adapter = "redis"

    def _conn(self) -> list[str]:
        args = []
        if self.db.socket:
            args += ["-s", self.db.socket]
        elif self.db.host:
            args += ["-h", self.db.host]
        if self.db.port:
            args += ["-p", str(self.db.port)]
        return args

    def cmd(self, *words: str) -> str:
        return self.client.run(["redis-cli", *self._conn(), "--no-raw", *words])

    def raw(self, *words: str) -> str:
        return self.client.run(["redis-cli", *self._conn(), "--raw", *words])

    def version(self) -> str:
        info = self.raw("INFO", "server")
        if "redis_version" not in info:
            raise DumpError(info.strip().splitlines()[0] if info.strip() else "no answer")
        found = re.search(r"(?:valkey|redis)_version:(\S+)", info)
        return found.group(1) if found else ""

    def steps(self, names: list[str]) -> list[Step]:
        return [Step(f"{self.label}.rdb", None, ["redis-cli", *self._conn(), "--rdb", "-"])]

    def dump(self, spool: Path, idle_timeout: float) -> list[Dumped]:
        dumped = super().dump(spool, idle_timeout)
        for item in dumped:
            _strip_eof_mark(spool / item.file, item.written)
        return dumped

    def load(self, files: list[tuple[str, str | None, Path]]) -> None:
        """Replace the live data set by the snapshot without restarting the server.

        A temporary server started next to the live one (same binary, loopback,
        a random password) loads the RDB; the live server replicates it (a full
        sync replaces its data set, and rewrites its AOF when it has one), then
        goes back to being a primary.
        """
        ((_file, _db, path),) = files
        password = _random.token_hex(16)
        self.client.secrets.add(password)
        tmp = f"/tmp/itsup-restore-{_random.token_hex(6)}.rdb"
        with path.open("rb") as stdin:
            self.client.run(["sh", "-c", 'umask 077 && cat > "$0"', tmp], stdin=stdin)
        port = ""
        try:
            port = self._start_loader(tmp, password)
            before = self.raw("CONFIG", "GET", "masterauth").splitlines()[1:2] or [""]
            self._secret_command("CONFIG", "SET", "masterauth", password)
            try:
                self.raw("REPLICAOF", "127.0.0.1", port)
                self._wait(self._synced, "the copy of the snapshot")
            finally:
                self.raw("REPLICAOF", "NO", "ONE")
                self._secret_command("CONFIG", "SET", "masterauth", before[0])
        finally:
            if port:
                with contextlib.suppress(DumpError):  # SHUTDOWN closes the connection
                    self._side(port, password, "SHUTDOWN", "NOSAVE")
            self.client.run(["rm", "-f", tmp])

    def _start_loader(self, rdb: str, password: str) -> str:
        """A temporary server on a free loopback port, loading `rdb`; its port.

        Its settings (the password among them) go in on standard input, never
        on a command line."""
        for _ in range(5):
            port = str(_random.randbelow(20000) + 40000)
            config = (
                f"port {port}\nbind 127.0.0.1\ndir /tmp\ndbfilename {rdb.rsplit('/', 1)[1]}\n"
                f'save ""\nappendonly no\nrequirepass {password}\ndaemonize yes\nlogfile ""\n'
            )
            self.client.run(["redis-server", "-"], input=config.encode())
            answers = functools.partial(self._answers, port, password)
            with contextlib.suppress(DumpError):
                self._wait(answers, "", 15)
                return port
        raise DumpError("could not start a temporary redis-server to load the snapshot")

    def _answers(self, port: str, password: str) -> bool:
        return self._side(port, password, "PING") == "PONG"

    def _secret_command(self, *words: str) -> None:
        """A command holding a secret, sent on standard input (not on a command line)."""
        line = " ".join(_redis_quote(w) for w in words) + "\n"
        done = self.client.call(["redis-cli", *self._conn()], input=line.encode())
        if done.returncode != 0 or done.stdout.strip() != b"OK":
            raise DumpError(self.client.error_line(done.stderr, done.stdout, done.returncode))

    def _side(self, port: str, password: str, *words: str) -> str:
        """A command to the temporary loading server (its password on standard input)."""
        line = f"AUTH {password}\n" + " ".join(_redis_quote(w) for w in words) + "\n"
        done = self.client.call(["redis-cli", "-p", port], input=line.encode())
        lines = done.stdout.decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines and lines[0] == "OK" else ""

    def _synced(self) -> bool:
        info = self.raw("INFO", "replication")
        return "master_link_status:up" in info and "master_sync_in_progress:0" in info

    @staticmethod
    def _wait(check: Callable[[], bool], what: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except DumpError:
                pass
            time.sleep(0.2)
        raise DumpError(f"{what} did not become ready within {timeout:.0f} s")


class SQLite(Engine):
    """An SQLite file below upstream/{project}/, copied with SQLite's online backup API."""

    adapter = "sqlite"

    @property
    def source(self) -> Path:
        assert self.db.path is not None
        return self.folder / self.db.path

    def version(self) -> str:
        return sqlite3.sqlite_version

    def steps(self, names: list[str]) -> list[Step]:
        return [Step(f"{self.label}.sqlite", None, ["sqlite3-backup-api", str(self.db.path)])]

    def dump(self, spool: Path, idle_timeout: float) -> list[Dumped]:
        started = time.monotonic()
        step = self.steps([])[0]
        dest = spool / step.file
        if not self.source.is_file():
            raise DumpError(f"{self.db.path}: no such database file")
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600))
        try:
            src = sqlite3.connect(f"file:{self.source}?mode=ro", uri=True, timeout=idle_timeout)
            with src, sqlite3.connect(dest) as out:
                src.backup(out, pages=1024)
            src.close()
        except sqlite3.Error as exc:
            raise DumpError(f"{self.db.path}: {exc}") from None
        digest = hashlib.sha256()
        with dest.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return [
            Dumped(
                step.file,
                None,
                Written(dest.stat().st_size, digest.hexdigest(), time.monotonic() - started),
            )
        ]

    def ready(self) -> None:
        pass

    def load(self, files: list[tuple[str, str | None, Path]]) -> None:
        ((_file, _db, path),) = files
        self.source.parent.mkdir(parents=True, exist_ok=True)
        try:
            with sqlite3.connect(path) as src, sqlite3.connect(self.source, timeout=60) as live:
                src.backup(live)
        except sqlite3.Error as exc:
            raise DumpError(f"{self.db.path}: {exc}") from None


class Command(Engine):
    """Anything else: `dump:` writes to standard output, `restore:` reads standard input."""

    adapter = "command"

    def steps(self, names: list[str]) -> list[Step]:
        assert self.db.dump is not None
        return [Step(f"{self.label}.dump", None, ["sh", "-c", self.db.dump])]

    def ready(self) -> None:
        self.client.run(["true"])

    def load(self, files: list[tuple[str, str | None, Path]]) -> None:
        if not self.db.restore:
            raise DumpError(f"{self.label}: backup.yml gives no `restore:` command for this dump")
        ((_file, _db, path),) = files
        with path.open("rb") as stdin:
            self.client.run(["sh", "-c", self.db.restore], stdin=stdin)


ENGINES: dict[str, type[Engine]] = {
    "postgres": Postgres,
    "mysql": MySQL,
    "mariadb": MariaDB,
    "redis": Redis,
    "sqlite": SQLite,
    "command": Command,
}


def _redis_quote(word: str) -> str:
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _strip_eof_mark(path: Path, written: Written) -> None:
    """Cut the 40-character end mark of a diskless transfer that `redis-cli --rdb -`
    leaves after the RDB when it writes to a pipe (to a file, it truncates it)."""
    mark = 40
    with path.open("r+b") as f:
        f.seek(0, 2)
        size = f.tell()
        if size < mark + 9:
            return
        f.seek(size - mark - 9)
        tail = f.read()
        if tail[0] != 0xFF or not re.fullmatch(rb"[0-9a-f]{40}", tail[9:]):
            return
        f.truncate(size - mark)
        f.seek(0)
        digest = hashlib.sha256()
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    written.size = size - mark
    written.sha256 = digest.hexdigest()


def _major(version: str) -> int:
    found = re.match(r"(\d+)", version)
    return int(found.group(1)) if found else 0


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
