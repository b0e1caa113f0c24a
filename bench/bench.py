"""Benchmark itsup backup/restore against common baselines on a synthetic host tree.

Usage (from the project root):

    .venv/bin/python bench/bench.py [--size-mb N] [--small-files N] [--repeat K]
                                    [--only itsup,naive,tar-gzip,restic] [--rss-scaling]

Every measured command runs as its own process under a tiny launcher that reads the
command's rusage with os.wait4 (peak RSS includes the waited-for descendants, so for a
shell pipeline it is the largest single process of the pipeline). The S3 target is the test
suite's loopback server (tests/s3server.py). Results go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
sys.path.insert(0, str(PROJECT_DIR / "tests"))
sys.path.insert(0, str(BENCH_DIR))

import synth  # noqa: E402
from s3server import S3Server, start_s3_server  # noqa: E402

MIB = 1 << 20
ITSUP_PREFIX = "bench-itsup/"
RESTIC_PREFIX = "bench-restic"
NAIVE_KEY = "bench-naive/backup.tar.gz"
TARGZ_KEY = "bench-tar-gzip/backup.tar.gz"
RESTIC_PASSWORD = "itsup-bench-password"
SOURCE_DIRS = ("upstream", "proxy")
METHODS = ("itsup", "naive", "tar-gzip", "restic")
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
HASH_SAMPLE = 256
RSS_TARGET_MIB = 300
RSS_FLAT_FACTOR = 1.25

# Runs one command, waits for it with os.wait4 and writes "<wait status> <maxrss KiB>
# <seconds> <CPU seconds>" to the report file (CPU: user + system of the command and its
# waited-for descendants). The launcher is small, so the command does not inherit
# this (much bigger) process's memory high-water mark, which Linux carries across exec.
LAUNCHER = """\
import os, sys, time
report, argv = sys.argv[1], sys.argv[2:]
start = time.monotonic()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
elapsed = time.monotonic() - start
with open(report, "w") as f:
    f.write(f"{status} {usage.ru_maxrss} {elapsed} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status) & 0xFF)
"""

S3_CLIENT = """\
import os, boto3
from boto3.s3.transfer import TransferConfig
s3 = boto3.client("s3", endpoint_url=os.environ["BENCH_S3_ENDPOINT"], region_name="us-east-1")
config = TransferConfig()
"""

NAIVE_BACKUP = (
    S3_CLIENT
    + """\
import sys, tarfile
root, tarball, bucket, key = sys.argv[1:5]
with tarfile.open(tarball, "w:gz") as tar:
    for name in ("upstream", "proxy"):
        tar.add(os.path.join(root, name), arcname=name)
s3.upload_file(tarball, bucket, key, Config=config)
"""
)

STREAM_UPLOAD = (
    S3_CLIENT
    + """\
import sys
s3.upload_fileobj(sys.stdin.buffer, sys.argv[1], sys.argv[2], Config=config)
"""
)

STREAM_DOWNLOAD = (
    S3_CLIENT
    + """\
import sys
s3.download_fileobj(sys.argv[1], sys.argv[2], sys.stdout.buffer, Config=config)
sys.stdout.buffer.flush()
"""
)


# --- measuring ----------------------------------------------------------------------------


@dataclass
class Run:
    ok: bool
    seconds: float = 0.0
    peak_rss_kib: int = 0
    output_bytes: int = 0
    note: str = ""
    cpu_seconds: float = 0.0


def log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])[:300]


def run_measured(argv: list[str], cwd: Path, env: dict[str, str], log: Path) -> Run:
    """Run `argv` under the launcher; return wall seconds and peak RSS of the command."""
    report = log.with_suffix(".rusage")
    report.unlink(missing_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", LAUNCHER, str(report), *argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        proc.wait()
    if not report.exists():
        return Run(ok=False, note=f"could not start: {log_tail(log)}")
    status, maxrss, seconds, cpu = report.read_text().split()
    code = os.waitstatus_to_exitcode(int(status))
    run = Run(ok=code == 0, seconds=float(seconds), peak_rss_kib=int(maxrss))
    run.cpu_seconds = float(cpu)
    if code != 0:
        run.note = f"exit {code}: {log_tail(log) or 'no output'} (log: logs/{log.name})"
    return run


def quiet_pause(seconds: float) -> None:
    os.sync()
    time.sleep(seconds)


TICK = os.sysconf("SC_CLK_TCK")


def cpu_jiffies() -> tuple[int, int]:
    """(busy, iowait) jiffies of the whole machine since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = fields[3], fields[4]
    return sum(fields[:8]) - idle - iowait, iowait


def busy_cores(seconds: float) -> float:
    """Cores busy on the whole machine, on average over the next `seconds`."""
    before = cpu_jiffies()[0]
    time.sleep(seconds)
    return (cpu_jiffies()[0] - before) / TICK / seconds


def others_running(pattern: str) -> list[str]:
    """Command lines of the processes (not this one) matching `pattern` (pgrep -f)."""
    if not pattern:
        return []
    found = subprocess.run(["pgrep", "-a", "-f", pattern], capture_output=True, text=True)
    return [
        line
        for line in found.stdout.splitlines()
        if line.split(" ", 1)[0] not in (str(os.getpid()), str(os.getppid()))
    ]


def wait_quiet(
    pause: float,
    threshold: float,
    patience: float,
    max_load: float | None = None,
    others: str = "",
) -> float:
    """Pause; go on once the machine's busy cores over the pause are under `threshold`
    (other work on a shared machine), or after `patience` seconds. The last figure.

    With `max_load`, also wait for the 1-minute load average to fall below it; with
    `others` (a pgrep -f pattern), for no process matching it (another benchmark, a
    test run)."""
    deadline = time.monotonic() + patience
    busy = busy_cores(pause)

    def waiting() -> bool:
        if busy > threshold:
            return True
        if max_load is not None and os.getloadavg()[0] >= max_load:
            return True
        return bool(others and others_running(others))

    told = False
    while waiting() and time.monotonic() < deadline:
        if (max_load is not None or others) and not told:
            print(
                f"    waiting for a quiet machine (load {os.getloadavg()[0]:.2f}, "
                f"{busy:.2f} cores busy, {len(others_running(others))} other runs) ...",
                flush=True,
            )
            told = True
        busy = busy_cores(pause)
    return busy


# --- the restore area: a tmpfs mounted per run ----------------------------------------------


class RestoreArea:
    """A fresh, empty tmpfs for each restore; falls back to a folder under /dev/shm."""

    def __init__(self, base: Path, size_bytes: int) -> None:
        self.mountpoint = base / "restore-tmpfs"
        self.size_mib = int(size_bytes * 1.5 / MIB) + 512
        self.mounted = False
        self.fallback: Path | None = None
        self.kind = "tmpfs"

    def fresh(self) -> Path:
        self.clear()
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        mount = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m", "tmpfs", str(self.mountpoint)],
            capture_output=True,
        )
        if mount.returncode == 0:
            self.mounted, self.kind = True, "tmpfs"
            dest = self.mountpoint / "dest"
        else:
            self.fallback = Path(tempfile.mkdtemp(prefix="itsup-bench-restore-", dir="/dev/shm"))
            self.kind = "/dev/shm folder"
            dest = self.fallback / "dest"
        dest.mkdir()
        return dest

    def clear(self) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.mountpoint)], check=True)
            self.mounted = False
        if self.fallback is not None:
            shutil.rmtree(self.fallback, ignore_errors=True)
            self.fallback = None


