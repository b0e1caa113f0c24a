"""Database dumps: what a PostgreSQL dump adds to `itsup backup` and `itsup restore`.

Usage (from the project root; a PostgreSQL server reachable with the host's clients):

    .venv/bin/python bench/dumps.py                    # ~500 MB database, 1 GiB tree, 3 rounds
    .venv/bin/python bench/dumps.py --db-size-mb 100 --size-mb 200 --repeat 1   # quick
    .venv/bin/python bench/dumps.py --pg-host 127.0.0.1 --pg-port 5432 --pg-user postgres

It builds a database of its own (`--db`, default itsup_bench; generated with SQL, three
tables of mixed integers, timestamps and text) and bench.py's synthetic host tree with a
local target, then measures, side by side in each round:

    A   pg_dump -Fc -f FILE DB               the dump alone, default compression
    A0  pg_dump -Fc -Z0 -f FILE DB           the dump itsup runs, alone (for reference)
    B   itsup backup                         the file tree alone (no backup.yml)
    C   itsup backup                         the tree and the database together
                                             (projects/db/backup.yml, the direct mode)
    D   pg_restore --exit-on-error -d NEW FILE   A's file into a fresh database
    D2  the same with --jobs 2               (for reference: what itsup runs on 2 cores)
    E   itsup restore db --databases-only --yes  C's dump loaded from the backup

Targets: C <= 1.15 x max(A, B); E <= 1.2 x D; itsup's peak RSS in C < 300 MiB.
Medians of --repeat rounds; the order of A, A0, B and C rotates every round, D and E
follow. Before every timed run: PostgreSQL CHECKPOINT, sync, a pause, and the load
average noted. After each restore the database is checked against the source (rows and a
hash of every row per table) and vacuumed (FREEZE), so each round starts alike.

Every command runs under bench.py's small wait4 launcher (wall time, peak RSS, CPU time of
the command and its children); the whole machine's CPU time during the run comes from
/proc/stat (it includes the PostgreSQL server, and anything else running). During C a
sampler notes when the dump's spool file stops growing and when itsup starts reading it
into the archive (the profile printed with the results).

Results go to the `dumps` section of bench/RESULTS.md; the rest of the file is kept. The
database and the work folder are removed at the end (unless --keep-db / --workdir).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import synth  # noqa: E402

from bench import (  # noqa: E402 - the same launcher, machine description, quiet wait and RESULTS.md sections as bench.py
    RESULTS_FILE,
    TICK,
    Run,
    command_line,
    cpu_jiffies,
    machine_description,
    now,
    pass_fail,
    run_measured,
    spread,
    wait_quiet,
    write_section,
)

MIB = 1 << 20
SECTION = "dumps"
PROJECT = "db"  # the synthetic tree's project the database is listed under
SPOOL = ".itsup/dumps"  # where itsup backup writes the dumps before appending them
TABLES = ("customers", "orders", "events")
STAMP = "itsup bench database"
RSS_TARGET_MIB = 300
C_LIMIT = 1.15
E_LIMIT = 1.2
BACKUPS = ("A", "A0", "B", "C")
LABELS = {
    "A": "A: pg_dump -Fc (alone)",
    "A0": "A0: pg_dump -Fc -Z0 (alone, what itsup runs)",
    "B": "B: itsup backup, files only",
    "C": "C: itsup backup, files + database",
    "D": "D: pg_restore into a fresh database (A's file)",
    "D2": "D2: pg_restore --jobs 2 (the same, for reference)",
    "E": "E: itsup restore --databases-only",
}

# One unit of the generated database: about 51.6 MB of tables and indexes (PostgreSQL 15).
UNIT_ROWS = {"customers": 20_000, "orders": 150_000, "events": 100_000}
UNIT_BYTES = 51.6e6
EMPTY_DB_BYTES = 7.7e6

SCHEMA_SQL = """\
CREATE TABLE customers (id integer PRIMARY KEY, name text NOT NULL, email text NOT NULL,
  city text, created_at timestamptz NOT NULL, score integer);
INSERT INTO customers SELECT g, 'customer ' || g, 'user' || g || '@example.org',
  (ARRAY['Amsterdam','Berlin','Lisbon','Oslo','Prague','Vienna','Dublin','Madrid'])[1 + g % 8],
  timestamptz '2024-01-01' + g * interval '37 seconds', (g * 7919) % 1000
FROM generate_series(1, {customers}) g;
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id integer NOT NULL, status text NOT NULL,
  amount_cents integer NOT NULL, reference text NOT NULL, note text,
  created_at timestamptz NOT NULL);
