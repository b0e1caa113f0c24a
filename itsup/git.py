"""The `git` command, run for projects/ and secrets/ (config as code).

A thin wrapper: every call is `git -C <worktree> ...` with prompts off when
nobody is at a terminal, and failures become one GitError whose message
names the repository and quotes git's own reason (with any password in a
URL masked).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from itsup.errors import ConfigError, ExitCode, ItsupError

_CREDENTIALS = re.compile(r"(://)[^/@\s:]+(:[^/@\s]*)?@")
_TIMEOUT = 600


class GitError(ItsupError):
    exit_code = ExitCode.FAILURE


class GitRemoteError(GitError):
    """The remote could not be reached or refused us."""

    exit_code = ExitCode.STORAGE


def mask(text: str) -> str:
    """Hide credentials in URLs (https://user:token@host -> https://***@host)."""
    return _CREDENTIALS.sub(r"\1***@", text)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("GIT_TERMINAL_PROMPT", "1" if sys.stdin.isatty() else "0")
    env["LC_ALL"] = "C"  # stable messages to classify
    return env


def _reason(stderr: str) -> str:
    lines = [
        line.strip()
        for line in stderr.splitlines()
        if line.strip() and not line.startswith(("hint:", "Cloning into"))
    ]
    return mask(" / ".join(lines[-3:])) or "no message"


_REMOTE_TROUBLE = (
    "Could not read from remote",
    "does not appear to be a git repository",
    "unable to access",
    "Connection refused",
    "Could not resolve host",
    "Permission denied",
    "Authentication failed",
    "terminal prompts disabled",
    "repository not found",
    "does not exist",
    "not found",
)


def git(
    *args: str,
    cwd: Path | None = None,
    check: bool = True,
    what: str | None = None,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run git; on failure raise GitError naming `what` (or the folder)."""
    cmd = ["git", *(["-C", str(cwd)] if cwd is not None else []), *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, env=_env(), timeout=_TIMEOUT, input=input, check=False
        )
    except FileNotFoundError:
        raise ConfigError("the git program was not found", hint="install git") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"{what or cwd}: git {args[0]} did not finish in {_TIMEOUT} s") from None
    if check and proc.returncode != 0:
        stderr = proc.stderr.decode("utf-8", "replace")
        reason = _reason(stderr)
        label = what or (str(cwd) if cwd else "git")
        kind = (
            GitRemoteError
            if args[0] in {"clone", "fetch", "pull", "push", "ls-remote"}
            and any(t in stderr for t in _REMOTE_TROUBLE)
            else GitError
        )
        raise kind(f"{label}: git {args[0]} failed: {reason}")
    return proc


def out(*args: str, cwd: Path, what: str | None = None) -> str:
    return git(*args, cwd=cwd, what=what).stdout.decode("utf-8", "replace").strip()


@dataclass(frozen=True)
class Repo:
    """A git work tree (its top folder)."""

    top: Path
    label: str  # how messages name it, e.g. "projects/"

    @classmethod
    def at(cls, folder: Path, label: str) -> Repo | None:
        """The work tree that holds `folder`, or None when it is not in one."""
        if not folder.is_dir():
            return None
        proc = git("rev-parse", "--show-toplevel", cwd=folder, check=False)
        if proc.returncode != 0:
            return None
        return cls(Path(proc.stdout.decode().strip()).resolve(), label)

    def run(self, *args: str, check: bool = True, input: bytes | None = None) -> str:
        proc = git(*args, cwd=self.top, check=check, what=self.label, input=input)
        return proc.stdout.decode("utf-8", "replace").strip()

    def raw(self, *args: str) -> str:
        """Output exactly as git wrote it (for -z lists, where a leading space matters)."""
        return git(*args, cwd=self.top, what=self.label).stdout.decode("utf-8", "replace")

    def ok(self, *args: str) -> bool:
        return git(*args, cwd=self.top, check=False).returncode == 0

    def remote_url(self, remote: str = "origin") -> str | None:
        proc = git("remote", "get-url", remote, cwd=self.top, check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def branch(self) -> str | None:
        proc = git("symbolic-ref", "--quiet", "--short", "HEAD", cwd=self.top, check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def upstream(self) -> str | None:
        proc = git(
            "rev-parse", "--abbrev-ref", "--symbolic-full-name", "@{upstream}",
            cwd=self.top, check=False,
        )  # fmt: skip
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def head(self) -> str | None:
        proc = git("rev-parse", "--verify", "--quiet", "HEAD", cwd=self.top, check=False)
        return proc.stdout.decode().strip() if proc.returncode == 0 else None

    def changes(self, *pathspec: str) -> list[str]:
        """Paths with uncommitted changes (staged, unstaged or untracked-not-ignored)."""
        text = self.raw("status", "--porcelain=v1", "-z", "--no-renames", "--", *pathspec)
        return [entry[3:] for entry in text.split("\0") if len(entry) > 3]

    def tracked(self, *pathspec: str) -> list[str]:
        text = self.raw("ls-files", "-z", "--", *pathspec)
        return [p for p in text.split("\0") if p]

    def staged(self) -> list[str]:
        text = self.raw("diff", "--cached", "--name-only", "-z", "--no-renames")
        return [p for p in text.split("\0") if p]

    def show(self, rev: str, path: str) -> bytes:
        return git("show", f"{rev}:{path}", cwd=self.top, what=self.label).stdout

    def rel(self, path: Path) -> str:
        """`path` relative to the work tree top, as git pathspecs want it."""
        return path.resolve().relative_to(self.top).as_posix() if path != self.top else "."

    def identity_args(self) -> list[str]:
        """`-c user.name/email` when git has no identity configured, so commits still work."""
        if self.ok("config", "user.email") and self.ok("config", "user.name"):
            return []
        host = socket.gethostname() or "localhost"
        return ["-c", "user.name=itsup", "-c", f"user.email=itsup@{host}"]
