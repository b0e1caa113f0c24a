"""Start moto's standalone S3 server on loopback, for the bucket-configuration APIs.

The juicefs gateway (s3server.py) serves the data path but not a bucket's
own configuration (lifecycle, default encryption, versioning, public access
block, Object Lock). moto's server does, over real HTTP, so the `itsup`
command reaches it like any S3 endpoint. Each pytest session (each xdist
worker) starts its own on a free port; tests make buckets of their own
(`new_bucket`), since the server's state is shared within the session.

What moto does not enforce is said where a test relies on it (see
tests/e2e/test_bucket.py): it accepts any credentials (no IAM policy is
evaluated), and it checks that a locked write carries Content-MD5 (PutObject
only, not UploadPart) without checking that the digest is right.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from s3server import S3Server, free_port

ACCESS_KEY = "itsupmotoaccess"
SECRET_KEY = "itsupmotosecret-0123456789"
_names = itertools.count(1)


def start_moto_server(workdir: Path) -> S3Server:
    """moto's server on a free loopback port; RuntimeError when it does not start."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(workdir / "moto.log", "wb")  # noqa: SIM115 - lives as long as the server
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    server = S3Server(f"http://127.0.0.1:{port}", "", ACCESS_KEY, SECRET_KEY, proc, workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited: see {workdir / 'moto.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                server.client().list_buckets()
                return server
        except Exception:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"moto server did not start within 30 s: see {workdir / 'moto.log'}")


def new_bucket(server: S3Server, *, lock: bool = False, create: bool = True) -> S3Server:
    """The same server with a bucket name of its own (created unless `create` is false;
    with Object Lock enabled when `lock`)."""
    name = f"itsup-moto-{os.getpid()}-{next(_names)}"
    if create:
        server.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)
    return dataclasses.replace(server, bucket=name)
