"""Shared fixtures: a real S3 server on loopback, sample host trees, the CLI.

Services are started by the suite itself. A service that cannot be started
is an error, never a skip: a green run must mean everything was exercised.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from s3server import S3Server, start_s3_server

REPO = Path(__file__).resolve().parent.parent
ITSUP = [sys.executable, "-m", "itsup"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the fault ledger (docs/reliability.md's figures) when asked."""
    import reliability

    reliability.flush()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own: git identity and config, sops keys, ~/.config.

    Nothing the test (or the itsup it runs) does can touch the real user's git
    config or age keys, and nothing from them leaks in.
    """
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(
        "[user]\n\tname = Test Operator\n\temail = ops@example.test\n"
        "[init]\n\tdefaultBranch = main\n"
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("SOPS_DISABLE_VERSION_CHECK", "true")
    for var in (
        "SOPS_AGE_KEY_FILE",
        "SOPS_AGE_KEY",
        "SOPS_AGE_KEY_CMD",
        "ITSUP_AGE_IDENTITY",
        "ITSUP_ROOT",
        "GIT_DIR",
        "GIT_WORK_TREE",
    ):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def s3_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own, so tests never see each other's generations.

    The readable part is the test function's name, cut short; the hash of the full
    node id (file, class, parameters) keeps every test and parametrization apart.
    """
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.originalname)[:40]
    return f"t/{readable}-{digest}/"


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_itsup(
    *args: str | os.PathLike[str],
    root: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 300,
) -> Result:
    """Run the installed `itsup` command as an operator would, in a subprocess."""
    cmd = [*ITSUP]
    if root is not None:
        cmd += ["--root", str(root)]
    cmd += [str(a) for a in args]
    full_env = {**os.environ, **(env or {})}
    full_env.pop("ITSUP_ROOT", None) if root is not None else None
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        input=stdin if stdin is not None else "",
        cwd=str(root or REPO),
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def write_config(root: Path, text: str) -> None:
    (root / "projects").mkdir(parents=True, exist_ok=True)
    (root / "projects" / "itsup.yml").write_text(text)


def s3_config(server: S3Server, prefix: str, extra: str = "") -> str:
    return (
        "backup:\n"
        "  s3:\n"
        f"    bucket: {server.bucket}\n"
        f"    prefix: {prefix}\n"
        "    region: us-east-1\n"
        f"    endpoint: {server.endpoint}\n"
        "    access_key_id: ${S3_KEY_ID}\n"
        "    secret_access_key: ${S3_SECRET}\n"
        f"{extra}"
    )


def s3_secrets(root: Path, server: S3Server) -> None:
    """Credentials go where operators keep them: secrets/itsup.txt."""
    (root / "secrets").mkdir(parents=True, exist_ok=True)
    path = root / "secrets" / "itsup.txt"
    path.write_text(f"S3_KEY_ID={server.access_key}\nS3_SECRET={server.secret_key}\n")
    path.chmod(0o600)


def make_host(root: Path, *, volumes: bool = True) -> Path:
    """A small host tree as the spec lays it out."""
    (root / "projects" / "app").mkdir(parents=True, exist_ok=True)
    (root / "projects" / "app" / "docker-compose.yml").write_text(
        "services:\n  web:\n    image: nginx\n"
    )
    (root / "projects" / "app" / "ingress.yml").write_text("enabled: true\n")
    (root / "projects" / "traefik.yml").write_text("log:\n  level: INFO\n")
    for project in ("app", "blog"):
        up = root / "upstream" / project
        up.mkdir(parents=True, exist_ok=True)
        (up / "docker-compose.yml").write_text(f"services:\n  {project}:\n    image: {project}\n")
        if volumes:
            (up / "volumes" / "data").mkdir(parents=True, exist_ok=True)
            (up / "volumes" / "data" / "db.bin").write_bytes(os.urandom(200_000))
    traefik = root / "proxy" / "traefik"
    traefik.mkdir(parents=True, exist_ok=True)
    (traefik / "traefik.yml").write_text("entryPoints:\n  web:\n    address: ':80'\n")
    (traefik / "dynamic.conf.yaml").write_text("http: {}\n")
    acme = traefik / "acme.json"
    acme.write_text('{"letsencrypt": {"Certificates": []}}\n')
    acme.chmod(0o600)
    (root / "proxy" / "docker-compose.yml").write_text(
        "services:\n  traefik:\n    image: traefik\n"
    )
    (root / "logs").mkdir(exist_ok=True)
    return root
