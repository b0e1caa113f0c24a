"""One million small files: backup and restore time, and memory that stays flat.

Usage (from the project root):

    .venv/bin/python bench/million.py                       # 100,000 then 1,000,000 files
    .venv/bin/python bench/million.py --sizes 20000,100000  # quicker
    .venv/bin/python bench/million.py --workdir /var/tmp/m --keep

For each size N the script builds a host tree (`upstream/bulk/dNNNN/fNNNN`, 1000 files
per folder, 0 - 2 KiB each, half text-like and half random bytes, deterministic from
--seed) and times its creation; backs it up with `itsup backup` to a local target in
the work folder; restores it with `itsup restore all --to DEST` into an empty folder;
checks the restored tree (file count, total bytes, and the bytes of a random sample of
files); and measures each itsup command's wall time and peak RSS (ru_maxrss of the
command, from os.wait4 in a small launcher process, as bench/bench.py does).

Memory must not grow with the number of files: the largest size's peak RSS is compared
with the smallest's (target: at most 2x while the file count grows 10x). Results go to
the `million` section of bench/RESULTS.md; the rest of that file is kept.

It is a benchmark, not a test: nothing here runs under `make test`. A million files take
about 4 GiB of disk (each small file occupies a block) twice, source and restore, plus
the archive; the work folder is removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
RESULTS_FILE = BENCH_DIR / "RESULTS.md"
SECTION = "million"
FILES_PER_DIR = 1000
MAX_FILE = 2048
SAMPLE = 2000
RSS_FLAT_FACTOR = 2.0
MIB = 1 << 20

from bench import (  # noqa: E402 - the same small wait4 launcher and RESULTS.md sections as bench.py
    command_line,
    pass_fail,
    run_measured,
    write_section,
)


@dataclass
class Measured:
    code: int
    seconds: float
    peak_rss_mib: float


@dataclass
class SizeResult:
    files: int
    source_bytes: int
    create_seconds: float
    backup: Measured
    archive_bytes: int
    restore: Measured
    checked: str


def measure(argv: list[str], cwd: Path, log: Path) -> Measured:
    """`argv` under bench.py's launcher: wall seconds and peak RSS; a failure stops the benchmark."""
    env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"}
    run = run_measured(argv, cwd, env, log)
    if not run.ok:
        raise SystemExit(f"{shlex.join(argv)} failed: {run.note}")
    return Measured(0, run.seconds, run.peak_rss_kib / 1024)


