"""Several targets: a backup to two targets against a backup to one, side by side.

Usage (from the project root):

    .venv/bin/python bench/targets.py                    # 1 GiB tree, 3 runs each
    .venv/bin/python bench/targets.py --size-mb 256 --small-files 5000 --repeat 1   # quick

The tree is bench.py's (`synth.py`, same parameters and seed). Two pairs are measured,
their runs interleaved (one, two, one, two, ...) so that a change in the machine's load
hits both sides alike:

- folders: `itsup backup --target a` (one folder) against `itsup backup` to folders a
  and b, each on a tmpfs of its own (mounted for the run; two folders under /dev/shm
  when mounting is not allowed);
- S3 + folder: `itsup backup --target s3` (the S3 server on loopback) against
  `itsup backup` to s3 and folder a.

Every run is a first backup: the targets are emptied before it. The figure is the
median wall time of `--repeat` runs; the target (issue 12, item 7) is two targets in
at most 1.2x the time of one. Results go to the `targets` section of bench/RESULTS.md;
the rest of the file is kept. It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench import (  # bench.py puts tests/ and bench/ on the path, then imports these
    PROJECT_DIR,
    RESULTS_FILE,
    S3Server,
    machine_description,
    pass_fail,
    run_measured,
    start_s3_server,
    subprocess_env,
    synth,
    write_section,
)

SECTION = "targets"
PREFIX = "bench-targets/"
GOAL = 1.2


def config(server: S3Server, a: Path, b: Path, names: tuple[str, ...]) -> str:
    """itsup.yml with the targets `names` (of s3, a, b), in that order."""
    targets = {
        "s3": (
            "    s3:\n"
            f"      url: s3://{server.bucket}/{PREFIX.rstrip('/')}\n"
            f"      endpoint: {server.endpoint}\n"
            "      access_key_id: ${AWS_ACCESS_KEY_ID}\n"
            "      secret_access_key: ${AWS_SECRET_ACCESS_KEY}\n"
        ),
        "a": f"    a: file://{a}/itsup\n",
        "b": f"    b: file://{b}/itsup\n",
    }
    return "backup:\n  include_volumes: true\n  compression: true\n  targets:\n" + "".join(
        targets[n] for n in names
    )


@contextlib.contextmanager
def two_tmpfs(workdir: Path, size_mb: int) -> Iterator[tuple[Path, Path, str]]:
    """Two folders, each on a tmpfs of its own when mounting is allowed."""
    folders = [workdir / "tmpfs-a", workdir / "tmpfs-b"]
    mounted: list[Path] = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb * 2}m", "tmpfs", str(folder)],
            capture_output=True,
        )
        if done.returncode == 0:
            mounted.append(folder)
    if len(mounted) == 2:
        how = "two tmpfs mounts of their own"
    else:
        for folder in mounted:
            subprocess.run(["umount", str(folder)], check=False)
        mounted = []
        shm = Path(tempfile.mkdtemp(prefix="itsup-targets-", dir="/dev/shm"))
        folders = [shm / "a", shm / "b"]
        how = "two folders on /dev/shm (mounting a tmpfs was not allowed)"
    try:
        yield folders[0], folders[1], how
    finally:
        for folder in mounted:
            subprocess.run(["umount", str(folder)], check=False)
        if not mounted:
            shutil.rmtree(folders[0].parent, ignore_errors=True)


def empty(server: S3Server, *folders: Path) -> None:
    for folder in folders:
        shutil.rmtree(folder / "itsup", ignore_errors=True)
    client = server.client()
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=server.bucket, Prefix=PREFIX
    ):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=server.bucket, Key=obj["Key"])


def one_run(
    itsup: Path, root: Path, env: dict[str, str], logs: Path, label: str, target: str | None
) -> float:
    argv = [str(itsup), "--root", str(root), "backup"] + (["--target", target] if target else [])
    os.sync()
    time.sleep(1)
    run = run_measured(argv, root, env, logs / f"{label}.log")
    if not run.ok:
        raise SystemExit(f"{label}: {run.note}")
    return run.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--small-files", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--itsup", type=Path, default=Path(sys.executable).parent / "itsup")
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="itsup-targets-", dir="/var/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    server = start_s3_server(workdir / "s3")
    try:
        with two_tmpfs(workdir, args.size_mb) as (a, b, how):
            root = workdir / "tree"
            shutil.rmtree(root, ignore_errors=True)
            print(f"building a {args.size_mb} MiB tree ...", flush=True)
            tree = synth.build_tree(
                root, args.size_mb, args.small_files, args.seed, config(server, a, b, ("a",))
            )
            env = subprocess_env(server, workdir)
            pairs = {
                "folders": (("a", "one folder (a)"), (None, "two folders (a + b)")),
                "s3": (("s3", "S3 alone"), (None, "S3 + folder (a)")),
            }
            configured = {"folders": ("a", "b"), "s3": ("s3", "a")}
            times: dict[str, list[float]] = {}
            for rep in range(args.repeat):
                for pair, sides in pairs.items():
                    itsup_yml = config(server, a, b, configured[pair])
                    (root / "projects" / "itsup.yml").write_text(itsup_yml)
                    for target, label in sides:
                        empty(server, a, b)
                        seconds = one_run(
                            args.itsup, root, env, logs, f"{pair}-{rep}-{target}", target
                        )
                        times.setdefault(label, []).append(seconds)
                        print(f"  {label}: {seconds:.2f} s", flush=True)
            body = report(args, tree, how, pairs, times)
            print(body)
            if not args.no_write:
                write_section(SECTION, body)
                print(f"results written to {RESULTS_FILE.relative_to(PROJECT_DIR)}")
    finally:
        server.stop()
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def report(
    args: argparse.Namespace,
    tree: synth.TreeStats,
    how: str,
    pairs: dict[str, tuple[tuple[str | None, str], tuple[str | None, str]]],
    times: dict[str, list[float]],
) -> str:
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load = " - ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## Several targets: {stamp}",
        "",
        f"- Machine: {machine_description()}; Python {platform.python_version()}",
        f"- Tree: {tree.describe()}",
        f"- Folders: {how}; S3: the suite's S3 server on loopback, on the same cores",
        f"- Median of {args.repeat} run(s), one and two interleaved; every backup a first one; "
        f"load average at the end {load}",
        f"- Command: `.venv/bin/python bench/targets.py --size-mb {args.size_mb} "
        f"--small-files {args.small_files} --repeat {args.repeat}`",
        "",
        "| Pair | One target | s | Two targets | s | Ratio | Target | Status |",
        "|---|---|---:|---|---:|---:|---|---|",
    ]
    for pair, ((_t1, one), (_t2, two)) in pairs.items():
        m1, m2 = statistics.median(times[one]), statistics.median(times[two])
        ratio = m2 / m1
        status = pass_fail(ratio <= GOAL)
        lines.append(
            f"| {pair} | {one} | {m1:.2f} | {two} | {m2:.2f} | {ratio:.2f} | <= {GOAL}x | "
            f"{status} |"
        )
    lines += ["", "Runs (seconds): " + "; ".join(
        f"{label}: {', '.join(f'{s:.2f}' for s in runs)}" for label, runs in times.items()
    )]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
