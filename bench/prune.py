"""Prune over thousands of generations on the S3-compatible server the tests run.

    .venv/bin/python bench/prune.py [--generations 5000] [--results bench/RESULTS.md]

Writes N tiny generations (archive, index and a real manifest each; one an
hour, going back from now) straight into a bucket of a loopback S3 server,
then times `itsup backup prune --dry-run` (median of 3) and one real
`itsup backup prune` with a daily/weekly/monthly policy, and checks what is
left is what the policy keeps. The target: the real prune under 30 s at
5,000 generations.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR / "tests"))

from helpers import make_host, make_manifest, s3_config, s3_secrets, write_config  # noqa: E402
from s3server import start_s3_server  # noqa: E402

ITSUP = [str(PROJECT_DIR / ".venv" / "bin" / "itsup")]
PREFIX = "itsup/"
POLICY = "  retention:\n    keep_daily: 7\n    keep_weekly: 4\n    keep_monthly: 12\n"
TARGET_SECONDS = 30.0


def fill(client: object, bucket: str, count: int) -> list[str]:
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    names = [f"backup-{(now - timedelta(hours=i)):%Y-%m-%d-%H%M%S}" for i in range(count)]

    def put(name: str) -> None:
        for suffix, body in (
            ("tar.gz", b"x"),
            ("index.jsonl.gz", b"x"),
            ("manifest.json", make_manifest(generation=name).to_bytes()),
        ):
            client.put_object(Bucket=bucket, Key=f"{PREFIX}{name}.{suffix}", Body=body)  # type: ignore[attr-defined]

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, names))
    return names


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr}")
    return seconds, done.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=5000)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="itsup-bench-prune-") as tmp:
        work = Path(tmp)
        server = start_s3_server(work / "s3")
        try:
            root = work / "host"
            make_host(root)
            s3_secrets(root, server)
            write_config(root, s3_config(server, PREFIX) + POLICY)
            started = time.monotonic()
            names = fill(server.client(), server.bucket, args.generations)
            fill_seconds = time.monotonic() - started
            env = {**os.environ, "ITSUP_ROOT": str(root)}
            dry = []
            for _ in range(3):
                seconds, out = timed([*ITSUP, "backup", "prune", "--dry-run", "--json"], env)
                dry.append(seconds)
            plan = json.loads(out)
            kept = {r["name"] for r in plan["generations"] if r["action"] == "keep"}
            real, _ = timed([*ITSUP, "backup", "prune"], env)
            left = set()
            paginator = server.client().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=server.bucket, Prefix=PREFIX):
                for item in page.get("Contents", []):
                    key = item["Key"].removeprefix(PREFIX)
                    if key.endswith(".manifest.json"):
                        left.add(key.removesuffix(".manifest.json"))
        finally:
            server.stop()
    ok = left == kept
    load = os.getloadavg()[0]
    verdict = "PASS" if real < TARGET_SECONDS and ok else "FAIL"
    lines = [
        f"### Prune over {len(names):,} generations on the loopback S3 server "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, load {load:.1f})",
        "",
        "| step | seconds |",
        "|---|---:|",
        f"| writing {len(names) * 3:,} objects (setup, 16 threads) | {fill_seconds:.1f} |",
        f"| `backup prune --dry-run` (median of 3) | {statistics.median(dry):.2f} |",
        f"| `backup prune` ({len(names) - len(kept):,} generations removed, "
        f"{len(kept)} kept) | {real:.2f} |",
        "",
        f"Target: prune under {TARGET_SECONDS:.0f} s: {verdict} ({real:.1f} s); what is "
        f"left {'equals' if ok else 'DIFFERS FROM'} what the dry run said it keeps.",
        "",
    ]
    print("\n".join(lines))
    if args.results is not None:
        with args.results.open("a") as f:
            f.write("\n" + "\n".join(lines))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