def build_tree(root: Path, files: int, seed: int) -> tuple[int, float]:
    """The host tree with `files` small files; (source bytes, seconds taken)."""
    started = time.monotonic()
    rng = random.Random(seed)
    noise = rng.randbytes(1 << 20)
    words = [b"GET", b"/api/v1/items", b"200", b"user=", b"ok", b"\n", b"level=info", b"ms"]
    text = b" ".join(rng.choice(words) for _ in range(200_000))[: 1 << 20]
    (root / "projects").mkdir(parents=True)
    (root / "proxy" / "traefik").mkdir(parents=True)
    (root / "proxy" / "traefik" / "acme.json").write_text("{}\n")
    (root / "proxy" / "traefik" / "acme.json").chmod(0o600)
    bulk = root / "upstream" / "bulk"
    total = 0
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    for d in range((files + FILES_PER_DIR - 1) // FILES_PER_DIR):
        folder = bulk / f"d{d:04d}"
        folder.mkdir(parents=True)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for f in range(min(FILES_PER_DIR, files - d * FILES_PER_DIR)):
                size = rng.randrange(MAX_FILE + 1)
                pool = noise if f % 2 else text
                at = rng.randrange(len(pool) - size)
                fd = os.open(f"f{f:04d}", flags, 0o644, dir_fd=dir_fd)
                os.write(fd, pool[at : at + size])
                os.close(fd)
                total += size
        finally:
            os.close(dir_fd)
    os.sync()
    return total, time.monotonic() - started


def check_restore(source: Path, restored: Path, files: int, total: int, seed: int) -> str:
    """Count and sum the restored files; compare a random sample byte for byte."""
    count = size = 0
    for folder in os.scandir(restored / "upstream" / "bulk"):
        for entry in os.scandir(folder.path):
            count += 1
            size += entry.stat(follow_symlinks=False).st_size
    if (count, size) != (files, total):
        raise SystemExit(f"restore mismatch: {count} files / {size} bytes, {files} / {total}")
    rng = random.Random(seed + 1)
    for _ in range(SAMPLE):
        n = rng.randrange(files)
        rel = Path("upstream/bulk") / f"d{n // FILES_PER_DIR:04d}" / f"f{n % FILES_PER_DIR:04d}"
        if (source / rel).read_bytes() != (restored / rel).read_bytes():
            raise SystemExit(f"restore mismatch: {rel} differs")
    return f"{count} files, {size} bytes, {SAMPLE} sampled files byte-exact"


def remove(path: Path) -> None:
    if path.exists():
        subprocess.run(["rm", "-rf", str(path)], check=True)


def run_size(work: Path, itsup: list[str], files: int, seed: int) -> SizeResult:
    base = work / f"n{files}"
    remove(base)
    root, target, dest, logs = base / "host", base / "target", base / "restore", base / "logs"
    logs.mkdir(parents=True)
    print(f"[{files}] building the tree ...", flush=True)
    total, create_s = build_tree(root, files, seed)
    (root / "projects" / "itsup.yml").write_text(
        f"backup:\n  local:\n    path: {target}\n  compression: true\n"
    )
    print(
        f"[{files}] built in {create_s:.1f} s ({total / MIB:.0f} MiB); backing up ...", flush=True
    )
    backup = measure([*itsup, "--root", str(root), "backup"], root, logs / "backup.log")
    archive = sum(
        p.stat().st_size for p in (target / "itsup").glob("backup-*") if p.name.endswith(".gz")
    )
    print(f"[{files}] backup {backup.seconds:.1f} s; restoring ...", flush=True)
    os.sync()
    restore = measure(
        [*itsup, "--root", str(root), "restore", "all", "--to", str(dest), "--yes"],
        root,
        logs / "restore.log",
    )
    print(f"[{files}] restore {restore.seconds:.1f} s; checking ...", flush=True)
    checked = check_restore(root, dest, files, total, seed)
    return SizeResult(files, total, create_s, backup, archive, restore, checked)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split()[1]
        ram = f"{int(mem) / (1 << 20):.1f} GiB RAM"
    except OSError:
        ram = "? RAM"
    return f"{os.cpu_count()} CPUs ({cpu}), {ram}"


def render(results: list[SizeResult], command: str, fs: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## One million small files: {when}",
        "",
        f"- Machine: {machine()}; work folder on {fs}; load average "
        f"{os.getloadavg()[0]:.1f} at the end (wall times suffer on a shared machine; "
        "peak RSS does not)",
        f"- Tree: `upstream/bulk/dNNNN/fNNNN`, {FILES_PER_DIR} files per folder, 0 - "
        f"{MAX_FILE} B each (half text-like, half random bytes); local target, gzip",
        "- Peak RSS: ru_maxrss of the itsup command (os.wait4); restore goes to an empty "
        "folder on the same disk and is checked (count, bytes, "
        f"{SAMPLE} random files byte for byte)",
        f"- Command: `{command}`",
        "",
        "| Files | Source MiB | Create s | Backup s | Backup files/s | Backup peak RSS MiB "
        "| Archive MiB | Restore s | Restore files/s | Restore peak RSS MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.files:,} | {r.source_bytes / MIB:.0f} | {r.create_seconds:.0f} "
            f"| {r.backup.seconds:.1f} | {r.files / r.backup.seconds:,.0f} "
            f"| {r.backup.peak_rss_mib:.0f} | {r.archive_bytes / MIB:.0f} "
            f"| {r.restore.seconds:.1f} | {r.files / r.restore.seconds:,.0f} "
            f"| {r.restore.peak_rss_mib:.0f} |"
        )
    lines.append("")
    if len(results) > 1:
        small, large = results[0], results[-1]
        grow = large.files / small.files
        for what, a, b in (
            ("backup", small.backup.peak_rss_mib, large.backup.peak_rss_mib),
            ("restore", small.restore.peak_rss_mib, large.restore.peak_rss_mib),
        ):
            ratio = b / a
            verdict = pass_fail(ratio <= RSS_FLAT_FACTOR)
            lines.append(
                f"- {what} peak RSS {a:.0f} -> {b:.0f} MiB for {grow:.0f}x the files: "
                f"{ratio:.2f}x (target <= {RSS_FLAT_FACTOR:g}x) **{verdict}**"
            )
    for r in results:
        lines.append(f"- {r.files:,}: restore checked: {r.checked}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000", help="file counts, comma-separated")
    parser.add_argument("--workdir", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--itsup", help="the itsup command (default: this Python's -m itsup)")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    itsup = shlex.split(args.itsup) if args.itsup else [sys.executable, "-m", "itsup"]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="itsup-million-", dir="/var/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    fs = subprocess.run(
        ["df", "--output=fstype", str(work)], capture_output=True, text=True, check=False
    ).stdout.split()[-1:]
    results = []
    try:
        for files in sizes:
            results.append(run_size(work, itsup, files, args.seed))
            if not args.keep:
                remove(work / f"n{files}")
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    command = command_line("bench/million.py", "DIR")
    body = render(results, command, fs[0] if fs else "?")
    print(body)
    if not args.no_write:
        write_section(SECTION, body)
        print(f"\nresults written to {RESULTS_FILE.relative_to(PROJECT_DIR)}")


if __name__ == "__main__":
    main()
