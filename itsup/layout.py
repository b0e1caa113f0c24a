"""The host tree: where a host root is and what lives in it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from itsup.errors import ConfigError

CONFIG_RELPATH = Path("projects") / "itsup.yml"
# What a state backup holds, relative to the host root, as the spec lists it.
STATE_DIRS = ("upstream", "proxy")
# What every project folder in projects/ holds (the spec's project layout).
PROJECT_FILES = ("docker-compose.yml", "ingress.yml")
# upstream/{project}/_backup/ holds a generation's database dumps: reserved for them.
DUMP_FOLDER = "_backup"


def is_dump_path(path: str) -> bool:
    """Whether an archive path is a database dump (or their folder): upstream/{p}/_backup/..."""
    parts = path.split("/", 3)
    return len(parts) >= 3 and parts[0] == "upstream" and parts[2] == DUMP_FOLDER


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


@dataclass(frozen=True)
class ProjectCheck:
    """One project folder and which of PROJECT_FILES it lacks (in PROJECT_FILES order)."""

    folder: Path
    missing: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.folder.name


def project_checks(layout: Layout) -> list[ProjectCheck]:
    """Every project folder in projects/, sorted by name, with the files it lacks.

    A project folder is a folder (or a link to one) directly in projects/ whose
    name does not start with "." (`.git` and the like are not projects); plain
    files there are not projects either. No projects/ folder: an empty list.
    Reads the tree and reports, nothing else: each caller decides how severe a
    missing file is.
    """
    if not layout.projects.is_dir():
        return []
    folders = sorted(
        p for p in layout.projects.iterdir() if p.is_dir() and not p.name.startswith(".")
    )
    return [
        ProjectCheck(folder, tuple(f for f in PROJECT_FILES if not (folder / f).is_file()))
        for folder in folders
    ]