INSERT INTO orders SELECT g, 1 + (g * 31) % {customers},
  (ARRAY['new','paid','shipped','delivered','returned'])[1 + g % 5],
  (g::bigint * 104729) % 100000, md5(g::text),
  CASE WHEN g % 3 = 0 THEN 'please leave at the door, ring twice; order ' || g END,
  timestamptz '2024-01-01' + g * interval '11 seconds'
FROM generate_series(1, {orders}) g;
CREATE TABLE events (id bigint PRIMARY KEY, order_id bigint NOT NULL, kind text NOT NULL,
  at timestamptz NOT NULL, payload text NOT NULL);
INSERT INTO events SELECT g, 1 + (g * 13) % {orders},
  (ARRAY['created','viewed','updated','paid','mailed','clicked'])[1 + g % 6],
  timestamptz '2024-01-01' + g * interval '3 seconds',
  '{{"session":"' || md5((g * 2)::text) || '","agent":"Mozilla/5.0 (X11; Linux x86_64) rv:'
  || (g % 120) || '.0","path":"/shop/item/' || (g % 5000) || '","ms":' || (g * 7) % 997
  || ',"token":"' || md5((g * 3)::text) || substr(md5((g * 5)::text), 1, g % 32) || '"}}'
FROM generate_series(1, {events}) g;
"""


# --- PostgreSQL -----------------------------------------------------------------------------


@dataclass
class Postgres:
    host: str
    port: int
    user: str

    @property
    def conn(self) -> list[str]:
        return ["-h", self.host, "-p", str(self.port), "-U", self.user]

    def sql(self, query: str, database: str = "postgres") -> str:
        done = subprocess.run(
            ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", *self.conn,
             "-d", database, "-c", query],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"psql failed: {query[:80]}: {done.stderr.strip()[-300:]}")
        return done.stdout.strip()

    def script(self, text: str, database: str) -> None:
        done = subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *self.conn, "-d", database, "-f", "-"],
            input=text, capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"psql script failed: {done.stderr.strip()[-300:]}")

    def exists(self, database: str) -> bool:
        return self.sql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'") == "1"

    def comment(self, database: str) -> str:
        return self.sql(
            "SELECT coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database "
            f"WHERE datname = '{database}'"
        )

    def drop(self, database: str) -> None:
        self.sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    def size(self, database: str) -> int:
        return int(self.sql(f"SELECT pg_database_size('{database}')"))

    def version(self) -> str:
        return self.sql("SHOW server_version")

    def checkpoint(self) -> None:
        self.sql("CHECKPOINT")

    def settle(self, database: str) -> None:
        """The same state before every round: frozen, analysed, checkpointed."""
        self.sql("VACUUM (FREEZE, ANALYZE)", database)
        self.checkpoint()

    def fingerprint(self, database: str) -> dict[str, str]:
        """Per table: rows and the sum of a hash of every row."""
        return {
            table: self.sql(
                f"SELECT count(*) || ' rows, ' || coalesce(sum(hashtext(t::text)::bigint), 0) "
                f"FROM {table} t",
                database,
            )
            for table in TABLES
        }


def own_database(pg: Postgres, name: str) -> bool:
    """Whether `name` is a database this benchmark made (its comment says so)."""
    return pg.exists(name) and pg.comment(name).startswith(STAMP)


def prepare_database(pg: Postgres, name: str, size_mb: int) -> None:
    """Build the database, or reuse one this benchmark built with the same size."""
    stamp = f"{STAMP}, {size_mb} MB, v1"
    if pg.exists(name):
        if pg.comment(name) == stamp:
            print(f"reusing database {name}", flush=True)
            return
        if not own_database(pg, name):
            raise SystemExit(
                f"database {name} exists and was not made by this benchmark: pick --db"
            )
        pg.drop(name)
    scale = max(0.01, (size_mb * 1e6 - EMPTY_DB_BYTES) / UNIT_BYTES)
    rows = {table: max(100, round(n * scale)) for table, n in UNIT_ROWS.items()}
    print(f"building database {name} (~{size_mb} MB: {rows}) ...", flush=True)
    started = time.monotonic()
    pg.sql(f'CREATE DATABASE "{name}"')
    pg.sql(f"COMMENT ON DATABASE \"{name}\" IS '{stamp}'")
    pg.script(SCHEMA_SQL.format(**rows), name)
    pg.settle(name)
    print(f"  {pg.size(name) / 1e6:.0f} MB in {time.monotonic() - started:.0f} s", flush=True)


# --- the host tree --------------------------------------------------------------------------


def itsup_config(target: Path) -> str:
    return f"backup:\n  local:\n    path: {target}\n  include_volumes: true\n  compression: true\n"


def backup_yml(pg: Postgres, database: str) -> str:
    return (
        "adapter: postgres\n"
        f"host: {pg.host}\n"
        f"port: {pg.port}\n"
        f"user: {pg.user}\n"
        f"names: [{database}]\n"
    )


def prepare_tree(root: Path, target: Path, size_mb: int, small_files: int, seed: int) -> str:
    """bench.py's synthetic tree (reused when built with the same parameters); its description."""
    stamp = root.parent / f"{root.name}.json"
    wanted = f"{size_mb} {small_files} {seed}"
    config = itsup_config(target)
    if stamp.exists() and root.exists():
        saved = stamp.read_text().split("\n", 1)
        if saved[0] == wanted:
            (root / "projects" / "itsup.yml").write_text(config)
            print(f"reusing tree at {root}", flush=True)
            return synth.TreeStats.from_json(saved[1]).describe()
    shutil.rmtree(root, ignore_errors=True)
    print(f"building a {size_mb} MiB tree with {small_files} small files ...", flush=True)
    stats = synth.build_tree(root, size_mb, small_files, seed, config)
    stamp.write_text(wanted + "\n" + stats.to_json())
    return stats.describe()


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Measure:
    run: Run
    load: float  # 1-minute load average just before the run
    busy: float = 0.0  # cores busy on the machine just before the run (other work)
    machine_cpu: float = 0.0  # CPU seconds of the whole machine during the run
    server_cpu: float = 0.0  # CPU seconds of the PostgreSQL server during the run
    output_bytes: int = 0
    retries: int = 0  # runs thrown away: other work took CPU during them
    profile: dict[str, float] = field(default_factory=dict)

    @property
    def other_cpu(self) -> float:
        """CPU seconds neither the command nor the server used: other work, the kernel."""
        return max(0.0, self.machine_cpu - self.run.cpu_seconds - self.server_cpu)


