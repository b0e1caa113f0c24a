"""Many small files: itsup against tar + igzip and restic, backup and restore, side by side.

Usage (from the project root):

    make bench-smallfiles                                   # 200,000 files, 3 rounds
    .venv/bin/python bench/smallfiles.py --files 1000000    # the big tree (minutes to build)
    .venv/bin/python bench/smallfiles.py --files 5000 --repeat 1          # quick
    .venv/bin/python bench/smallfiles.py --workdir DIR --profile          # + cProfile of itsup

The tree is bench/million.py's (`upstream/bulk/dNNNN/fNNNN`, 1000 files per folder, 0 - 2
KiB each, half text-like and half random bytes, deterministic from --seed, plus proxy/
with acme.json); with --workdir it is built once and reused. In each round, side by side
and in an order that rotates every round, on the same disk as the tree:

    backup   itsup backup                      local target, compression on
             tar -cf - upstream proxy | igzip  level 1, 2 threads (isal.igzip_threaded, the
                                               library itsup already depends on: the igzip
                                               command line of the isal wheel has no thread
                                               option), written to the same target folder
             tar -cf - upstream proxy | pigz -1 -p 2   (for reference, when pigz is installed)
             restic backup upstream proxy      a first backup to a new local repository
    restore  itsup restore all --to EMPTY --yes
             tar -xzf ARCHIVE -C EMPTY         the archive of that round's itsup backup
             restic restore latest --target EMPTY   (without its local cache)

restic is not a project dependency: install it with `apt-get install -y restic` (pigz:
`apt-get install -y pigz`); without it its rows are skipped with a line saying so.

Every command runs under bench.py's small launcher (wall time, peak RSS and CPU time from
os.wait4; for a pipeline the peak is its largest process). Before each timed run: sync,
then wait (up to --quiet-wait seconds) until the 1-minute load average is under
--max-load, fewer than --quiet-cores cores were busy over a pause, and no other test run or
benchmark (--others, a pgrep -f pattern) is running. Every restore is checked: file
count, total bytes, 2000 random files byte for byte, acme.json's mode.

Targets (issue 13): backup and restore within 1.5x of tar's time, at least 1.5x faster
than restic's; itsup restore peak RSS under 150 MB. With --profile, after the rounds, one
itsup backup and one restore run under cProfile (`python -m cProfile -o`); the functions
with the most own time and cumulative time are reported in µs per file.

Results go to the `smallfiles` section of bench/RESULTS.md; the rest of the file is kept.
It is a benchmark, not a test: nothing here runs under `make test`. 200,000 files take
about 1 GiB of disk for the tree and as much for each restore, a million about 5 GiB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

import million  # noqa: E402 - the tree and its restore check

from bench import (  # noqa: E402 - the launcher, quiet wait and RESULTS.md sections
    RESULTS_FILE,
    TICK,
    Run,
    command_line,
    cpu_jiffies,
    find_restored_root,
    machine_description,
    now,
    pass_fail,
    run_measured,
    spread,
    wait_quiet,
    write_section,
)

SECTION = "smallfiles"
MIB = 1 << 20
RESTIC_PASSWORD = "itsup-bench-password"
OTHERS = r"pytest|bench/dumps\.py|bench/prune\.py|bench/bench\.py|bench/million\.py"
TIME_LIMIT = 1.5  # itsup within 1.5x of tar
RESTIC_LIMIT = 1.5  # itsup at least 1.5x faster than restic
RSS_LIMIT_MB = 150  # itsup restore peak RSS, decimal MB
BACKUP_RSS_LIMIT_MB = 100  # itsup backup peak RSS at a million files, decimal MB
RSS_SPREAD = 1.5  # restore peak RSS, largest / smallest tree

IGZIP = """\
import shutil, sys
from isal import igzip_threaded
with igzip_threaded.open(sys.argv[1], "wb", compresslevel=1, threads=2) as out:
    shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
"""

# `python -m cProfile -o OUT -m itsup ...`, with every thread profiled too: -m cProfile sees
# only the main thread, and itsup's restore writes files from worker threads (its main
# thread spends most of a restore waiting for them). Writes OUT.main and OUT.<thread name>.
PROFILER = """\
import cProfile, re, runpy, sys, threading
out, sys.argv = sys.argv[1], ["itsup", *sys.argv[2:]]
profiles, lock = [], threading.Lock()
inner = threading.Thread._bootstrap_inner
def bootstrap(self):
    profile = cProfile.Profile()
    with lock:
        profiles.append((self.name, profile))
    profile.enable()
    try:
        inner(self)
    finally:
        profile.disable()
