"""Is a dump file whole? The structure checks `verify` runs on each dump.

Each check reads the file a dump left (its SHA-256 is checked against the
file index separately) and returns None when it looks whole, else the
problem. They need no engine: a PostgreSQL custom-format dump is listed with
the host's `pg_restore --list` when there is one (else its header is
checked); text dumps must end with the trailer their tool writes last, so a
dump cut short is caught; an RDB must end with its EOF marker and checksum;
an SQLite copy must pass `PRAGMA integrity_check`.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

TAIL = 512


def _tail(path: Path) -> bytes:
    with path.open("rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - TAIL))
        return f.read()


def _head(path: Path, n: int = 64) -> bytes:
    with path.open("rb") as f:
        return f.read(n)


def check_dump(adapter: str, name: str, path: Path) -> tuple[str | None, str]:
    """(problem or None, what was checked) for the dump file `name` at `path`."""
    if path.stat().st_size == 0:
        return "the dump is empty", "size"
    if adapter == "postgres":
        return _postgres(name, path)
    if adapter in ("mariadb", "mysql"):
        if name.endswith(".users.sql"):
            ok = _tail(path).rstrip().endswith(b"FLUSH PRIVILEGES;")
            return (None if ok else "the users file is cut short"), "trailer"
        ok = b"-- Dump completed" in _tail(path)
        return (None if ok else "no `-- Dump completed` trailer: the dump was cut short"), "trailer"
    if adapter == "redis":
        tail = _tail(path)
        if _head(path, 5) != b"REDIS":
            return "not an RDB file (no REDIS header)", "header"
        ok = len(tail) >= 9 and tail[-9] == 0xFF
        return (
            None if ok else "the RDB has no end-of-file marker: cut short"
        ), "header, EOF marker"
    if adapter == "sqlite":
        return _sqlite(path)
    return None, "size"


def _postgres(name: str, path: Path) -> tuple[str | None, str]:
    if name.endswith(".globals.sql"):
        ok = b"dump complete" in _tail(path)
        return (None if ok else "no `dump complete` trailer: cut short"), "trailer"
    if _head(path, 5) != b"PGDMP":
        return "not a PostgreSQL custom-format dump (no PGDMP header)", "header"
    tool = shutil.which("pg_restore")
    if tool is None:
        return None, "header (pg_restore is not installed on this host)"
    done = subprocess.run(
        [tool, "--list", str(path)], capture_output=True, timeout=600, check=False
    )
    if done.returncode == 0:
        entries = sum(1 for line in done.stdout.splitlines() if line and not line.startswith(b";"))
        return None, f"pg_restore --list ({entries} entries)"
    error = done.stderr.decode("utf-8", "replace").strip().splitlines()
    line = error[-1] if error else f"exit status {done.returncode}"
    if "unsupported version" in line:
        return None, f"header (this host's pg_restore is older than the dump: {line})"
    return f"pg_restore --list fails: {line}", "pg_restore --list"


def _sqlite(path: Path) -> tuple[str | None, str]:
    if _head(path, 16) != b"SQLite format 3\x00":
        return "not an SQLite database", "header"
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            rows = db.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.Error as exc:
        return f"SQLite cannot read it: {exc}", "integrity_check"
    result = ", ".join(str(r[0]) for r in rows)
    return (None if result == "ok" else f"integrity_check: {result[:300]}"), "integrity_check"