# --- verifying restores -------------------------------------------------------------------


def file_hash(path: Path) -> str:
    digest = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def scan(base: Path) -> dict[str, int]:
    """Relative path -> size of every regular file under base/upstream and base/proxy."""
    files: dict[str, int] = {}
    for top in SOURCE_DIRS:
        for dirpath, _dirs, names in os.walk(base / top):
            for name in names:
                path = Path(dirpath) / name
                if path.is_file() and not path.is_symlink():
                    files[path.relative_to(base).as_posix()] = path.stat().st_size
    return files


@dataclass
class Manifest:
    files: int
    bytes: int
    hashes: dict[str, str]
    modes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, root: Path, seed: int = 7) -> Manifest:
        files = scan(root)
        names = sorted(files)
        sample = set(random.Random(seed).sample(names, min(HASH_SAMPLE, len(names))))
        sample.update(sorted(names, key=lambda n: files[n], reverse=True)[:4])
        hashes = {name: file_hash(root / name) for name in sorted(sample)}
        modes = {"proxy/traefik/acme.json": 0o600}
        return cls(len(files), sum(files.values()), hashes, modes)


def find_restored_root(dest: Path, max_depth: int = 8) -> Path | None:
    """The folder under dest holding upstream/ and proxy/ (tools nest differently)."""
    level = [dest]
    for _ in range(max_depth):
        for folder in level:
            if all((folder / top).is_dir() for top in SOURCE_DIRS):
                return folder
        level = [
            child
            for folder in level
            for child in sorted(folder.iterdir())
            if child.is_dir() and not child.is_symlink()
        ]
    return None


