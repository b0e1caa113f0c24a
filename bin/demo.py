#!/usr/bin/env python3
"""`make demo`: a real backup and restore of a small sample host, end to end.

Builds `demo-host/` (a sample host tree as the spec lays it out), backs it
up to the embedded local target (`demo-host/backups/`), lists the backups,
restores `proxy/traefik/acme.json` into a scratch folder, and shows that
the restored copy matches the original byte for byte and keeps mode 0600.
Every step runs the real `itsup` command.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = REPO / "demo-host"
SCRATCH = HOST / "restore-check"
ITSUP = [sys.executable, "-m", "itsup", "--root", str(HOST)]


def build_host() -> None:
    shutil.rmtree(HOST, ignore_errors=True)
    files = {
        "projects/itsup.yml": "# No bucket configured: backups go to the local target backups/\n"
        "backup:\n  include_volumes: true\n  compression: true\n",
        "projects/traefik.yml": "log:\n  level: INFO\n",
        "projects/blog/docker-compose.yml": "services:\n  ghost:\n    image: ghost:5\n",
        "projects/blog/ingress.yml": "domain: blog.example.com\n",
        "upstream/blog/docker-compose.yml": "services:\n  ghost:\n    image: ghost:5\n"
        "    labels: [traefik.enable=true]\n",
        "upstream/blog/volumes/content/posts.json": '{"posts": []}\n' * 200,
        "proxy/docker-compose.yml": "services:\n  traefik:\n    image: traefik:v3\n",
        "proxy/traefik/traefik.yml": "entryPoints:\n  websecure:\n    address: ':443'\n",
        "proxy/traefik/routers.conf.yaml": "http:\n  routers: {}\n",
        "proxy/traefik/acme.json": '{"letsencrypt": {"Account": {"Email": "ops@example.com"}, '
        '"Certificates": [{"domain": {"main": "blog.example.com"}, "certificate": "LS0t..."}]}}\n',
    }
    for rel, text in files.items():
        path = HOST / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (HOST / "upstream/blog/volumes/content/images").mkdir(parents=True)
    (HOST / "upstream/blog/volumes/content/images/cover.jpg").write_bytes(os.urandom(512 * 1024))
    (HOST / "proxy/traefik/acme.json").chmod(0o600)
    (HOST / "logs").mkdir()


def itsup(*args: str) -> None:
    print(f"\n$ itsup {' '.join(args)}", flush=True)
    code = subprocess.call([*ITSUP, "-v", *args])
    if code != 0:
        sys.exit(f"demo: itsup {' '.join(args)} failed with exit code {code}")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> int:
    build_host()
    print(f"demo host built in {HOST}")
    itsup("backup")
    itsup("backup", "list")
    itsup("restore", "--path", "proxy/traefik/acme.json", "--to", str(SCRATCH), "--yes")
    original = HOST / "proxy/traefik/acme.json"
    restored = SCRATCH / "proxy/traefik/acme.json"
    same = digest(original) == digest(restored)
    mode = stat.S_IMODE(restored.stat().st_mode)
    print(f"\noriginal  {digest(original)}  {original.relative_to(REPO)}")
    print(f"restored  {digest(restored)}  {restored.relative_to(REPO)}  mode {mode:04o}")
    if not same or mode != 0o600:
        print("demo: the restored acme.json does NOT match", file=sys.stderr)
        return 1
    print("acme.json restored byte for byte, mode 0600 kept.")
    latest = next((HOST / "backups").rglob("latest.tar.gz"))
    print(f"\nWithout itsup: tar -xzf {latest.relative_to(REPO)} proxy/traefik/acme.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
