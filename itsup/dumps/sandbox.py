"""The drill's proof that a dump loads: a throwaway container of the service's own image.

From the service's definition in the restored compose file, a one-service
compose project of its own is written to a private temporary folder: the
same image, command, entrypoint, user and environment (values passed by
name from itsup's environment, never written to disk), its read-only bind
mounts (an engine's binaries, configuration), every writable mount replaced
by tmpfs, no network (`network_mode: none`), no published port, no restart
policy, no container name. It is started, the dumps are loaded into it with
the very code a restore uses, tables and rows are counted per database, and
it is removed (`down -v`) whatever happened.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from itsup.compose import Service, compose_command
from itsup.dbconfig import Database
from itsup.dumps.engines import ENGINES, MySQL, Postgres
from itsup.dumps.runner import Client, DumpError

# The keys of a service definition a throwaway copy keeps.
KEPT = ("image", "command", "entrypoint", "user", "working_dir", "shm_size", "init")
READY_TIMEOUT = 180.0

PG_COUNT = (
    "SELECT table_schema || '.' || table_name, (xpath('/row/c/text()', query_to_xml("
    "format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name), false, true, "
    "'')))[1]::text FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND "
    "table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
)


@dataclass
class Loaded:
    """What the throwaway engine held once the dumps were loaded."""

    image: str
    seconds: float
    databases: dict[str, dict[str, int]] = field(default_factory=dict)  # db -> table -> rows

    def summary(self) -> str:
        parts = []
        for name, tables in self.databases.items():
            parts.append(f"{name}: {len(tables)} tables, {sum(tables.values()):,} rows")
        return "; ".join(parts) or "no databases"


def throwaway_compose(service: Service, env: dict[str, str]) -> dict[str, Any]:
    """The one-service compose document for a throwaway copy of `service`."""
    raw = service.raw
    spec: dict[str, Any] = {k: raw[k] for k in KEPT if k in raw}
    spec["environment"] = sorted(env)
    spec["network_mode"] = "none"
    volumes, tmpfs = [], []
    for mount in service.mounts:
        if mount.read_only and mount.bind:
            volumes.append(f"{mount.source}:{mount.target}:ro")
        else:
            tmpfs.append(mount.target)
    given = raw.get("tmpfs") or []
    tmpfs += [given] if isinstance(given, str) else list(given)
    if volumes:
        spec["volumes"] = volumes
    if tmpfs:
        spec["tmpfs"] = tmpfs
    return {"version": "2.4", "services": {service.name: spec}}


def load_in_throwaway(
    service: Service,
    env: dict[str, str],
    db: Database,
    files: list[tuple[str, str | None, Path]],
) -> Loaded:
    """Start a throwaway copy of `service`, load `files` into it, count what it holds."""
    started = time.monotonic()
    folder = Path(tempfile.mkdtemp(prefix="itsup-drill-db-"))
    name = f"itsup-drill-{secrets.token_hex(4)}"
    compose = [*compose_command(), "-p", name, "-f", str(folder / "docker-compose.yml")]
    doc = throwaway_compose(service, env)
    fd = os.open(folder / "docker-compose.yml", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f)
    client = Client(compose=compose, cwd=folder, service=service.name, env=dict(env))
    engine = ENGINES[db.adapter](db, client, folder, service.name)
    try:
        up = client.call_compose(["up", "-d"])
        if up.returncode != 0:
            why = client.error_line(up.stderr, b"", up.returncode)
            raise DumpError(f"cannot start a throwaway {service.image}: {why}")
        _wait_ready(engine)
        engine.load(files)
        counted = _count(engine)
    finally:
        client.call_compose(["down", "-v", "--remove-orphans", "-t", "5"])
        shutil.rmtree(folder, ignore_errors=True)
    return Loaded(service.image, time.monotonic() - started, counted)


def _wait_ready(engine: Any) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        try:
            engine.version()
            return
        except DumpError as exc:
            last = exc.message
        time.sleep(0.5)
    raise DumpError(f"the throwaway engine did not answer within {READY_TIMEOUT:.0f} s: {last}")


def _count(engine: Any) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    if isinstance(engine, Postgres):
        for name in engine.databases():
            if name in ("postgres",) and not _has_tables(engine, name):
                continue
            rows = engine.sql(PG_COUNT, name)
            out[name] = _pairs(rows, "|")
    elif isinstance(engine, MySQL):
        for name in engine.databases():
            tables = engine.sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = "
                f"'{_quote(name)}' AND table_type = 'BASE TABLE' ORDER BY 1"
            ).split()
            if not tables:
                out[name] = {}
                continue
            query = " UNION ALL ".join(
                f"SELECT '{_quote(t)}', COUNT(*) FROM `{name.replace('`', '``')}`."
                f"`{t.replace('`', '``')}`"
                for t in tables
            )
            out[name] = _pairs(engine.sql(query), "\t")
    return out


def _has_tables(engine: Postgres, name: str) -> bool:
    return bool(_pairs(engine.sql(PG_COUNT, name), "|"))


def _pairs(text: str, sep: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(sep)
        if key:
            out[key] = int(value or 0)
    return out


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")