def verify_restore(manifest: Manifest, dest: Path) -> list[str]:
    """Differences between the restored tree and the source (empty list: matches)."""
    root = find_restored_root(dest)
    if root is None:
        return [f"no folder with {' and '.join(SOURCE_DIRS)} under the restore target"]
    files = scan(root)
    problems = []
    if len(files) != manifest.files:
        problems.append(f"file count {len(files)} != {manifest.files}")
    if sum(files.values()) != manifest.bytes:
        problems.append(f"total bytes {sum(files.values())} != {manifest.bytes}")
    bad = [
        name
        for name, digest in manifest.hashes.items()
        if name not in files or file_hash(root / name) != digest
    ]
    if bad:
        problems.append(f"{len(bad)}/{len(manifest.hashes)} sampled files differ, e.g. {bad[0]}")
    for name, mode in manifest.modes.items():
        path = root / name
        if path.exists() and path.stat().st_mode & 0o777 != mode:
            problems.append(f"{name} mode {path.stat().st_mode & 0o777:o} != {mode:o}")
    return problems


# --- the environment: server, tree, paths -------------------------------------------------


@dataclass
class Bench:
    workdir: Path
    root: Path
    server: S3Server
    s3: Any
    env: dict[str, str]
    itsup: Path
    tree: synth.TreeStats
    manifest: Manifest
    restore_area: RestoreArea
    logs: Path
    pause: float

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def delete_prefix(self, prefix: str) -> None:
        # One by one: the loopback server wants Content-MD5 on DeleteObjects, which current
        # boto3 no longer sends.
        paginator = self.s3.get_paginator("list_objects_v2")
        keys = [
            obj["Key"]
            for page in paginator.paginate(Bucket=self.server.bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
        ]
        for key in keys:
            self.s3.delete_object(Bucket=self.server.bucket, Key=key)

    def prefix_bytes(self, prefix: str, skip: str | None = None) -> int:
        """Total size of the objects under prefix, leaving out keys starting with skip."""
        paginator = self.s3.get_paginator("list_objects_v2")
        return sum(
            obj["Size"]
            for page in paginator.paginate(Bucket=self.server.bucket, Prefix=prefix)
            for obj in page.get("Contents", [])
            if skip is None or not obj["Key"].startswith(skip)
        )

    def measure_restore(self, name: str, argv_for: Callable[[Path], list[str]]) -> Run:
        quiet_pause(self.pause)
        dest = self.restore_area.fresh()
        try:
            run = run_measured(argv_for(dest), self.root, self.env, self.log(name))
            if run.ok:
                problems = verify_restore(self.manifest, dest)
                if problems:
                    run.ok = False
                    run.note = "RESTORE MISMATCH: " + "; ".join(problems)
                    print(f"\n!!! {name}: {run.note}\n", flush=True)
            return run
        finally:
            self.restore_area.clear()


def subprocess_env(server: S3Server, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=server.access_key,
        AWS_SECRET_ACCESS_KEY=server.secret_key,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        BENCH_S3_ENDPOINT=server.endpoint,
        RESTIC_PASSWORD=RESTIC_PASSWORD,
        RESTIC_CACHE_DIR=str(workdir / "restic-cache"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    for name in (
        "AWS_PROFILE",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
    ):
        env.pop(name, None)
    return env


def prepare_tree(
    root: Path, size_mb: int, small_files: int, seed: int, server: S3Server
) -> synth.TreeStats:
    """Build the tree, or reuse one built with the same parameters (config is rewritten)."""
    stamp = root.parent / f"{root.name}.json"
    wanted = f"{size_mb} {small_files} {seed}"
    config = synth.itsup_config(server.bucket, server.endpoint, ITSUP_PREFIX)
    if stamp.exists() and root.exists():
        saved = stamp.read_text().split("\n", 1)
        if saved[0] == wanted:
            (root / "projects" / "itsup.yml").write_text(config)
            print(f"reusing tree at {root}", flush=True)
            return synth.TreeStats.from_json(saved[1])
    shutil.rmtree(root, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    print(f"building a {size_mb} MiB tree with {small_files} small files ...", flush=True)
    started = time.monotonic()
    stats = synth.build_tree(root, size_mb, small_files, seed, config)
    print(f"  {stats.describe()} in {time.monotonic() - started:.1f} s", flush=True)
    stamp.write_text(wanted + "\n" + stats.to_json())
    return stats


@contextlib.contextmanager
def bench_environment(args: argparse.Namespace, size_mb: int, tree_name: str) -> Iterator[Bench]:
    """Server + tree + restore area for one tree size; everything is torn down on exit."""
    workdir: Path = args.workdir
    s3_dir = workdir / f"s3-{tree_name}"
    shutil.rmtree(s3_dir, ignore_errors=True)
    server = start_s3_server(s3_dir)
    area: RestoreArea | None = None
    try:
        root = workdir / tree_name
        tree = prepare_tree(root, size_mb, args.small_files, args.seed, server)
        print("hashing a sample of the source for restore checks ...", flush=True)
        manifest = Manifest.of(root)
        area = RestoreArea(workdir, manifest.bytes)
        logs = workdir / "logs"
        logs.mkdir(exist_ok=True)
        yield Bench(
            workdir,
            root,
            server,
            server.client(),
            subprocess_env(server, workdir),
            args.itsup,
            tree,
            manifest,
            area,
            logs,
            args.pause,
        )
    finally:
        if area is not None:
            area.clear()
        server.stop()
        shutil.rmtree(s3_dir, ignore_errors=True)
        if args.cleanup_trees:
            shutil.rmtree(workdir / tree_name, ignore_errors=True)
            (workdir / f"{tree_name}.json").unlink(missing_ok=True)


# --- the methods --------------------------------------------------------------------------


@dataclass
class Scenario:
    method: str
    phase: str  # "backup" or "restore"

    @property
    def label(self) -> str:
        names = {
            ("itsup", "backup"): "itsup backup",
            ("itsup", "restore"): "itsup restore",
            ("naive", "backup"): "naive: tarfile w:gz + upload_file",
            ("tar-gzip", "backup"): "tar | gzip -6 | stream upload",
            ("tar-gzip", "restore"): "stream download | tar -xzf",
            ("restic", "backup"): "restic first backup",
            ("restic", "restore"): "restic restore",
        }
        return names[(self.method, self.phase)]


def itsup_available(bench: Bench) -> str | None:
    """None when the itsup command can run, else why not."""
    if not bench.itsup.exists():
        return f"not installed ({bench.itsup.name} command missing)"
    probe = subprocess.run(
        [str(bench.itsup), "--help"], capture_output=True, env=bench.env, timeout=60
    )
    if probe.returncode != 0:
        output = (probe.stderr or probe.stdout).decode(errors="replace").strip()[-200:]
        return f"itsup --help exited {probe.returncode}: {output or 'no output'}"
    return None


def itsup_cycle(bench: Bench, rep: int) -> dict[str, Run]:
    reason = itsup_available(bench)
    if reason:
        return {"backup": Run(ok=False, note=reason), "restore": Run(ok=False, note=reason)}
    bench.delete_prefix(ITSUP_PREFIX)
    quiet_pause(bench.pause)
    base = [str(bench.itsup), "--root", str(bench.root)]
    backup = run_measured(
        [*base, "backup"], bench.root, bench.env, bench.log(f"itsup-backup-{rep}")
    )
    if not backup.ok:
        return {"backup": backup, "restore": Run(ok=False, note="skipped: backup failed")}
    # The generation's objects (archive, index, manifest); not the `latest` alias, which is a
    # server-side copy of the archive.
    backup.output_bytes = bench.prefix_bytes(ITSUP_PREFIX, skip=ITSUP_PREFIX + "latest")
    restore = bench.measure_restore(
        f"itsup-restore-{rep}", lambda dest: [*base, "restore", "all", "--to", str(dest), "--yes"]
    )
    return {"backup": backup, "restore": restore}


def naive_cycle(bench: Bench, rep: int) -> dict[str, Run]:
    tarball = bench.workdir / "naive-backup.tar.gz"
    bench.delete_prefix(NAIVE_KEY)
    quiet_pause(bench.pause)
    argv = [
        sys.executable,
        "-c",
        NAIVE_BACKUP,
        str(bench.root),
        str(tarball),
        bench.server.bucket,
        NAIVE_KEY,
    ]
    try:
        backup = run_measured(argv, bench.root, bench.env, bench.log(f"naive-backup-{rep}"))
    finally:
        tarball.unlink(missing_ok=True)
    if backup.ok:
        backup.output_bytes = bench.prefix_bytes(NAIVE_KEY)
    return {"backup": backup}


def python_snippet(snippet: str, *args: str) -> str:
    return shlex.join([sys.executable, "-c", snippet, *args])


def targz_cycle(bench: Bench, rep: int) -> dict[str, Run]:
    bucket = bench.server.bucket
    bench.delete_prefix(TARGZ_KEY)
    quiet_pause(bench.pause)
    upload = python_snippet(STREAM_UPLOAD, bucket, TARGZ_KEY)
    script = f"set -o pipefail; tar -cf - {' '.join(SOURCE_DIRS)} | gzip -6 | {upload}"
    backup = run_measured(
        ["bash", "-c", script], bench.root, bench.env, bench.log(f"tar-gzip-backup-{rep}")
    )
    if not backup.ok:
        return {"backup": backup, "restore": Run(ok=False, note="skipped: backup failed")}
    backup.output_bytes = bench.prefix_bytes(TARGZ_KEY)
    download = python_snippet(STREAM_DOWNLOAD, bucket, TARGZ_KEY)

    def restore_argv(dest: Path) -> list[str]:
        return [
            "bash",
            "-c",
            f"set -o pipefail; {download} | tar -xzf - -C {shlex.quote(str(dest))}",
        ]

    restore = bench.measure_restore(f"tar-gzip-restore-{rep}", restore_argv)
    return {"backup": backup, "restore": restore}


def restic_cycle(bench: Bench, rep: int) -> dict[str, Run]:
    if shutil.which("restic") is None:
        reason = "restic not installed"
        return {"backup": Run(ok=False, note=reason), "restore": Run(ok=False, note=reason)}
    repo = f"s3:{bench.server.endpoint}/{bench.server.bucket}/{RESTIC_PREFIX}"
    cache = Path(bench.env["RESTIC_CACHE_DIR"])
    bench.delete_prefix(RESTIC_PREFIX + "/")
    shutil.rmtree(cache, ignore_errors=True)
    init = subprocess.run(["restic", "-r", repo, "init"], env=bench.env, capture_output=True)
    if init.returncode != 0:
        note = f"restic init failed: {init.stderr.decode(errors='replace').strip()[-200:]}"
        return {"backup": Run(ok=False, note=note), "restore": Run(ok=False, note=note)}
    quiet_pause(bench.pause)
    backup = run_measured(
        ["restic", "-r", repo, "backup", *SOURCE_DIRS],
        bench.root,
        bench.env,
        bench.log(f"restic-backup-{rep}"),
    )
    if not backup.ok:
        return {"backup": backup, "restore": Run(ok=False, note="skipped: backup failed")}
    backup.output_bytes = bench.prefix_bytes(RESTIC_PREFIX + "/")
    shutil.rmtree(cache, ignore_errors=True)  # restore as on a fresh host: no local cache
    restore = bench.measure_restore(
        f"restic-restore-{rep}",
        lambda dest: ["restic", "-r", repo, "restore", "latest", "--target", str(dest)],
    )
    return {"backup": backup, "restore": restore}


CYCLES: dict[str, Callable[[Bench, int], dict[str, Run]]] = {
    "itsup": itsup_cycle,
    "naive": naive_cycle,
    "tar-gzip": targz_cycle,
    "restic": restic_cycle,
}


# --- aggregating and reporting ------------------------------------------------------------


@dataclass
class Summary:
    scenario: Scenario
    runs: list[Run]

    @property
    def good(self) -> list[Run]:
        return [run for run in self.runs if run.ok]

    @property
    def ok(self) -> bool:
        return bool(self.runs) and len(self.good) == len(self.runs)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(run, attr) for run in self.good)

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        failed = [run for run in self.runs if not run.ok]
        return f"FAILED {len(failed)}/{len(self.runs)}: {failed[0].note}"


def md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def fmt_mib(n: float) -> str:
    return f"{n / MIB:,.1f}"


def results_table(summaries: list[Summary], source_bytes: int) -> list[str]:
    lines = [
        "| Scenario | Seconds | MiB/s | Output MiB | Output / source | Peak RSS MiB | Status |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in summaries:
        label, status = md_cell(s.scenario.label), md_cell(s.status)
        if not s.good:
            lines.append(f"| {label} | - | - | - | - | - | {status} |")
            continue
        seconds = s.median("seconds")
        output = s.median("output_bytes") if s.scenario.phase == "backup" else 0
        lines.append(
            f"| {label} | {seconds:.2f} | {source_bytes / MIB / seconds:.1f} | "
            f"{fmt_mib(output) if output else '-'} | "
            f"{f'{output / source_bytes:.3f}' if output else '-'} | "
            f"{s.median('peak_rss_kib') / 1024:.0f} | {status} |"
        )
    return lines


@dataclass
class Target:
    text: str
    subject: tuple[str, str]
    baseline: tuple[str, str]
    measure: str  # "speedup", "size" or "slowdown"
    limit: float

    def evaluate(self, by_key: dict[tuple[str, str], Summary]) -> str:
        subject, baseline = by_key.get(self.subject), by_key.get(self.baseline)
        if subject is None or baseline is None:
            return f"- {self.text}: N/A (not run)"
        if not subject.good:
            return f"- {self.text}: **FAIL** ({subject.scenario.label}: {subject.status})"
        if not baseline.good:
            return f"- {self.text}: N/A ({baseline.scenario.label}: {baseline.status})"
        if self.measure == "size":
            value = subject.median("output_bytes") / baseline.median("output_bytes")
            passed = value <= self.limit
            detail = f"{value:.3f}x the size (target <= {self.limit:g}x)"
        elif self.measure == "slowdown":
            value = subject.median("seconds") / baseline.median("seconds")
            passed = value <= self.limit
            detail = f"{value:.2f}x the time (target <= {self.limit:g}x)"
        else:
            value = baseline.median("seconds") / subject.median("seconds")
            passed = value >= self.limit if self.limit > 1 else value > self.limit
            op = ">=" if self.limit > 1 else ">"
            detail = f"{value:.2f}x faster (target {op} {self.limit:g}x)"
        return f"- {self.text}: {detail} **{'PASS' if passed else 'FAIL'}**"


TARGETS = (
    Target(
        "itsup backup vs naive tarfile + upload",
        ("itsup", "backup"),
        ("naive", "backup"),
        "speedup",
        12,
    ),
    Target(
        "itsup backup vs tar | gzip -6 | upload",
        ("itsup", "backup"),
        ("tar-gzip", "backup"),
        "speedup",
        5,
    ),
    Target(
        "itsup backup vs restic first backup",
        ("itsup", "backup"),
        ("restic", "backup"),
        "speedup",
        1,
    ),
    Target(
        "itsup compressed size vs gzip -6 size",
        ("itsup", "backup"),
        ("tar-gzip", "backup"),
        "size",
        1.10,
    ),
    Target(
        "itsup restore vs stream download | tar -xzf",
        ("itsup", "restore"),
        ("tar-gzip", "restore"),
        "speedup",
        2,
    ),
    Target(
        "itsup restore vs restic restore",
        ("itsup", "restore"),
        ("restic", "restore"),
        "slowdown",
        1.5,
    ),
)


def machine_description() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown memory"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
                break
    return f"{len(os.sched_getaffinity(0))} CPUs ({cpu}), {memory}"


def tool_versions() -> str:
    versions = [f"Python {sys.version.split()[0]}"]
    for argv in (["restic", "version"], ["tar", "--version"], ["gzip", "--version"]):
        with contextlib.suppress(OSError):
            out = subprocess.run(argv, capture_output=True, text=True).stdout.splitlines()
            if out:
                versions.append(out[0].split(" compiled")[0])
    return ", ".join(versions)


def command_line(script: str = "bench/bench.py", placeholder: str = "WORKDIR") -> str:
    """The command as typed, with a --workdir value replaced by a placeholder (the work
    folder is this machine's business, not the results')."""
    args = list(sys.argv[1:])
    for i, arg in enumerate(args):
        if arg == "--workdir" and i + 1 < len(args):
            args[i + 1] = placeholder
        elif arg.startswith("--workdir="):
            args[i] = f"--workdir={placeholder}"
    return shlex.join([".venv/bin/python", script, *args])


def pass_fail(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def spread(values: list[float]) -> str:
    """'smallest - largest' of round-by-round figures (n/a when there are none)."""
    return f"{min(values):.2f} - {max(values):.2f}" if values else "n/a"


# --- RESULTS.md: sections replaced per run, history kept ------------------------------------


SECTION_START = "<!-- section:{} -->"
SECTION_END = "<!-- /section:{} -->"


def read_sections(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    text = path.read_text()
    sections: dict[str, str] = {}
    for name in re.findall(r"<!-- section:([\w-]+) -->", text):
        start, end = SECTION_START.format(name), SECTION_END.format(name)
        if start in text and end in text:
            sections[name] = text.split(start, 1)[1].split(end, 1)[0].strip("\n")
    return sections


def write_results(new_sections: dict[str, str], history_line: str) -> None:
    sections = read_sections(RESULTS_FILE)
    old_history = [
        line for line in sections.get("history", "").splitlines() if line.startswith("- ")
    ]
    sections.update(new_sections)
    sections["history"] = "\n".join(["## History", "", *old_history, history_line])
    parts = [
        "# itsup benchmark results",
        "",
        "Written by `bench/bench.py` (see bench/README.md); sizes in MiB.",
        "",
    ]
    # Sections this script owns first, in order; any other marked section (another
    # benchmark's, e.g. bench/million.py) is kept as it was, after them.
    owned = ("main", "rss-scaling", "history")
    for name in [*owned, *(n for n in sections if n not in owned)]:
        if name in sections:
            parts += [SECTION_START.format(name), sections[name], SECTION_END.format(name), ""]
    RESULTS_FILE.write_text("\n".join(parts))


def write_section(name: str, body: str) -> None:
    """Replace (or append) section `name` of RESULTS.md, keeping everything else (the
    other benchmark scripts' sections)."""
    start, end = SECTION_START.format(name), SECTION_END.format(name)
    text = RESULTS_FILE.read_text() if RESULTS_FILE.exists() else "# itsup benchmark results\n"
    block = f"{start}\n{body}\n{end}\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS_FILE.write_text(text)


def now() -> str:
    return dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")


# --- the two modes ------------------------------------------------------------------------


def run_main(args: argparse.Namespace) -> None:
    methods = [m for m in METHODS if m in args.only]
    runs: dict[tuple[str, str], list[Run]] = {}
    with bench_environment(args, args.size_mb, "tree") as bench:
        for rep in range(1, args.repeat + 1):
            for method in methods:
                print(f"[{rep}/{args.repeat}] {method} ...", flush=True)
                for phase, run in CYCLES[method](bench, rep).items():
                    runs.setdefault((method, phase), []).append(run)
                    state = f"{run.seconds:.2f} s, {run.peak_rss_kib / 1024:.0f} MiB RSS"
                    print(f"    {phase}: {state if run.ok else run.note}", flush=True)
        tree, source_bytes, area_kind = bench.tree, bench.manifest.bytes, bench.restore_area.kind

    summaries = [Summary(Scenario(m, p), r) for (m, p), r in runs.items()]
    by_key = {(s.scenario.method, s.scenario.phase): s for s in summaries}
    table = results_table(summaries, source_bytes)
    ratios = [target.evaluate(by_key) for target in TARGETS]
    print("\n" + "\n".join(table) + "\n\n" + "\n".join(ratios))

    body = [
        f"## Latest run: {now()}",
        "",
        f"- Machine: {machine_description()}",
        f"- Tools: {tool_versions()}",
        f"- Tree: {tree.describe()}",
        f"- Median of {args.repeat} run(s) per scenario; every backup is a first (full) backup; "
        f"restores go to an empty {area_kind} and are verified (file count, bytes, "
        f"{HASH_SAMPLE}+ sampled hashes, acme.json mode).",
        "- Peak RSS: ru_maxrss from os.wait4 (for pipelines, the largest process).",
        f"- Command: `{command_line()}`",
        "",
        *table,
        "",
        "### Targets",
        "",
        *ratios,
    ]
    write_results({"main": "\n".join(body)}, history_line(tree, by_key))


def history_line(tree: synth.TreeStats, by_key: dict[tuple[str, str], Summary]) -> str:
    parts = []
    for key in sorted(by_key):
        s = by_key[key]
        parts.append(
            f"{key[0]} {key[1]} " + (f"{s.median('seconds'):.1f}s" if s.good else "failed")
        )
    return f"- {now()}, {tree.bytes / MIB:.0f} MiB / {tree.files} files: " + ", ".join(parts)


def run_rss_scaling(args: argparse.Namespace) -> None:
    rows = [
        "| Tree MiB | Files | Backup s | Backup peak RSS MiB | Restore s | "
        "Restore peak RSS MiB | Status |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    peaks: list[float] = []
    for size in args.scaling_sizes:
        with bench_environment(args, size, f"tree-{size}") as bench:
            backups, restores = [], []
            for rep in range(1, args.repeat + 1):
                print(f"[{size} MiB, {rep}/{args.repeat}] itsup ...", flush=True)
                result = itsup_cycle(bench, rep)
                backups.append(result["backup"])
                restores.append(result["restore"])
            tree = bench.tree
        b, r = (
            Summary(Scenario("itsup", "backup"), backups),
            Summary(Scenario("itsup", "restore"), restores),
        )
        cells = []
        for s in (b, r):
            cells += (
                [f"{s.median('seconds'):.2f}", f"{s.median('peak_rss_kib') / 1024:.0f}"]
                if s.good
                else ["-", "-"]
            )
        status = "ok" if b.ok and r.ok else (b.status if not b.ok else r.status)
        rows.append(f"| {tree.bytes / MIB:.0f} | {tree.files} | {' | '.join(cells)} | {status} |")
        if b.good and r.good:
            peaks.append(max(b.median("peak_rss_kib"), r.median("peak_rss_kib")) / 1024)
        print(rows[-1], flush=True)
    verdict = rss_verdict(peaks, len(args.scaling_sizes))
    print("\n" + "\n".join(rows) + "\n\n" + verdict)
    body = [
        f"## Peak RSS scaling: {now()}",
        "",
        f"- Machine: {machine_description()}",
        f"- Small files per tree: {args.small_files}; median of {args.repeat} run(s)",
        f"- Command: `{command_line()}`",
        "",
        *rows,
        "",
        verdict,
    ]
    write_results(
        {"rss-scaling": "\n".join(body)},
        f"- {now()}, RSS scaling {','.join(map(str, args.scaling_sizes))} MiB: peaks "
        f"{', '.join(f'{p:.0f}' for p in peaks) or 'n/a'} MiB",
    )


def rss_verdict(peaks: list[float], expected: int) -> str:
    if len(peaks) != expected or not peaks:
        return "- Peak RSS target: N/A (not every size completed)"
    under = peaks[-1] < RSS_TARGET_MIB
    flat = peaks[-1] <= RSS_FLAT_FACTOR * peaks[0]
    decimal_mb = peaks[-1] * MIB / 1e6
    return (
        f"- Peak RSS at the largest tree: {peaks[-1]:.0f} MiB = {decimal_mb:.0f} MB "
        f"(target < {RSS_TARGET_MIB} MiB) "
        f"**{'PASS' if under else 'FAIL'}**\n"
        f"- Flat with size: largest / smallest = {peaks[-1] / peaks[0]:.3f} "
        f"(target <= {RSS_FLAT_FACTOR}) **{'PASS' if flat else 'FAIL'}**"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark itsup backup/restore.")
    parser.add_argument("--size-mb", type=int, default=1024, help="tree size in MiB")
    parser.add_argument("--small-files", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument(
        "--only", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workdir",
        type=Path,
        help="work folder (kept, tree reused); default: a temp dir in /var/tmp",
    )
    parser.add_argument(
        "--itsup",
        type=Path,
        default=Path(sys.executable).parent / "itsup",
        help="itsup command (default: next to this Python)",
    )
    parser.add_argument("--pause", type=float, default=2.0, help="quiet seconds before a run")
    parser.add_argument(
        "--rss-scaling",
        action="store_true",
        help="only itsup backup+restore peak RSS on trees of --scaling-sizes",
    )
    parser.add_argument(
        "--scaling-sizes", default="1024,2048,4096", help="tree sizes in MiB for --rss-scaling"
    )
    args = parser.parse_args(argv)
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = set(args.only) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {METHODS}")
    args.scaling_sizes = [int(s) for s in args.scaling_sizes.split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    temporary = args.workdir is None
    if temporary:
        args.workdir = Path(tempfile.mkdtemp(prefix="itsup-bench-", dir="/var/tmp"))
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.cleanup_trees = temporary or args.rss_scaling
    try:
        if args.rss_scaling:
            run_rss_scaling(args)
        else:
            run_main(args)
    finally:
        if temporary:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print(f"\nresults written to {RESULTS_FILE.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