def proc_cpu(pid: int, children: bool = False) -> int:
    """utime + stime (+ cutime + cstime) of a process, in jiffies."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11 : 15 if children else 13])


class Server:
    """The PostgreSQL server's CPU time: the postmaster, its children, and those it reaped."""

    def __init__(self, pg: Postgres) -> None:
        self.pid: int | None = None
        datadir = pg.sql("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.pid = int(Path(datadir, "postmaster.pid").read_text().split()[0])
        if self.pid is None:  # not readable: the process running with that data folder
            for entry in os.scandir("/proc"):
                with contextlib.suppress(OSError):
                    argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                    if entry.name.isdigit() and datadir.encode() in argv and b"-D" in argv:
                        self.pid = int(entry.name)
                        break

    def jiffies(self) -> int:
        if self.pid is None:
            return 0
        total = proc_cpu(self.pid, children=True)
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
                    if int(stat[1]) == self.pid:
                        total += sum(int(x) for x in stat[11:13])
        return total


def measured(
    e: Env,
    argv: list[str],
    cwd: Path,
    log: Path,
    prepare: Callable[[], None] = lambda: None,
    sampler: Sampler | None = None,
) -> Measure:
    """`prepare`, wait for a quiet machine, then run `argv` under bench.py's launcher; all
    again (up to --retries times) while other work took more than --max-other cores."""
    retries = 0
    while True:
        prepare()
        quiet = e.before()
        load = os.getloadavg()[0]
        busy, server = cpu_jiffies()[0], e.server.jiffies()
        with sampler.started() if sampler else contextlib.nullcontext():
            run = run_measured(argv, cwd, e.env, log)
        machine = (cpu_jiffies()[0] - busy) / TICK
        time.sleep(0.2)  # the server's backend for the command exits, and is counted
        m = Measure(run, load, quiet, machine, (e.server.jiffies() - server) / TICK)
        m.retries = retries
        if sampler is not None:
            m.profile = sampler.profile(run.seconds)
        if not run.ok or retries >= e.args.retries:
            return m
        other = m.other_cpu / max(run.seconds, 0.01)
        if other <= e.args.max_other:
            return m
        retries += 1
        print(f"    {run.seconds:.2f} s, but other work took {other:.2f} cores: again", flush=True)


class Sampler:
    """While itsup runs (every 50 ms): the whole machine's busy CPU, and for a backup
    when the dump's spool file stops growing and when itsup opens it to append it to the
    archive; for a restore, when the first pg_restore starts (the load)."""

    def __init__(self, root: Path, command: str) -> None:
        self.root, self.command = root, command
        self.spool = root / SPOOL

    @contextlib.contextmanager
    def started(self) -> Iterator[None]:
        """Sample while the command runs (a fresh record each time)."""
        self.stop = threading.Event()
        self.start = time.monotonic()
        self.last_growth = 0.0
        self.read_start: float | None = None
        self.load_start: float | None = None
        self.samples: list[tuple[float, int]] = []  # (seconds, busy jiffies)
        thread = threading.Thread(target=self._loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self.stop.set()
            thread.join()

    def _spool_bytes(self) -> int:
        total = 0
        for folder, _dirs, files in os.walk(self.spool):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(folder, name)).st_size
        return total

    def _itsup_pids(self) -> list[int]:
        """The itsup process (and the launcher above it, which holds no spool file)."""
        needle = f"--root\0{self.root}\0{self.command}".encode()
        return [pid for pid, cmdline in processes() if needle in cmdline]

    def _reading_spool(self, pid: int) -> bool:
        """Whether the process has a spool file open read-only (the append to the archive)."""
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    if not os.readlink(fd.path).startswith(str(self.spool) + "/"):
                        continue
                    if not stat.S_ISREG(os.stat(fd.path).st_mode):
                        continue
                    info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
                    flags = int(info.split("flags:", 1)[1].split()[0], 8)
                    if flags & 0o3 == os.O_RDONLY:
                        return True
        return False

    def _loading(self, pids: list[int]) -> bool:
        """Whether a pg_restore runs below itsup."""
        for pid, cmdline in processes():
            name = cmdline.split(b"\0", 1)[0].rsplit(b"/", 1)[-1]
            if name == b"pg_restore" and parent(pid) in pids:
                return True
        return False

    def _loop(self) -> None:
        size, pids = 0, []
        while not self.stop.wait(0.05):
            t = time.monotonic() - self.start
            self.samples.append((t, cpu_jiffies()[0]))
            if len(pids) < 2:
                pids = self._itsup_pids()
            if self.command == "backup":
                now_size = self._spool_bytes()
                if now_size > size:
                    size, self.last_growth = now_size, t
                if self.read_start is None and any(self._reading_spool(p) for p in pids):
                    self.read_start = t
            elif self.load_start is None and self._loading(pids):
                self.load_start = t

    def profile(self, total: float) -> dict[str, float]:
        """Seconds from the start of the points seen; cores busy before and after them."""
        out = {"total": total}
        point = self.read_start if self.command == "backup" else self.load_start
        if self.command == "backup":
            out["dump_done"] = self.last_growth
        if point is not None:
            out["point"] = point
            out["cores_before"] = self._cores(0.0, point)
            out["cores_after"] = self._cores(point, total)
        return out

    def _cores(self, t0: float, t1: float) -> float:
        """Cores busy on average between t0 and t1 (whole machine)."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return 0.0
        return (inside[-1][1] - inside[0][1]) / TICK / (inside[-1][0] - inside[0][0])


def processes() -> Iterator[tuple[int, bytes]]:
    """(pid, command line) of every process."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                yield int(entry.name), Path(entry.path, "cmdline").read_bytes()


def parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


# --- the scenarios --------------------------------------------------------------------------


@dataclass
class Env:
    args: argparse.Namespace
    pg: Postgres
    root: Path
    target: Path
    dumps: Path
    logs: Path
    env: dict[str, str]
    itsup: list[str]
    source: dict[str, str]  # the database's fingerprint
    server: Server

    @property
    def db(self) -> str:
        return str(self.args.db)

    @property
    def fresh(self) -> str:
        return f"{self.args.db}_restored"

    @property
    def backup_yml(self) -> Path:
        return self.root / "projects" / PROJECT / "backup.yml"

    def before(self) -> float:
        """CHECKPOINT, sync, then wait for a quiet machine; the cores busy just before."""
        self.pg.checkpoint()
        os.sync()
        return wait_quiet(self.args.pause, self.args.quiet_cores, self.args.quiet_wait)

    def clear_target(self) -> None:
        shutil.rmtree(self.target, ignore_errors=True)
        self.target.mkdir(parents=True)

    def target_bytes(self) -> int:
        return sum(
            p.stat().st_size
            for p in self.target.rglob("*")
            if p.is_file() and not p.name.startswith("latest")
        )


def pg_dump(e: Env, rep: int, name: str, extra: list[str]) -> Measure:
    out = e.dumps / f"{e.db}{'.z0' if extra else ''}.pgdump"
    m = measured(
        e, ["pg_dump", *e.pg.conn, "-Fc", *extra, "-f", str(out), e.db],
        e.dumps, e.logs / f"{name}-{rep}.log", lambda: out.unlink(missing_ok=True),
    )  # fmt: skip
    if m.run.ok:
        m.output_bytes = out.stat().st_size
    return m


def itsup_backup(e: Env, rep: int, name: str, with_db: bool) -> Measure:
    def prepare() -> None:
        if with_db:
            e.backup_yml.write_text(backup_yml(e.pg, e.db))
        else:
            e.backup_yml.unlink(missing_ok=True)
        e.clear_target()
        # itsup backup leaves its dump spool behind (see the results); each run starts
        # without it, as the next backup would delete it first.
        shutil.rmtree(e.root / SPOOL, ignore_errors=True)

    argv = [*e.itsup, "--root", str(e.root), "backup"]
    sampler = Sampler(e.root, "backup") if with_db else None
    m = measured(e, argv, e.root, e.logs / f"{name}-{rep}.log", prepare, sampler)
    if m.run.ok:
        m.output_bytes = e.target_bytes()
        if with_db:
            m.profile.update(dump_record(e))
    return m


def dump_record(e: Env) -> dict[str, float]:
    """The dump's own seconds and size, from the generation's manifest."""
    for path in e.target.rglob("*manifest*"):
        with contextlib.suppress(ValueError, OSError):
            manifest = json.loads(path.read_text())
            dumps = [d for d in manifest.get("dumps", []) if d.get("database") == e.db]
            if dumps and all(d["result"] == "ok" for d in manifest["dumps"]):
                return {"dump_seconds": float(dumps[0]["seconds"]), "dump_bytes": dumps[0]["size"]}
    raise SystemExit("C: the generation's manifest lists no successful dump of the database")


def check(e: Env, database: str, m: Measure, what: str) -> None:
    if not m.run.ok:
        return
    found = e.pg.fingerprint(database)
    if found != e.source:
        m.run.ok = False
        m.run.note = f"{what}: MISMATCH {found} != {e.source}"
        print(f"\n!!! {m.run.note}\n", flush=True)


def pg_restore(e: Env, rep: int, jobs: int = 1) -> Measure:
    source = e.dumps / f"{e.db}.pgdump"
    parallel = [f"--jobs={jobs}"] if jobs > 1 else []

    def prepare() -> None:
        e.pg.drop(e.fresh)
        e.pg.sql(f'CREATE DATABASE "{e.fresh}"')
        e.pg.sql(f"COMMENT ON DATABASE \"{e.fresh}\" IS '{STAMP}, restore target'")

    try:
        m = measured(
            e, ["pg_restore", *e.pg.conn, "--exit-on-error", *parallel, "-d", e.fresh, str(source)],
            e.dumps, e.logs / f"pg_restore-{rep}-j{jobs}.log", prepare,
        )  # fmt: skip
        check(e, e.fresh, m, "D" if jobs == 1 else f"D{jobs}")
    finally:
        e.pg.drop(e.fresh)
    return m


def itsup_restore(e: Env, rep: int) -> Measure:
    def prepare() -> None:
        e.backup_yml.write_text(backup_yml(e.pg, e.db))
        shutil.rmtree(e.root / SPOOL, ignore_errors=True)

    argv = [*e.itsup, "--root", str(e.root), "restore", PROJECT, "--databases-only", "--yes"]
    log = e.logs / f"itsup-restore-{rep}.log"
    m = measured(e, argv, e.root, log, prepare, Sampler(e.root, "restore"))
    check(e, e.db, m, "E")
    e.pg.settle(e.db)
    return m


def run_round(e: Env, rep: int) -> dict[str, Measure]:
    shift = (rep - 1) % len(BACKUPS)
    order = BACKUPS[shift:] + BACKUPS[:shift]
    out: dict[str, Measure] = {}
    for key in order:
        print(f"[{rep}] {LABELS[key]} ...", flush=True)
        if key == "A":
            out[key] = pg_dump(e, rep, "pg_dump", [])
        elif key == "A0":
            out[key] = pg_dump(e, rep, "pg_dump-z0", ["-Z0"])
        else:
            out[key] = itsup_backup(e, rep, f"itsup-backup-{key}", with_db=key == "C")
        report(out[key])
    if out["C"].run.ok:  # E restores C's generation, the only one on the target
        print(f"[{rep}] {LABELS['D']} ...", flush=True)
        out["D"] = pg_restore(e, rep)
        report(out["D"])
        print(f"[{rep}] {LABELS['D2']} ...", flush=True)
        out["D2"] = pg_restore(e, rep, jobs=2)
        report(out["D2"])
        print(f"[{rep}] {LABELS['E']} ...", flush=True)
        out["E"] = itsup_restore(e, rep)
        report(out["E"])
    return out


def report(m: Measure) -> None:
    r = m.run
    if not r.ok:
        print(f"    FAILED: {r.note}", flush=True)
        return
    extra = ""
    p = m.profile
    if "dump_done" in p:
        extra = f"; dump written at {p['dump_done']:.1f} s"
    if "point" in p:
        extra += f", {'append' if 'dump_done' in p else 'load'} from {p['point']:.1f} s"
    print(
        f"    {r.seconds:.2f} s (load {m.load:.2f}, {m.busy:.2f} cores busy before); CPU s: "
        f"command {r.cpu_seconds:.1f}, server {m.server_cpu:.1f}, other {m.other_cpu:.1f}; "
        f"{r.peak_rss_kib / 1024:.0f} MiB RSS{extra}",
        flush=True,
    )


# --- results --------------------------------------------------------------------------------


def med(ms: list[Measure], attr: str) -> float:
    def value(m: Measure) -> float:
        if hasattr(m, attr):
            return float(getattr(m, attr))
        return float(getattr(m.run, attr))

    return statistics.median(value(m) for m in ms)


def good(rounds: list[dict[str, Measure]], key: str) -> list[Measure]:
    return [r[key] for r in rounds if key in r and r[key].run.ok]


def failures(rounds: list[dict[str, Measure]], key: str) -> list[str]:
    return [r[key].run.note for r in rounds if key in r and not r[key].run.ok]


def table(rounds: list[dict[str, Measure]]) -> list[str]:
    lines = [
        "| Scenario | Seconds (median) | Runs (s) | CPU s: command | server | other "
        "| Output MiB | Peak RSS MiB | Load before (1 min) | Cores busy before | Runs redone |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for key in ("A", "A0", "B", "C", "D", "D2", "E"):
        ms = good(rounds, key)
        bad = failures(rounds, key)
        if not ms:
            lines.append(
                f"| {LABELS[key]} | - | - | - | - | - | - | - | FAILED: {bad[:1]} | - | - |"
            )
            continue
        runs = ", ".join(f"{m.run.seconds:.2f}" for m in ms) + (
            f", {len(bad)} failed" if bad else ""
        )
        loads, busy = [m.load for m in ms], [m.busy for m in ms]
        output = med(ms, "output_bytes")
        lines.append(
            f"| {LABELS[key]} | {med(ms, 'seconds'):.2f} | {runs} | {med(ms, 'cpu_seconds'):.1f} "
            f"| {med(ms, 'server_cpu'):.1f} | {med(ms, 'other_cpu'):.1f} "
            f"| {f'{output / MIB:.1f}' if output else '-'} "
            f"| {med(ms, 'peak_rss_kib') / 1024:.0f} | {min(loads):.2f} - {max(loads):.2f} "
            f"| {min(busy):.2f} - {max(busy):.2f} | {sum(m.retries for m in ms)} |"
        )
    return lines


def ratio_range(rounds: list[dict[str, Measure]], f: object) -> str:
    values = []
    for r in rounds:
        with contextlib.suppress(KeyError, ZeroDivisionError):
            if all(m.run.ok for m in r.values()):
                values.append(f(r))  # type: ignore[operator]
    return spread(values)


def targets(rounds: list[dict[str, Measure]]) -> list[str]:
    out = []
    a, a0, b, c, d, e = (good(rounds, k) for k in ("A", "A0", "B", "C", "D", "E"))
    if a and b and c:
        base = max(med(a, "seconds"), med(b, "seconds"))
        value = med(c, "seconds") / base
        spread = ratio_range(
            rounds, lambda r: r["C"].run.seconds / max(r["A"].run.seconds, r["B"].run.seconds)
        )
        out.append(
            f"- C vs max(A, B): {med(c, 'seconds'):.2f} / {base:.2f} s = {value:.2f}x "
            f"(round by round {spread}; target <= {C_LIMIT}x) "
            f"**{pass_fail(value <= C_LIMIT)}**"
        )
    else:
        out.append("- C vs max(A, B): N/A (a scenario failed)")
    if a0 and b and c:
        base0 = max(med(a0, "seconds"), med(b, "seconds"))
        spread = ratio_range(
            rounds, lambda r: r["C"].run.seconds / max(r["A0"].run.seconds, r["B"].run.seconds)
        )
        out.append(
            f"- For reference, C vs max(A0, B), A0 being the uncompressed dump itsup runs: "
            f"{med(c, 'seconds') / base0:.2f}x (round by round {spread}); C vs A0 + B, the "
            f"two one after the other: {med(c, 'seconds') / (med(a0, 'seconds') + med(b, 'seconds')):.2f}x"
        )
    if d and e:
        value = med(e, "seconds") / med(d, "seconds")
        spread = ratio_range(rounds, lambda r: r["E"].run.seconds / r["D"].run.seconds)
        out.append(
            f"- E vs D: {med(e, 'seconds'):.2f} / {med(d, 'seconds'):.2f} s = {value:.2f}x "
            f"(round by round {spread}; target <= {E_LIMIT}x) "
            f"**{pass_fail(value <= E_LIMIT)}**"
        )
    else:
        out.append("- E vs D: N/A (a scenario failed)")
    d2 = good(rounds, "D2")
    if d2 and e:
        spread = ratio_range(rounds, lambda r: r["E"].run.seconds / r["D2"].run.seconds)
        out.append(
            f"- For reference, E vs D2 (pg_restore --jobs 2, as itsup loads with the host's "
            f"client on 2 cores): {med(e, 'seconds') / med(d2, 'seconds'):.2f}x "
            f"(round by round {spread})"
        )
    if c:
        peak = max(m.run.peak_rss_kib for m in c) / 1024
        out.append(
            f"- itsup peak RSS in C: {peak:.0f} MiB, the largest of {len(c)} run(s) "
            f"(target < {RSS_TARGET_MIB} MiB) **{pass_fail(peak < RSS_TARGET_MIB)}**"
        )
    return out


def profile_lines(rounds: list[dict[str, Measure]]) -> list[str]:
    lines = [
        "C, the backup with the database:",
        "",
        "| Round | C s | dump (manifest) s | dump written at s | append from s | tail s "
        "| cores busy before / from the append |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for i, r in enumerate(rounds, 1):
        m = r.get("C")
        if m is None or not m.run.ok or "point" not in m.profile:
            continue
        p = m.profile
        lines.append(
            f"| {i} | {m.run.seconds:.2f} | {p.get('dump_seconds', 0):.2f} | {p['dump_done']:.2f} "
            f"| {p['point']:.2f} | {m.run.seconds - p['point']:.2f} "
            f"| {p['cores_before']:.2f} / {p['cores_after']:.2f} |"
        )
    lines += [
        "",
        "E, the restore of the database:",
        "",
        "| Round | E s | pg_restore from s (staging) | load s | D s "
        "| cores busy staging / loading | cores busy in D |",
        "|---:|---:|---:|---:|---:|---|---:|",
    ]
    for i, r in enumerate(rounds, 1):
        m, d = r.get("E"), r.get("D")
        if m is None or not m.run.ok or "point" not in m.profile:
            continue
        p = m.profile
        d_cores = f"{d.machine_cpu / d.run.seconds:.2f}" if d and d.run.ok else "-"
        lines.append(
            f"| {i} | {m.run.seconds:.2f} | {p['point']:.2f} | {m.run.seconds - p['point']:.2f} "
            f"| {d.run.seconds if d else 0:.2f} | {p['cores_before']:.2f} / "
            f"{p['cores_after']:.2f} | {d_cores} |"
        )
    return lines


def render(
    e: Env, rounds: list[dict[str, Measure]], tree: str, db_bytes: int, dump_sizes: str
) -> str:
    loads = [m.load for r in rounds for m in r.values()]
    lines = [
        f"## Database dumps: {now()}",
        "",
        f"- Machine: {machine_description()}; PostgreSQL {e.pg.version()} on the same machine "
        "and disk as the tree, the spool and the target (TCP on loopback, trust auth); load "
        f"average (1 min) {min(loads):.2f} - {max(loads):.2f} before the runs",
        f"- Database: {db_bytes / 1e6:.0f} MB (pg_database_size): tables "
        f"{', '.join(TABLES)} of integers, timestamps and text (md5 strings, JSON-like payloads), "
        f"a primary key each; {dump_sizes}",
        f"- Tree: {tree}; local target on the same disk; itsup.yml `include_volumes: true`, "
        "`compression: true`",
        f"- C lists the database in `projects/{PROJECT}/backup.yml` (`adapter: postgres`, "
        "host/port/user: the host's pg_dump, no container); E loads it back with "
        f"`itsup restore {PROJECT} --databases-only --yes` (DROP DATABASE ... WITH (FORCE), "
        "reading only the archive's dump section, then pg_restore --create --jobs with the spool "
        "file); D is `pg_restore --exit-on-error` of A's file into a new empty database, D2 the "
        "same with `--jobs 2`. Every restore is checked (rows and a hash of every row per table).",
        f"- Median of {len(rounds)} round(s); the order of A, A0, B, C rotates each round, D, D2, E "
        "follow; before each run: CHECKPOINT, sync, a pause. Warm caches (the tree and the "
        "database fit in memory). CPU seconds: the command's and its children's (os.wait4: "
        "pg_dump and pg_restore, or itsup with the clients it runs), the PostgreSQL server's "
        "(its processes, /proc), and the rest of the machine's (/proc/stat: the kernel, other "
        "work); a run during which the rest took more than "
        f"{e.args.max_other:g} cores was thrown away and run again (up to {e.args.retries} "
        "times). Peak RSS: ru_maxrss.",
        f"- Command: `{command_line('bench/dumps.py', 'DIR')}`",
        "",
        *table(rounds),
        "",
        "### Targets",
        "",
        *targets(rounds),
        "",
        "### Where the time goes",
        "",
        "Sampled every 50 ms while itsup runs. C: when the dump's spool file stopped growing, "
        "when itsup opened it to append it to the archive (once the tree and the dump are both "
        "done), the tail from then to the end (the append, index, manifest, fsync). E: when "
        "pg_restore started (before it: start-up, planning, reading the archive's dump section, "
        "checking the dump and writing it to the spool, the globals, DROP DATABASE). Cores busy: the whole machine, before and from that point.",
        "",
        *profile_lines(rounds),
    ]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db-size-mb", type=int, default=500, help="database size, MB")
    parser.add_argument("--size-mb", type=int, default=1024, help="tree size in MiB")
    parser.add_argument("--small-files", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (median)")
    parser.add_argument("--db", default="itsup_bench", help="the benchmark's own database")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--keep-db", action="store_true", help="keep the database (reused)")
    parser.add_argument("--workdir", type=Path, help="work folder (kept, tree reused)")
    parser.add_argument("--pause", type=float, default=2.0, help="quiet seconds before a run")
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="before a run, wait until fewer cores than this are busy over a pause",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=180.0, help="the longest such wait, in seconds"
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.3,
        help="run again when CPU used by neither the command nor the server, per second of "
        "the run, exceeds this (other work on a shared machine)",
    )
    parser.add_argument("--retries", type=int, default=3, help="the most runs thrown away")
    parser.add_argument(
        "--itsup",
        type=Path,
        default=Path(sys.executable).parent / "itsup",
        help="itsup command (default: next to this Python)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    if not args.db.isidentifier() or args.db in ("postgres", "template0", "template1"):
        parser.error(f"--db {args.db!r}: give a plain name for a database of the benchmark's own")
    return args


@contextlib.contextmanager
def workdir(args: argparse.Namespace) -> Iterator[Path]:
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        yield args.workdir.resolve()
        return
    path = Path(tempfile.mkdtemp(prefix="itsup-dumps-", dir="/var/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("pg_dump", "pg_restore", "psql"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: install the PostgreSQL client")
    if not args.itsup.exists():
        raise SystemExit(f"{args.itsup}: no itsup command (make install)")
    pg = Postgres(args.pg_host, args.pg_port, args.pg_user)
    for name in (args.db, f"{args.db}_restored"):
        if pg.exists(name) and not own_database(pg, name):
            raise SystemExit(
                f"database {name} exists and was not made by this benchmark: pick --db"
            )
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    rounds: list[dict[str, Measure]] = []
    with workdir(args) as work:
        try:
            prepare_database(pg, args.db, args.db_size_mb)
            root, target = work / "tree", work / "target"
            tree = prepare_tree(root, target, args.size_mb, args.small_files, args.seed)
            (work / "dumps").mkdir(exist_ok=True)
            (work / "logs").mkdir(exist_ok=True)
            print("fingerprinting the database ...", flush=True)
            e = Env(
                args, pg, root, target, work / "dumps", work / "logs", env,
                [str(args.itsup)], pg.fingerprint(args.db), Server(pg),
            )  # fmt: skip
            db_bytes = pg.size(args.db)
            for rep in range(1, args.repeat + 1):
                rounds.append(run_round(e, rep))
            a, a0, c = good(rounds, "A"), good(rounds, "A0"), good(rounds, "C")
            sizes = []
            if a:
                sizes.append(f"pg_dump -Fc {med(a, 'output_bytes') / MIB:.0f} MiB")
            if a0:
                sizes.append(f"-Fc -Z0 {med(a0, 'output_bytes') / MIB:.0f} MiB")
            if c and "dump_bytes" in c[0].profile:
                sizes.append(f"in C {c[0].profile['dump_bytes'] / MIB:.0f} MiB before gzip")
            body = render(e, rounds, tree, db_bytes, "dump sizes: " + ", ".join(sizes))
        finally:
            if own_database(pg, f"{args.db}_restored"):
                pg.drop(f"{args.db}_restored")
            if not args.keep_db and own_database(pg, args.db):
                pg.drop(args.db)
    print("\n" + body)
    if not args.no_write:
        write_section(SECTION, body)
        print(f"\nresults written to {RESULTS_FILE.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
