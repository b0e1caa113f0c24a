"""Load `projects/{project}/backup.yml`: which databases a project dumps, and how.

The same fixed steps as itsup.yml (`config.py`): read, parse YAML keeping line
numbers, expand `${VAR}` (from the project's secrets, then itsup's, then the
environment), validate, and report every problem as `FILE:LINE: key.path:
message` (exit 4). Values that came from a placeholder print as `***`.

Two forms: itsUP's own one-engine form (`adapter:` and `service:` at the top)
and a `databases:` list; both become a list of `Database`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, SecretStr, ValidationError, model_validator

from itsup.config import (
    Count,
    Seconds,
    Strict,
    expand,
    read_text,
)
from itsup.configcheck import report_problems
from itsup.errors import ConfigError
from itsup.yamldoc import clip, dotted, parse_yaml

BACKUP_FILE = "backup.yml"
Adapter = Literal["postgres", "mysql", "mariadb", "redis", "sqlite", "command"]
SERVER_ADAPTERS = ("postgres", "mysql", "mariadb", "redis")
# The one-engine form's keys (itsUP's own): everything a `databases:` item takes.
_ITEM_KEYS = (
    "adapter",
    "service",
    "user",
    "password",
    "names",
    "host",
    "port",
    "socket",
    "path",
    "dump",
    "restore",
    "idle_timeout",
)


def _below_project(value: str) -> str:
    norm = posixpath.normpath(value)
    if value.startswith("/") or norm == ".." or norm.startswith("../") or norm == ".":
        raise ValueError(f"{clip(value, 80)!r} must be a path below upstream/{{project}}/")
    return norm


RelPath = Annotated[str, AfterValidator(_below_project)]


class Database(Strict):
    adapter: Adapter
    service: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    names: list[str] = Field(default_factory=lambda: ["all"], min_length=1)
    host: str | None = None
    port: Count | None = Field(default=None, ge=1, le=65535)
    socket: str | None = None
    path: RelPath | None = None
    dump: str | None = None
    restore: str | None = None
    idle_timeout: Seconds | None = None

    @model_validator(mode="after")
    def _reachable(self) -> Database:
        direct = self.host is not None or self.socket is not None
        if self.adapter == "sqlite":
            if self.path is None:
                raise ValueError("an sqlite database needs `path:` (below upstream/{project}/)")
            if self.service or direct:
                raise ValueError("an sqlite database takes `path:` only (no service/host)")
        elif self.adapter == "command":
            if not self.service or not self.dump:
                raise ValueError("a command adapter needs `service:` and `dump:`")
        elif bool(self.service) == direct:
            raise ValueError(
                f"a {self.adapter} database needs either `service:` (the engine runs in a "
                "container of the project) or `host:`/`port:`/`socket:` (it runs outside)"
            )
        if self.adapter in ("redis", "sqlite", "command") and self.names != ["all"]:
            raise ValueError(f"`names:` does not apply to the {self.adapter} adapter")
        return self

    @property
    def label(self) -> str:
        """How messages name it: the service, the path, or host:port."""
        if self.service:
            return self.service
        if self.path:
            return self.path
        return self.socket or f"{self.host}:{self.port or ''}".rstrip(":")


class ProjectBackup(Strict):
    databases: list[Database] = Field(default_factory=list)
    # Paths below upstream/{project}/ not copied raw (default: each engine's data
    # folder, found in the compose file).
    exclude: list[RelPath] | None = None
    # Services stopped while the file archive is read, always started again.
    stop: list[str] = Field(default_factory=list)
    idle_timeout: Seconds | None = None


def _one_engine_form(data: dict[str, Any]) -> dict[str, Any]:
    """itsUP's `adapter:` + `service:` at the top, as a one-item `databases:` list."""
    if "adapter" not in data or "databases" in data:
        return data
    own = set(ProjectBackup.model_fields) - {"databases", "idle_timeout"}
    item = {k: v for k, v in data.items() if k not in own and k != "idle_timeout"}
    rest = {k: v for k, v in data.items() if k not in item}
    rest["databases"] = [item]
    return rest


def _item_lines(lines: dict[Any, int]) -> dict[Any, int]:
    """The lines of the one-engine form's keys, as the list form's `databases.0.*`."""
    out = dict(lines)
    for where, line in lines.items():
        if where[:1] and where[0] not in ("exclude", "stop", "idle_timeout"):
            out[("databases", 0, *where)] = line
    out[("databases", 0)] = lines.get(("adapter",), 1)
    return out


def _as_written(problem: str) -> str:
    """A problem of the one-engine form, naming its keys as the operator wrote them."""
    return re.sub(r"^(\S+:\d*: )databases\.0(?:\.|(?=:))", r"\1", problem).replace(": : ", ": ")


def load_project_backup(
    path: Path, lookup: Callable[[str], str | None], secrets_name: str
) -> ProjectBackup:
    """Validate one backup.yml; ConfigError listing every problem (with file and line)."""
    source = str(path)
    data, lines = parse_yaml(
        read_text(path, "the project's backup settings"), source, ("databases", "exclude", "stop")
    )
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:{lines.get((), 1)}: the top level must be a mapping")
    used: set[str] = set()

    def tracked(name: str) -> str | None:
        found = lookup(name)
        if found is not None:
            used.add(found)
        return found

    expanded, undefined, _ = expand(data, tracked)
    problems = [
        (
            lines.get(where) or 0,
            f"{source}:{lines.get(where)}: {dotted(where)}: ${{{clip(name, 80)}}} is not "
            f"defined in {secrets_name} or the environment",
        )
        for where, name in undefined
    ]
    if "adapter" in expanded and "databases" in expanded:
        line = lines.get(("databases",), 0)
        problems.append(
            (line, f"{source}:{line}: databases: give either `adapter:` at the top (one "
             "engine) or a `databases:` list, not both")
        )  # fmt: skip
    shaped = _one_engine_form(expanded)
    one_engine = shaped is not expanded
    if one_engine:  # keys moved into databases[0]: their lines move too
        lines = _item_lines(lines)
    try:
        config = ProjectBackup.model_validate(shaped)
    except ValidationError as exc:
        hidden = {v for v in used if len(v) >= 4}
        skip = {where for where, _ in undefined}
        found = report_problems(exc, shaped, source, lines, skip, hidden, model=ProjectBackup)
        problems += [(n, _as_written(p)) if one_engine else (n, p) for n, p in found]
    if problems:
        raise ConfigError([text for _, text in sorted(problems, key=lambda p: p[0])])
    return config
