"""Shared fixtures: a real S3 server on loopback, sample hosts, a HOME of the test's own;
and the rules of the three tiers (tests/README.md).

Services are started by the suite itself. A service that cannot be started
is an error, never a skip: a green run must mean everything was exercised.
Under pytest-xdist every worker is a session of its own, so each starts its
own S3 server on a free port and has its own temporary folders.

What the tests call (the `itsup` command, host builders, tree snapshots) is in
helpers.py; import it from there.
"""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# Names test modules once imported from here; they live in helpers.py now.
from helpers import (  # noqa: F401
    ITSUP,
    REPO,
    HostFactory,
    Result,
    Store,
    make_host,
    run_itsup,
    s3_config,
    s3_secrets,
    setup_host,
    write_config,
)
from motoserver import start_moto_server
from s3server import S3Server, start_s3_server

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e")
TARGETS = ("local", "s3")


# -- tiers ------------------------------------------------------------------------------


def tier_of(path: Path) -> str | None:
    """The tier a test file belongs to: the folder below tests/ that holds it."""
    try:
        top = path.resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return top if top in TIERS else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test with its tier and hold each tier to its rules; start slow tests first.

    A test file outside the tier folders, or a unit test that asks for a server, stops
    the run. `slow` tests go first so that under xdist they do not start last and keep
    one worker busy after the others are done (the order is otherwise collection order).
    """
    problems = set()
    for item in items:
        file = item.nodeid.split("::")[0]
        tier = tier_of(item.path)
        if tier is None:
            problems.add(
                f"{file} is in no tier: move it to tests/unit, tests/integration or tests/e2e"
            )
            continue
        item.add_marker(tier)
        if tier == "unit" and "s3_server" in getattr(item, "fixturenames", ()):
            problems.add(f"{file}: a unit test uses no server: move it to tests/integration")
    if problems:
        raise pytest.UsageError("; ".join(sorted(problems)) + " (see tests/README.md)")
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def _no_subprocess(*args: Any, **kwargs: Any) -> None:
    raise AssertionError(
        "a unit test starts no process: move the test to tests/integration "
        "(or tests/e2e when it runs the itsup command)"
    )


@pytest.fixture(autouse=True)
def _unit_tier_rules(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests run in-process only: no subprocess (and, checked at collection, no server)."""
    if request.node.get_closest_marker("unit") is not None:
        monkeypatch.setattr(subprocess.Popen, "__init__", _no_subprocess)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the fault ledger (docs/reliability.md's figures) when asked."""
    import reliability

    reliability.flush()


# -- services and hosts -------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real S3 server per session, that is per xdist worker."""
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server (bucket configuration APIs), one per session, that is per
    xdist worker; its `bucket` is empty: make one with `motoserver.new_bucket`."""
    server = start_moto_server(tmp_path_factory.mktemp("moto"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own, so tests never see each other's generations.

    The readable part is the test function's name, cut short; the hash of the full
    node id (file, class, parameters) keeps every test and parametrization apart.
    """
    digest = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.originalname)[:40]
    return f"t/{readable}-{digest}/"


@pytest.fixture(params=TARGETS)
def new_host(request: pytest.FixtureRequest, tmp_path: Path) -> HostFactory:
    """Builds sample hosts in this test's folder, backing up to one target kind.

    `new_host(name="host", **options)` returns the host's `Store`; the options go to
    `helpers.setup_host` (include_volumes, extra, volumes). A test using it runs
    once per target kind, local and s3; one that needs a single kind says so with
    `@pytest.mark.parametrize("new_host", ["local"], indirect=True)`.
    """
    kind = str(request.param)

    def make(name: str = "host", **kw: Any) -> Store:
        server = request.getfixturevalue("s3_server") if kind == "s3" else None
        prefix = request.getfixturevalue("s3_prefix")
        return setup_host(tmp_path / name, kind, server, prefix, **kw)

    return make


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


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