threading.Thread._bootstrap_inner = bootstrap
main = cProfile.Profile()
code = 0
main.enable()
try:
    runpy.run_module("itsup", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
finally:
    main.disable()
    main.dump_stats(out + ".main")
    with lock:
        for i, (name, profile) in enumerate(profiles):
            group = re.sub(r"[-_]?\\d+$", "", name) or "thread"
            profile.dump_stats(f"{out}.{group}.{i}")
sys.exit(code)
"""

BACKUPS = ("itsup", "tar-igzip", "tar-pigz", "restic")
RESTORES = ("itsup", "itsup-inplace", "tar", "restic")
LABELS = {
    ("itsup", "backup"): "itsup backup",
    ("tar-igzip", "backup"): "tar -cf - \\| igzip -1, 2 threads",
    ("tar-pigz", "backup"): "tar -cf - \\| pigz -1 -p 2 (reference)",
    ("restic", "backup"): "restic backup (first)",
    ("itsup", "restore"): "itsup restore all --to",
    ("itsup-inplace", "restore"): "itsup restore all, in place (tree unchanged)",
    ("tar", "restore"): "tar -xzf (itsup's archive)",
    ("restic", "restore"): "restic restore latest",
}


@dataclass
class Env:
    args: argparse.Namespace
    work: Path
    root: Path
    target: Path
    dest: Path
    logs: Path
    env: dict[str, str]
    files: int
    total: int
    create_seconds: float
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def itsup_dir(self) -> Path:
        return self.target / "itsup"

    @property
    def restic_repo(self) -> Path:
        return self.target / "restic"

    def archive(self) -> Path | None:
        found = sorted(self.itsup_dir.glob("backup-*.tar.gz"))
        return found[-1] if found else None


@dataclass
class Measure:
    run: Run
    load: float  # 1-minute load average just before the run
    busy: float  # cores busy just before the run
    other: float = 0.0  # CPU seconds of the machine during the run, not the command's
    retries: int = 0  # runs thrown away: other work took CPU during them
    output_bytes: int = 0


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        subprocess.run(["rm", "-rf", str(path)], check=True)
    else:
        path.unlink(missing_ok=True)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# --- the tree -------------------------------------------------------------------------------


def prepare_tree(work: Path, files: int, seed: int, target: Path) -> tuple[Path, int, float]:
    """million.py's tree, or the one already built with the same parameters; (root, bytes,
    seconds its creation took)."""
    root, stamp = work / f"tree-{files}", work / f"tree-{files}.json"
    wanted = {"files": files, "seed": seed, "v": 1}
    if root.exists() and stamp.exists():
        saved = json.loads(stamp.read_text())
        if {k: saved.get(k) for k in wanted} == wanted:
            print(f"reusing the tree of {files:,} files", flush=True)
            write_config(root, target)
            return root, saved["bytes"], saved["seconds"]
    remove(root)
    stamp.unlink(missing_ok=True)
    print(f"building a tree of {files:,} files ...", flush=True)
    total, seconds = million.build_tree(root, files, seed)
    write_config(root, target)
    stamp.write_text(json.dumps({**wanted, "bytes": total, "seconds": seconds}))
    print(f"  {total / MIB:.0f} MiB in {seconds:.0f} s", flush=True)
    return root, total, seconds


def write_config(root: Path, target: Path) -> None:
    (root / "projects" / "itsup.yml").write_text(
        f"backup:\n  local:\n    path: {target}\n  compression: true\n"
    )


def check(e: Env, m: Measure) -> None:
    """The restored tree against the source; a mismatch fails the run, loudly."""
    if not m.run.ok:
        return
    root = find_restored_root(e.dest)
    try:
        if root is None:
            raise SystemExit("no folder with upstream and proxy under the restore target")
        million.check_restore(e.root, root, e.files, e.total, e.args.seed)
        mode = (root / "proxy" / "traefik" / "acme.json").stat().st_mode & 0o777
        if mode != 0o600:
            raise SystemExit(f"acme.json mode {mode:o} != 600")
    except (SystemExit, OSError) as problem:
        m.run.ok = False
        m.run.note = f"RESTORE MISMATCH: {problem}"
        print(f"\n!!! {m.run.note}\n", flush=True)


# --- measuring ------------------------------------------------------------------------------


def measured(e: Env, name: str, argv: list[str], cwd: Path, prepare: Callable[[], None]) -> Measure:
    """`prepare`, wait for a quiet machine, run `argv` under bench.py's launcher; all again
    (up to --retries times) when other work took more than --max-other cores meanwhile."""
    a = e.args
    retries = 0
    while True:
        prepare()
        os.sync()
        busy = wait_quiet(a.pause, a.quiet_cores, a.quiet_wait, a.max_load, a.others)
        load = os.getloadavg()[0]
        before = cpu_jiffies()[0]
        run = run_measured(argv, cwd, e.env, e.logs / f"{name}.log")
        machine = (cpu_jiffies()[0] - before) / TICK
        m = Measure(run, load, busy, other=max(0.0, machine - run.cpu_seconds), retries=retries)
        other = m.other / max(run.seconds, 0.01)
        if not run.ok or other <= a.max_other or m.other < 0.5 or retries >= a.retries:
            return m
        retries += 1
        print(f"    {run.seconds:.2f} s, but other work took {other:.2f} cores: again", flush=True)


def backup(e: Env, method: str, rep: int) -> Measure:
    name = f"{method}-backup-{rep}"
    if method == "itsup":
        argv = [*e.args.itsup, "--root", str(e.root), "backup"]
        m = measured(e, name, argv, e.root, lambda: remove(e.itsup_dir))
        if m.run.ok:
            m.output_bytes = sum(
                p.stat().st_size for p in e.itsup_dir.iterdir() if not p.name.startswith("latest")
            )
        return m
    if method in ("tar-igzip", "tar-pigz"):
        out = e.target / f"{method}.tar.gz"
        squeeze = (
            f"{shlex.quote(sys.executable)} -c {shlex.quote(IGZIP)} {shlex.quote(str(out))}"
            if method == "tar-igzip"
            else f"pigz -1 -p 2 > {shlex.quote(str(out))}"
        )
        argv = ["sh", "-c", f"tar -cf - upstream proxy | {squeeze}"]
        m = measured(e, name, argv, e.root, lambda: out.unlink(missing_ok=True))
        if m.run.ok:
            m.output_bytes = out.stat().st_size
        return m

    # restic: a new repository (init is not timed), a first backup
    def prepare() -> None:
        remove(e.restic_repo)
        remove(e.work / "restic-cache")
        init = subprocess.run(
            ["restic", "-r", str(e.restic_repo), "init"], env=e.env, capture_output=True
        )
        if init.returncode != 0:
            raise SystemExit(f"restic init failed: {init.stderr.decode()[-300:]}")

    argv = ["restic", "-r", str(e.restic_repo), "backup", "upstream", "proxy"]
    m = measured(e, name, argv, e.root, prepare)
    if m.run.ok:
        m.output_bytes = folder_bytes(e.restic_repo)
    return m


def restore(e: Env, method: str, rep: int) -> Measure:
    name = f"{method}-restore-{rep}"
    if method == "itsup-inplace":  # into the live tree itself, unchanged since its backup
        argv = [*e.args.itsup, "--root", str(e.root), "restore", "all", "--yes"]
        m = measured(e, name, argv, e.work, lambda: None)
        left = [p.name for p in e.root.iterdir() if p.name.startswith(".itsup-restore-")]
        if m.run.ok and left:
            m.run.ok, m.run.note = False, f"left {left} behind"
        return m
    if method == "itsup":
        argv = [*e.args.itsup, "--root", str(e.root), "restore", "all", "--to", str(e.dest)]
        argv.append("--yes")
    elif method == "tar":
        argv = ["tar", "-xzf", str(e.archive()), "-C", str(e.dest)]
    else:
        argv = ["restic", "-r", str(e.restic_repo), "restore", "latest", "--target", str(e.dest)]

    def prepare() -> None:
        remove(e.dest)
        if method != "itsup":  # itsup restores to a folder that does not exist yet
            e.dest.mkdir(parents=True)
        remove(e.work / "restic-cache")  # restic restores as on a new host

    m = measured(e, name, argv, e.work, prepare)
    check(e, m)
    remove(e.dest)
    return m


def show(label: str, m: Measure) -> None:
    r = m.run
    if not r.ok:
        print(f"    {label}: FAILED: {r.note}", flush=True)
        return
    print(
        f"    {label}: {r.seconds:.2f} s, {r.cpu_seconds:.1f} CPU s, "
        f"{r.peak_rss_kib / 1024:.0f} MiB RSS (load before {m.load:.2f}, other CPU "
        f"{m.other:.1f} s{f', {m.retries} redone' if m.retries else ''})",
        flush=True,
    )


def run_round(e: Env, rep: int) -> dict[tuple[str, str], Measure]:
    out: dict[tuple[str, str], Measure] = {}
    shift = (rep - 1) % len(BACKUPS)
    for method in BACKUPS[shift:] + BACKUPS[:shift]:
        if method in e.skipped:
            continue
        print(f"[{rep}] {method} backup ...", flush=True)
        out[(method, "backup")] = backup(e, method, rep)
        show(f"{method} backup", out[(method, "backup")])
    shift = (rep - 1) % len(RESTORES)
    for method in RESTORES[shift:] + RESTORES[:shift]:
        source = "itsup" if method in ("tar", "itsup-inplace") else method
        if (
            method in e.skipped
            or not out.get((source, "backup"))
            or not (out[(source, "backup")].run.ok)
        ):
            continue
        print(f"[{rep}] {method} restore ...", flush=True)
        out[(method, "restore")] = restore(e, method, rep)
        show(f"{method} restore", out[(method, "restore")])
    return out


# --- the profile ----------------------------------------------------------------------------


def profile_itsup(e: Env) -> list[str]:
    """One itsup backup and one restore under cProfile, every thread; the report lines."""
    lines: list[str] = []
    for phase in ("backup", "restore"):
        prof = e.logs / f"itsup-{phase}.prof"
        for old in e.logs.glob(f"{prof.name}.*"):
            old.unlink()
        rest = ["backup"] if phase == "backup" else ["restore", "all", "--to", str(e.dest), "--yes"]
        argv = [sys.executable, "-c", PROFILER, str(prof), "--root", str(e.root), *rest]

        def prepare(phase: str = phase) -> None:
            remove(e.dest)
            if phase == "backup":
                remove(e.itsup_dir)

        print(f"[profile] itsup {phase} under cProfile ...", flush=True)
        m = measured(e, f"itsup-{phase}-profile", argv, e.root, prepare)
        if phase == "restore":
            check(e, m)
            remove(e.dest)
        if not m.run.ok:
            lines += [f"- itsup {phase} under cProfile: FAILED: {m.run.note}", ""]
            continue
        groups: dict[str, list[Path]] = {}
        for path in sorted(e.logs.glob(f"{prof.name}.*")):
            group = path.name[len(prof.name) + 1 :]
            group = "main" if group == "main" else group.rsplit(".", 1)[0]
            groups.setdefault(group, []).append(path)
        lines += [
            f"#### itsup {phase} under cProfile",
            "",
            f"{m.run.seconds:.1f} s wall under the profiler ({m.run.cpu_seconds:.1f} CPU s, all "
            f"threads and children); µs per file = seconds x 10^6 / {e.files:,} files. Own "
            "time includes time waiting (locks, I/O) in that function.",
            "",
        ]
        for group, paths in sorted(groups.items(), key=lambda kv: kv[0] != "main"):
            lines += profile_report(paths, group, e.files, e.args.top)
    return lines + cpu_split(e)


def cpu_split(e: Env) -> list[str]:
    """One plain itsup backup, its processes' and threads' CPU read from /proc every 20
    ms (the last reading of each): where the backup's CPU goes, profiler-free."""
    remove(e.itsup_dir)
    tick = os.sysconf("SC_CLK_TCK")
    seen: dict[tuple[int, int], tuple[int, float, float]] = {}  # (pid, tid) -> (depth, u, s)

    def scan(pid: int, depth: int) -> None:
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                    fields = text[text.rindex(")") + 2 :].split()
                    seen[(pid, int(tid))] = (depth, int(fields[11]) / tick, int(fields[12]) / tick)
            for kid in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                scan(int(kid), depth + 1)
        except OSError:
            pass

    print("[profile] itsup backup, CPU by process and thread ...", flush=True)
    argv = [*e.args.itsup, "--root", str(e.root), "backup"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, cwd=e.root, env=e.env, stdout=subprocess.DEVNULL)
    while proc.poll() is None:
        scan(proc.pid, 0)
        time.sleep(0.02)
    wall = time.monotonic() - started
    rows: dict[str, list[float]] = {}
    for (pid, tid), (depth, user, system) in seen.items():
        if depth == 0:
            role = "backup process, main thread" if pid == tid else "backup process, other threads"
        else:
            role = "reader processes" if depth == 1 else "their children"
        row = rows.setdefault(role, [0.0, 0.0])
        row[0] += user
        row[1] += system
    total = sum(u + s for u, s in rows.values())
    lines = [
        "#### itsup backup: CPU by process and thread",
        "",
        f"One plain run ({wall:.1f} s wall, {total:.1f} CPU s; /proc read every 20 ms, so "
        "the last 20 ms of a thread may be missing). Other threads: the compressors, the "
        "large-file hasher, the target's writer; the command's own start-up is in the main "
        "thread.",
        "",
        "| | user s | system s | µs / file |",
        "|---|---:|---:|---:|",
    ]
    for role in ("backup process, main thread", "backup process, other threads",
                 "reader processes", "their children"):  # fmt: skip
        if role in rows:
            user, system = rows[role]
            lines.append(
                f"| {role} | {user:.2f} | {system:.2f} | {(user + system) * 1e6 / e.files:.1f} |"
            )
    return [*lines, ""]


