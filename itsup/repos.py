"""The git repositories that hold a host's configuration as code, and itsup's rules for them.

projects/ and secrets/ each live in a git work tree (two repositories, or one
holding both). This module finds them, names the remote backups go to, and
keeps the conventions every `itsup snapshot` verb shares: which secrets/
files may be committed, what an age secret key looks like, how backup tags
are named. It runs git only to read; the verbs that write are in actions/.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from itsup.errors import ConfigError
from itsup.git import GitError, Repo, git
from itsup.layout import Layout

TAG_PREFIX = "backup-"
TAG_FORMAT = "backup-%Y%m%d-%H%M%S"
# An age identity: the prefix, then 58 bech32 characters (32 bytes + checksum).
# Matching the whole key (not just the prefix) lets a README mention the prefix.
AGE_KEY_ERE = "AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}"
SECRETS_EXTRAS = (".sops.yaml", ".gitignore")  # hold no secret; staged with *.enc.txt
_CHUNK = 200  # paths per git command line
# The snapshot verbs (snapshot, tags, remote_verify) share one logger: the host
# log names them all "itsup.snapshot".
SNAPSHOT_LOGGER = "itsup.snapshot"


@dataclass(frozen=True)
class Repos:
    """The git work trees that hold projects/ and secrets/ (maybe one and the same)."""

    layout: Layout
    projects: Repo
    secrets: Repo

    @property
    def shared(self) -> bool:
        return self.projects.top == self.secrets.top

    def unique(self) -> list[Repo]:
        if self.shared:
            return [Repo(self.projects.top, "projects/ and secrets/")]
        return [self.projects, self.secrets]

    def holds_projects(self, repo: Repo) -> bool:
        return repo.top == self.projects.top

    def holds_secrets(self, repo: Repo) -> bool:
        return repo.top == self.secrets.top


def find_repos(layout: Layout) -> Repos:
    """The repositories of a host root, or ConfigError saying how to make them."""
    found = {}
    for name, folder in (("projects", layout.projects), ("secrets", layout.secrets)):
        repo = Repo.at(folder, f"{name}/")
        if repo is None:
            state = "is not in a git repository" if folder.is_dir() else "does not exist"
            raise ConfigError(
                f"{folder}: {state}; `itsup snapshot` commits projects/ and secrets/ to git",
                hint="run `itsup init` to set up projects/ and secrets/ as git repositories "
                "with their remotes (or `git init` there and `git remote add origin URL`)",
            )
        found[name] = repo
    return Repos(layout, found["projects"], found["secrets"])


def tracking(repo: Repo) -> tuple[str | None, str | None]:
    """(remote, merge ref) of the current branch, when it tracks one."""
    branch = repo.branch()
    if branch is None:
        return None, None
    remote = repo.run("config", "--get", f"branch.{branch}.remote", check=False) or None
    merge = repo.run("config", "--get", f"branch.{branch}.merge", check=False) or None
    if remote == ".":  # tracks a local branch: nothing off-host
        return None, None
    return remote, merge


def remote_name(repo: Repo) -> str | None:
    """The remote backups go to: the branch's upstream remote, else origin, else the only one."""
    remote, _ = tracking(repo)
    if remote:
        return remote
    if repo.remote_url("origin"):
        return "origin"
    remotes = repo.run("remote", check=False).split()
    return remotes[0] if len(remotes) == 1 else None


def folder_prefix(repo: Repo, folder: Path) -> str:
    """`folder` as a path prefix inside `repo` ("" at its top, else "secrets/" and the like)."""
    rel = repo.rel(folder)
    return "" if rel == "." else rel + "/"


def is_plaintext_secret(path: str, prefix: str) -> bool:
    """A dotenv secret in the clear: `*.txt` under `prefix` that is not `*.enc.txt`."""
    return path.startswith(prefix) and path.endswith(".txt") and not path.endswith(".enc.txt")


def age_key_paths(
    cwd: Path, *where: str, cached: bool = False, label: str = "", check: bool = True
) -> list[str]:
    """The paths `git grep` finds an age secret key in, in the repository at `cwd`.

    It searches the index (`cached`) or the work tree, or the tree named in
    `where`, which also holds the pathspecs (after `--`). A failed grep (not one
    that finds nothing) raises GitError naming `label`, unless `check` is off.
    """
    proc = git(
        "grep", *(["--cached"] if cached else []), "-l", "-z", "-E", "-i", "-e", AGE_KEY_ERE,
        *where, cwd=cwd, check=False,
    )  # fmt: skip
    if check and proc.returncode not in (0, 1):
        raise GitError(f"{label or cwd}: git grep failed: {proc.stderr.decode().strip()}")
    return [p for p in proc.stdout.decode("utf-8", "replace").split("\0") if p]


def literal(paths: Iterable[str]) -> list[str]:
    """Pathspecs that match exactly these paths (no glob, even for `*` in a name)."""
    return [f":(literal){p}" for p in paths]


def chunks(items: list[str]) -> Iterator[list[str]]:
    """`items` in slices short enough for one git command line."""
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]
