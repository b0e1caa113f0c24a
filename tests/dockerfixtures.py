"""Fixtures for tests on real database engines in containers (tests/dockerstack.py).

`make test` (and test-integration, test-e2e) runs `python tests/dockerenv.py up`
before pytest, which installs Docker and Compose when missing, starts a daemon
when none answers and builds the stand-in images once, and `down` afterwards.
The fixtures here only check that all of it is there: under pytest-xdist every
worker is a session of its own, and none of them builds or starts anything. A
missing daemon or image fails the test, never skips it. To run one file by hand:

    python tests/dockerenv.py up && .venv/bin/pytest tests/integration/test_docker_engines.py

A test module uses them with

    pytest_plugins = ("dockerfixtures",)
    pytestmark = pytest.mark.docker
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import dockerenv
import dockerstack
import pytest


@pytest.fixture(scope="session")
def docker_engine() -> list[str]:
    """The compose command, once the daemon answers and the stand-in images are current."""
    up = "run `python tests/dockerenv.py up` first (make test does)"
    if not dockerenv.docker_answers():
        pytest.fail(f"the Docker daemon does not answer `docker info`: {up}", pytrace=False)
    stale = dockerenv.stale_images()
    if stale:
        pytest.fail(
            f"stand-in images missing or out of date: {', '.join(stale)}: {up}", pytrace=False
        )
    try:
        return dockerenv.compose_command()
    except dockerenv.DockerEnvError as e:
        pytest.fail(f"{e}", pytrace=False)


class ProjectFactory(Protocol):
    def __call__(
        self,
        base: str,
        services: Mapping[str, Mapping[str, Any]],
        env: Mapping[str, str] | None = None,
    ) -> Path: ...


@pytest.fixture
def docker_project(docker_engine: list[str], tmp_path: Path) -> Iterator[ProjectFactory]:
    """Writes projects under this test's `upstream/` (unique names) and takes them down after.

    `docker_project("shop", {"db": postgres_service()}, env={...})` returns the
    project folder, written but not started; every project it wrote gets
    `down -v --remove-orphans` and loses its data folders when the test ends.
    """
    made: list[Path] = []

    def make(
        base: str,
        services: Mapping[str, Mapping[str, Any]],
        env: Mapping[str, str] | None = None,
    ) -> Path:
        project = dockerstack.write_project(
            tmp_path, dockerstack.unique_project(base), services, env
        )
        made.append(project)
        return project

    yield make
    failures = []
    for project in reversed(made):
        try:
            dockerstack.down(project)
        except Exception as e:
            failures.append(f"{project.name}: {e}")
    if failures:
        raise AssertionError("taking projects down failed: " + "; ".join(failures))