def where(func: tuple[str, int, str]) -> str:
    """A function as `file:line(name)`, the file shortened to the package or module."""
    file, line, name = func
    if file == "~":  # a built-in
        return name.strip("<>")
    if "/itsup/" in file:
        file = "itsup/" + file.rsplit("/itsup/", 1)[1]
    elif "/lib/python" in file:
        file = file.rsplit("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{file}:{line}({name})"


SKIP_CUMULATIVE = ("<frozen runpy>", "<string>", "builtins.exec", "__main__.py", "threading.py")


def profile_report(paths: list[Path], group: str, files: int, top: int) -> list[str]:
    """The functions with the most own and cumulative time in one thread (or group)."""
    stats = pstats.Stats(*map(str, paths))
    table = stats.stats  # type: ignore[attr-defined]
    total = stats.total_tt  # type: ignore[attr-defined]
    if total * 1e6 / files < 5 and group != "main":  # under 5 µs per file: left out
        return []
    us = 1e6 / files

    def rows(key: int) -> list[str]:
        ranked = sorted(table.items(), key=lambda kv: kv[1][key], reverse=True)
        if key == 3:  # the runners above itsup's own code say nothing
            ranked = [kv for kv in ranked if not any(x in where(kv[0]) for x in SKIP_CUMULATIVE)]
        out = [
            "| Function | Calls / file | Own s | Own µs / file | Cumulative s "
            "| Cumulative µs / file |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for func, (_cc, nc, tt, ct, _callers) in ranked[: top if group == "main" else 8]:
            out.append(
                f"| `{where(func)}` | {nc / files:.2f} | {tt:.2f} | {tt * us:.1f} "
                f"| {ct:.2f} | {ct * us:.1f} |"
            )
        return out

    who = "main thread" if group == "main" else f"threads {group} ({len(paths)})"
    lines = [
        f"{who}: {total:.2f} s profiled ({total * us:.1f} µs / file). By own time:",
        "",
        *rows(2),
        "",
        f"{who}, by cumulative time:",
        "",
        *rows(3),
        "",
    ]
    print("\n".join(lines), flush=True)
    return lines


# --- results --------------------------------------------------------------------------------


def good(rounds: list[dict[tuple[str, str], Measure]], key: tuple[str, str]) -> list[Measure]:
    return [r[key] for r in rounds if key in r and r[key].run.ok]


def med(ms: list[Measure], attr: str) -> float:
    """The median of a Measure's field, or of its Run's."""
    return statistics.median(
        float(getattr(m, attr) if hasattr(m, attr) else getattr(m.run, attr)) for m in ms
    )


def table(e: Env, rounds: list[dict[tuple[str, str], Measure]]) -> list[str]:
    lines = [
        "| Scenario | Seconds (median) | Runs (s) | µs / file | CPU s | Peak RSS MiB "
        "| Output MiB | Load before (1 min) | Other CPU s | Runs redone | Status |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for key, label in LABELS.items():
        ms = good(rounds, key)
        bad = [r[key].run.note for r in rounds if key in r and not r[key].run.ok]
        if not ms and not bad:
            method = key[0] if key[0] not in ("tar", "itsup-inplace") else "itsup"
            why = e.skipped.get(method, "not run")
            lines.append(f"| {label} | - | - | - | - | - | - | - | - | - | skipped: {why} |")
            continue
        if not ms:
            lines.append(f"| {label} | - | - | - | - | - | - | - | - | - | FAILED: {bad[0]} |")
            continue
        seconds = med(ms, "seconds")
        out = med(ms, "output_bytes") if key[1] == "backup" else 0
        loads = [m.load for m in ms]
        status = f"FAILED {len(bad)}/{len(bad) + len(ms)}: {bad[0]}" if bad else "ok"
        lines.append(
            f"| {label} | {seconds:.2f} | {', '.join(f'{m.run.seconds:.2f}' for m in ms)} "
            f"| {seconds * 1e6 / e.files:.0f} | {med(ms, 'cpu_seconds'):.1f} "
            f"| {med(ms, 'peak_rss_kib') / 1024:.0f} | {f'{out / MIB:.0f}' if out else '-'} "
            f"| {min(loads):.2f} - {max(loads):.2f} | {med(ms, 'other'):.1f} "
            f"| {sum(m.retries for m in ms)} | {status} |"
        )
    return lines


def ratio(
    rounds: list[dict[tuple[str, str], Measure]],
    text: str,
    top: tuple[str, str],
    bottom: tuple[str, str],
    passes: Callable[[float], bool],
    goal: str,
) -> str:
    a, b = good(rounds, top), good(rounds, bottom)
    if not a or not b:
        return f"- {text}: N/A ({LABELS[top if not a else bottom]} did not run or failed)"
    value = med(a, "seconds") / med(b, "seconds")
    each = [
        r[top].run.seconds / r[bottom].run.seconds
        for r in rounds
        if top in r and bottom in r and r[top].run.ok and r[bottom].run.ok
    ]
    return (
        f"- {text}: {med(a, 'seconds'):.2f} / {med(b, 'seconds'):.2f} s = {value:.2f}x "
        f"(round by round {spread(each)}; target {goal}) **{pass_fail(passes(value))}**"
    )


def targets(rounds: list[dict[tuple[str, str], Measure]]) -> list[str]:
    out = []
    for phase, base in (("backup", "tar-igzip"), ("restore", "tar")):
        out.append(
            ratio(
                rounds,
                f"{phase}: itsup / tar",
                ("itsup", phase),
                (base, phase),
                lambda v: v <= TIME_LIMIT,
                f"<= {TIME_LIMIT:g}x",
            )
        )
        out.append(
            ratio(
                rounds,
                f"{phase}: restic / itsup",
                ("restic", phase),
                ("itsup", phase),
                lambda v: v >= RESTIC_LIMIT,
                f">= {RESTIC_LIMIT:g}x",
            )
        )
    for key, limit in (
        (("itsup", "restore"), RSS_LIMIT_MB),
        (("itsup-inplace", "restore"), RSS_LIMIT_MB),
        (("itsup", "backup"), BACKUP_RSS_LIMIT_MB),
    ):
        runs = good(rounds, key)
        if not runs:
            out.append(f"- {LABELS[key]} peak RSS: N/A (no run succeeded)")
            continue
        peak = max(m.run.peak_rss_kib for m in runs) * 1024 / 1e6
        out.append(
            f"- {LABELS[key]} peak RSS: {peak:.0f} MB ({peak * 1e6 / MIB:.0f} MiB), the largest "
            f"of {len(runs)} run(s) (target < {limit} MB) **{pass_fail(peak < limit)}**"
        )
    return out


def tool_versions() -> str:
    out = [f"Python {sys.version.split()[0]}"]
    for argv in (["tar", "--version"], ["restic", "version"], ["pigz", "--version"]):
        if shutil.which(argv[0]):
            done = subprocess.run(argv, capture_output=True, text=True)
            first = (done.stdout or done.stderr).splitlines()
            if first:
                out.append(first[0].split(" compiled")[0])
    try:
        import isal

        out.append(f"isal {isal.__version__}")
    except ImportError:
        pass
    return ", ".join(out)


def render(e: Env, rounds: list[dict[tuple[str, str], Measure]], profile: list[str]) -> str:
    def fs(path: Path) -> str:
        out = subprocess.run(["df", "--output=fstype", str(path)], capture_output=True, text=True)
        return (out.stdout.split() or ["?"])[-1]

    loads = [m.load for r in rounds for m in r.values()]
    du = subprocess.run(
        ["du", "-s", "--block-size=1", "upstream", "proxy"],
        cwd=e.root,
        capture_output=True,
        text=True,
    ).stdout.split()
    on_disk = sum(int(x) for x in du[::2]) if du else 0
    a = e.args
    lines = [
        f"## Many small files: {now()}",
        "",
        f"- Machine: {machine_description()}; the tree on {fs(e.root)}, the target and the "
        f"restores on {fs(e.target)}"
        + (" (--shm)" if a.shm else " (the same disk)")
        + "; warm page cache",
        f"- Tools: {tool_versions()}",
        f"- Tree: bench/million.py's, {e.files:,} files of 0 - {million.MAX_FILE} B (half "
        f"text-like, half random bytes), {e.total / MIB:.0f} MiB of data, "
        f"{on_disk / 1e6:.0f} MB on disk (blocks), built in "
        f"{e.create_seconds:.0f} s; itsup.yml: local target, `compression: true`",
        f"- Median of {len(rounds)} round(s); backups, then restores, each in an order rotating "
        "every round. Before each run: sync, then a wait until the 1-minute load average was "
        f"under {a.max_load:g}, fewer than {a.quiet_cores:g} cores busy over {a.pause:g} s, and "
        f"no other test run or benchmark running; load average before the runs "
        f"{min(loads, default=0):.2f} - {max(loads, default=0):.2f}. Every backup a first "
        "one (restic: a new repository); restores into an empty folder, restic's without its "
        f"cache; each restore checked (file count, bytes, {million.SAMPLE} random files byte "
        "for byte, acme.json mode). Peak RSS: ru_maxrss (os.wait4; a pipeline's largest "
        "process). CPU s: user + system of the command and its children; other CPU s: the "
        "rest of the machine's during the run (/proc/stat: the kernel's own threads, other "
        f"work); a run during which it took more than {a.max_other:g} cores was run again "
        f"(up to {a.retries} times).",
        f"- Command: `{command_line('bench/smallfiles.py', 'DIR')}`",
        "",
        *table(e, rounds),
        "",
        "### Targets",
        "",
        *targets(rounds),
    ]
    for method, why in e.skipped.items():
        lines.append(f"- {method}: skipped ({why})")
    if profile:
        lines += ["", "### Profile", "", *profile]
    return "\n".join(lines).rstrip("\n")


# --- memory against the number of files ----------------------------------------------------


def rss_sweep(args: argparse.Namespace, work: Path, target: Path, env: dict[str, str]) -> str:
    """itsup alone on trees of each of --sizes files: backup, restore --to, restore in
    place, each once; peak RSS (and time) by size, and largest / smallest."""
    rows: dict[tuple[str, str], dict[int, Measure]] = {}
    for files in args.sizes:
        root, total, create_s = prepare_tree(work, files, args.seed, target)
        dest = target.parent / "restore"
        e = Env(args, work, root, target, dest, work / "logs", env, files, total, create_s)
        print(f"[{files:,} files] itsup backup ...", flush=True)
        rows.setdefault(("itsup", "backup"), {})[files] = m = backup(e, "itsup", files)
        show("itsup backup", m)
        for method in ("itsup", "itsup-inplace"):
            print(f"[{files:,} files] {method} restore ...", flush=True)
            rows.setdefault((method, "restore"), {})[files] = m = restore(e, method, files)
            show(f"{method} restore", m)
        remove(target / "itsup")
        if files != args.sizes[-1] and not args.keep_trees:
            remove(root)  # the next tree needs the room
            (work / f"tree-{files}.json").unlink(missing_ok=True)
    sizes = args.sizes
    lines = [
        f"## Many small files, memory by tree size: {now()}",
        "",
        f"- Machine: {machine_description()}; trees of bench/million.py's kind (0 - "
        f"{million.MAX_FILE} B files, 1000 per folder); local target, compression on; each "
        "command run once per size, after a wait for a quiet machine",
        f"- Command: `{command_line('bench/smallfiles.py', 'DIR')}`",
        "",
        "| Command | "
        + " | ".join(f"{n:,} files: s, MiB" for n in sizes)
        + " | RSS largest / smallest |",
        "|---|" + "---:|" * len(sizes) + "---:|",
    ]
    verdicts = []
    for key, by_size in rows.items():
        cells, peaks = [], []
        for n in sizes:
            got = by_size.get(n)
            if got is None or not got.run.ok:
                cells.append("FAILED" if got is not None else "-")
                continue
            peaks.append(got.run.peak_rss_kib / 1024)
            cells.append(f"{got.run.seconds:.1f} s, {got.run.peak_rss_kib / 1024:.0f}")
        spread_x = max(peaks) / min(peaks) if len(peaks) > 1 else float("nan")
        lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + f" | {spread_x:.2f}x |")
        if peaks and key[1] == "restore":
            top = max(peaks) * MIB / 1e6
            verdicts.append(
                f"- {LABELS[key]}: peak {top:.0f} MB (target < {RSS_LIMIT_MB} MB), largest / "
                f"smallest {spread_x:.2f}x (target < {RSS_SPREAD:g}x) "
                f"**{pass_fail(top < RSS_LIMIT_MB and spread_x < RSS_SPREAD)}**"
            )
        elif peaks:
            top = peaks[-1] * MIB / 1e6
            verdicts.append(
                f"- {LABELS[key]} at {sizes[-1]:,} files: peak {top:.0f} MB (target < "
                f"{BACKUP_RSS_LIMIT_MB} MB) **{pass_fail(top < BACKUP_RSS_LIMIT_MB)}**"
            )
    return "\n".join([*lines, "", "### Targets", "", *verdicts])


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=200_000, help="small files in the tree")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (median)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, help="work folder (kept, tree reused)")
    parser.add_argument("--profile", action="store_true", help="also profile itsup (cProfile)")
    parser.add_argument("--profile-only", action="store_true", help="only the profile")
    parser.add_argument("--top", type=int, default=15, help="functions listed in the profile")
    parser.add_argument("--pause", type=float, default=2.0, help="quiet seconds before a run")
    parser.add_argument("--max-load", type=float, default=1.0, help="1-minute load ceiling")
    parser.add_argument("--quiet-cores", type=float, default=0.5, help="busy-cores ceiling")
    parser.add_argument(
        "--quiet-wait", type=float, default=1800.0, help="the longest wait before a run, s"
    )
    parser.add_argument(
        "--others", default=OTHERS, help="pgrep -f pattern of runs to wait out ('' for none)"
    )
    parser.add_argument(
        "--shm", action="store_true", help="target and restores in /dev/shm (the tree on disk)"
    )
    parser.add_argument(
        "--max-other",
        type=float,
        default=0.3,
        help="run again when other work took more cores than this during a run",
    )
    parser.add_argument("--retries", type=int, default=2, help="the most runs thrown away")
    parser.add_argument("--only", default=",".join(BACKUPS), help="methods to run")
    parser.add_argument("--itsup", help="the itsup command (default: this Python's -m itsup)")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    parser.add_argument(
        "--sizes",
        help="memory by tree size instead: comma-separated file counts (e.g. 100000,1000000)",
    )
    parser.add_argument("--keep-trees", action="store_true", help="with --sizes: keep each tree")
    args = parser.parse_args(argv)
    args.itsup = args.itsup.split() if args.itsup else [sys.executable, "-m", "itsup"]
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    args.sizes = sorted(int(n) for n in args.sizes.split(",")) if args.sizes else []
    if args.profile_only:
        args.profile, args.repeat = True, 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.workdir is None
    work = args.workdir or Path(tempfile.mkdtemp(prefix="itsup-smallfiles-", dir="/var/tmp"))
    work = work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    logs = work / "logs"
    # --shm: the target and the restores in memory (as issue 13 measured), the tree on disk
    shm = Path(tempfile.mkdtemp(prefix="itsup-smallfiles-", dir="/dev/shm")) if args.shm else None
    target = (shm or work) / "target"
    target.mkdir(exist_ok=True)
    logs.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    env.update(RESTIC_PASSWORD=RESTIC_PASSWORD, RESTIC_CACHE_DIR=str(work / "restic-cache"))
    try:
        if args.sizes:
            body = rss_sweep(args, work, target, env)
            print("\n" + body)
            if not args.no_write:
                write_section(SECTION + "-rss", body)
            return 0
        root, total, create_s = prepare_tree(work, args.files, args.seed, target)
        dest = (shm or work) / "restore"
        e = Env(args, work, root, target, dest, logs, env, args.files, total, create_s)
        for method, tool in (("restic", "restic"), ("tar-pigz", "pigz")):
            if shutil.which(tool) is None:
                e.skipped[method] = f"{tool} not installed (apt-get install -y {tool})"
                print(f"{tool} is not installed: its rows are skipped", flush=True)
        for method in BACKUPS:
            if method not in args.only:
                e.skipped.setdefault(method, "not in --only")
        rounds = [run_round(e, rep) for rep in range(1, args.repeat + 1)]
        profile = profile_itsup(e) if args.profile else []
        body = render(e, rounds, profile)
    finally:
        if shm is not None:
            remove(shm)
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + body)
    if not args.no_write:
        size = "" if args.files == 200_000 else f"-{args.files // 1000}k"
        write_section(SECTION + size + ("-shm" if args.shm else ""), body)
        print(f"\nresults written to {RESULTS_FILE.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
