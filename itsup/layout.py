"""The host tree: where a host root is and what lives in it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from itsup.errors import ConfigError

CONFIG_RELPATH = Path("projects") / "itsup.yml"
# What a state backup holds, relative to the host root, as the spec lists it.
STATE_DIRS = ("upstream", "proxy")


@dataclass(frozen=True)
class Layout:
    """Paths of one host root."""

    root: Path

    @property
    def projects(self) -> Path:
        return self.root / "projects"

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_RELPATH

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def shared_secrets(self) -> Path:
        return self.secrets / "itsup.txt"

    @property
    def upstream(self) -> Path:
        return self.root / "upstream"

    @property
    def proxy(self) -> Path:
        return self.root / "proxy"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def lock_file(self) -> Path:
        return self.root / ".itsup-backup.lock"

    def projects_in_upstream(self) -> list[str]:
        if not self.upstream.is_dir():
            return []
        return sorted(p.name for p in self.upstream.iterdir() if p.is_dir())


def find_root(explicit: str | os.PathLike[str] | None = None, cwd: Path | None = None) -> Layout:
    """Find the host root: `--root`, else ITSUP_ROOT, else walk up to projects/itsup.yml."""
    given = explicit if explicit is not None else os.environ.get("ITSUP_ROOT")
    if given:
        root = Path(given).expanduser().resolve()
        if not (root / CONFIG_RELPATH).is_file():
            raise ConfigError(
                f"{root / CONFIG_RELPATH}: not found; {root} is not an itsup host root",
                hint="point --root (or ITSUP_ROOT) at the folder that holds projects/itsup.yml",
            )
        return Layout(root)
    here = (cwd or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / CONFIG_RELPATH).is_file():
            return Layout(candidate)
    raise ConfigError(
        f"no host root found: neither {here} nor any parent holds {CONFIG_RELPATH}",
        hint="run from inside the host tree, or pass --root / set ITSUP_ROOT",
    )
