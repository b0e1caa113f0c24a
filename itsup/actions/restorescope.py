"""What a restore writes and where: its scope (all, proxy, a project, a path; with,
without or only the database dumps) and its destination (the host root, or a
folder outside the host's live state)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from itsup.errors import UsageError
from itsup.layout import STATE_DIRS, Layout, is_dump_path


@dataclass(frozen=True)
class Scope:
    """What part of a generation to restore, as a path prefix ("" for all)."""

    prefix: str
    label: str
    # Database dumps (upstream/{project}/_backup/): "with" the rest, "without"
    # them (--no-databases), or "only" them (--databases-only).
    dumps: str = "with"

    def _under(self, path: str) -> bool:
        return not self.prefix or path == self.prefix or path.startswith(self.prefix + "/")

    def selects(self, path: str) -> bool:
        if self.dumps != "with" and is_dump_path(path) != (self.dumps == "only"):
            return False
        return self._under(path)

    def ancestor(self, path: str) -> bool:
        above = bool(self.prefix) and self.prefix.startswith(path + "/")
        if self.dumps != "only" or above:
            return above
        # Only dumps: the folders they sit in, upstream/ and upstream/{project}/.
        project = path.startswith("upstream/") and path.count("/") == 1
        return path == "upstream" or (project and self._under(path))

    def writes(self, path: str) -> bool:
        """Whether a restore of this scope writes `path` (selected, or a folder above it)."""
        return self.selects(path) or self.ancestor(path)


def no_scope(layout: Layout | None) -> UsageError:
    """The error for a restore that does not say what to restore (never "everything")."""
    names = _project_names(layout) if layout is not None else []
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    project = f"a project (e.g. {shown})" if names else "a project name"
    return UsageError(
        f"say what to restore: all, proxy, {project} or --path PATH",
        hint="`itsup restore all --dry-run` shows what restoring everything would change",
    )


def _project_names(layout: Layout) -> list[str]:
    """Projects of this host, from its own tree (no storage access): upstream/ folders,
    else projects/ folders holding a docker-compose.yml."""
    try:
        names: set[str] = set()
        if layout.upstream.is_dir():
            names.update(p.name for p in layout.upstream.iterdir() if p.is_dir())
        if layout.projects.is_dir():
            names.update(
                p.name for p in layout.projects.iterdir() if (p / "docker-compose.yml").is_file()
            )
    except OSError:
        return []
    return sorted(names)


def scope_for(what: str | None, path: str | None, root: Path) -> Scope:
    if path is not None:
        if what not in (None, "all"):
            raise UsageError(
                "give either a restore target (all, proxy, PROJECT) or --path, not both"
            )
        p = Path(path)
        if p.is_absolute():
            try:
                p = p.relative_to(root)
            except ValueError:
                raise UsageError(f"--path {path}: not inside the host root {root}") from None
        parts = [x for x in p.as_posix().split("/") if x not in ("", ".")]
        if not parts or ".." in parts:
            raise UsageError(
                f"--path {path}: give a path inside the backup, such as proxy/traefik/acme.json"
            )
        return Scope("/".join(parts), "/".join(parts))
    if what is None:
        raise no_scope(None)
    if what == "all":
        return Scope("", "everything")
    if what == "proxy":
        return Scope("proxy", "proxy/")
    if "/" in what or what in (".", ".."):
        raise UsageError(f"{what!r} is not a project name; use --path for a file or folder")
    return Scope(f"upstream/{what}", f"project {what} (upstream/{what})")


def with_dumps(scope: Scope, databases: str) -> Scope:
    """The scope with the dumps in, out, or alone, as `--no-databases` and
    `--databases-only` ask (into another folder they are extracted as files)."""
    if databases not in ("load", "skip", "only"):
        raise UsageError(f"databases={databases!r}: expected load, skip or only")
    mode = {"load": "with", "skip": "without", "only": "only"}[databases]
    if mode == "with":
        return scope
    label = f"{scope.label}, {'database dumps only' if mode == 'only' else 'without databases'}"
    return Scope(scope.prefix, label, mode)


def destination(layout: Layout, to: str | None) -> Path:
    """Where a restore writes: the host root, or `to` (symlinks and `..` resolved).

    `to` inside the host's upstream/ or proxy/ is refused: the next backup would
    store the restored copy as live state (a project, or part of the proxy).
    """
    if not to:
        return layout.root
    dest = Path(to).expanduser().resolve()
    for top in STATE_DIRS:
        for state in dict.fromkeys((layout.root / top, (layout.root / top).resolve())):
            if dest == state or state in dest.parents:
                became = "a project" if top == "upstream" else "part of the proxy"
                raise UsageError(
                    f"--to {to}: {dest} is inside {state}, which itsup backs up as live "
                    f"state: the next backup would store the restored copy as {became}; "
                    "nothing was restored",
                    hint="restore into a folder outside the host's upstream/ and proxy/, "
                    "e.g. --to /tmp/check, or into the host root itself (no --to)",
                )
    return dest
