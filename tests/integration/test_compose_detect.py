"""Which compose command itsup uses: `docker compose` (v2) when the docker CLI has the
plugin, else `docker-compose` (v1), else one clear error; ITSUP_COMPOSE overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from itsup import compose
from itsup.errors import ConfigError


def tool(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("ITSUP_COMPOSE", raising=False)
    monkeypatch.setattr(compose, "_detected", None)
    return folder


def test_v2_plugin_is_preferred(bin_dir: Path) -> None:
    tool(bin_dir, "docker", '[ "$1 $2" = "compose version" ] && exit 0; exit 1')
    tool(bin_dir, "docker-compose", "exit 0")
    assert compose.compose_command() == ["docker", "compose"]


def test_v1_when_the_cli_has_no_compose_plugin(bin_dir: Path) -> None:
    tool(bin_dir, "docker", "echo \"docker: 'compose' is not a docker command.\" >&2; exit 1")
    tool(bin_dir, "docker-compose", "exit 0")
    assert compose.compose_command() == ["docker-compose"]


def test_neither_is_one_clear_error_and_the_override_wins(
    bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as caught:
        compose.compose_command()
    assert "neither `docker compose` nor `docker-compose`" in caught.value.message
    monkeypatch.setenv("ITSUP_COMPOSE", "podman-compose --podman-path /usr/bin/podman")
    assert compose.compose_command() == ["podman-compose", "--podman-path", "/usr/bin/podman"]
