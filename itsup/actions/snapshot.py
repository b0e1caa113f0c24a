"""`itsup snapshot`: the spec's git backup of the configuration as code.

The spec's manual backup, made safe to run unattended:

    git add projects/ secrets/*.enc.txt
    git commit -m "Backup: $(date -Iseconds)"
    git push

and its pre-deployment tag (`git tag backup-$(date +%Y%m%d-%H%M%S)`), the
retention of those tags, and the "clone it elsewhere and check" half of the
spec's backup verification.

What is staged: everything in projects/ (its .gitignore applies), and in
secrets/ only `*.enc.txt` (also their deletions), `.sops.yaml` (the public
age recipients) and `.gitignore`, which hold no secret. Before anything is
committed, every staged or tracked path is checked: a plaintext secret
(`secrets/*.txt` that is not `.enc.txt`), an `.enc.txt` without SOPS metadata
(a plaintext file renamed), or an age secret key anywhere stops the run with
the index put back exactly as it was. Messages name paths, never contents.

Verification clones into a temporary folder without ever checking out a
plaintext secret file, and decrypts every `.enc.txt` in memory (sops reads
from a pipe and writes to one).
"""

from __future__ import annotations

import logging
import os
import shlex
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from itsup import sops
from itsup.errors import ConfigError, ExitCode, IntegrityError, ItsupError, UsageError
from itsup.git import GitError, GitRemoteError, Repo, git, mask
from itsup.layout import Layout

log = logging.getLogger("itsup.snapshot")

TAG_PREFIX = "backup-"
TAG_FORMAT = "backup-%Y%m%d-%H%M%S"
# An age identity: the prefix, then 58 bech32 characters (32 bytes + checksum).
# Matching the whole key (not just the prefix) lets a README mention the prefix.
AGE_KEY_ERE = "AGE-SECRET-KEY-1[02-9AC-HJ-NP-Z]{58}"
SECRETS_EXTRAS = (".sops.yaml", ".gitignore")  # hold no secret; staged with *.enc.txt
PROJECT_FILES = ("docker-compose.yml", "ingress.yml")
_CHUNK = 200  # paths per git command line


class SnapshotRefused(ItsupError):
    """A safety check failed: nothing was committed."""

    exit_code = ExitCode.FAILURE


# -- the repositories ------------------------------------------------------------


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


def _shown(layout: Layout, repo: Repo, path: str) -> str:
    """A repository path as the operator sees it: relative to the host root."""
    full = repo.top / path
    try:
        return full.relative_to(layout.root.resolve()).as_posix()
    except ValueError:
        return str(full)


def _literal(paths: Iterable[str]) -> list[str]:
    return [f":(literal){p}" for p in paths]


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _prefix(repo: Repo, folder: Path) -> str:
    rel = repo.rel(folder)
    return "" if rel == "." else rel + "/"


def _is_plaintext_secret(path: str, prefix: str) -> bool:
    return path.startswith(prefix) and path.endswith(".txt") and not path.endswith(".enc.txt")


def _upstream(repo: Repo) -> tuple[str | None, str | None]:
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
    remote, _ = _upstream(repo)
    if remote:
        return remote
    if repo.remote_url("origin"):
        return "origin"
    remotes = repo.run("remote", check=False).split()
    return remotes[0] if len(remotes) == 1 else None


# -- index guard ---------------------------------------------------------------------


class _SavedIndex:
    """The index file's bytes, put back when a safety check refuses the snapshot."""

    def __init__(self, repo: Repo) -> None:
        raw = Path(repo.run("rev-parse", "--git-path", "index"))
        self.path = raw if raw.is_absolute() else repo.top / raw
        try:
            self.data: bytes | None = self.path.read_bytes()
        except FileNotFoundError:
            self.data = None

    def restore(self) -> None:
        if self.data is None:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + ".itsup-restore")
        tmp.write_bytes(self.data)
        os.replace(tmp, self.path)


# -- staging and the safety checks -------------------------------------------------


def _secrets_paths(repo: Repo, secrets_dir: Path) -> tuple[list[str], list[str]]:
    """(`*.enc.txt` paths, extra paths) to stage in secrets/, present or deleted."""
    prefix = _prefix(repo, secrets_dir)
    tracked = set(repo.tracked(repo.rel(secrets_dir)))
    top_level = {p for p in tracked if p.startswith(prefix) and "/" not in p[len(prefix) :]}
    enc = {prefix + p.name for p in secrets_dir.glob("*.enc.txt") if p.is_file()}
    enc |= {p for p in top_level if p.endswith(".enc.txt")}
    extras = []
    for name in SECRETS_EXTRAS:
        path = prefix + name
        wanted = (secrets_dir / name).is_file() and not repo.ok("check-ignore", "-q", "--", path)
        if path in tracked or wanted:
            extras.append(path)
    return sorted(enc), extras


def _stage(repos: Repos) -> None:
    layout = repos.layout
    for repo in repos.unique():
        if repos.holds_projects(repo):
            repo.run("add", "-A", "--", *_literal([repo.rel(layout.projects)]))
        if repos.holds_secrets(repo):
            enc, extras = _secrets_paths(repo, layout.secrets)
            # -f: an .enc.txt caught by a too-broad `*.txt` ignore rule is still backed
            # up (its contents are checked below: it must carry SOPS metadata).
            for chunk in _chunks(enc):
                repo.run("add", "-A", "-f", "--", *_literal(chunk))
            if extras:
                repo.run("add", "-A", "--", *_literal(extras))


def _staged_present(repo: Repo) -> list[str]:
    """Staged paths that exist in the index (not deletions)."""
    text = repo.run("diff", "--cached", "--name-only", "-z", "--no-renames", "--diff-filter=d")
    return [p for p in text.split("\0") if p]


def _age_keys_staged(repo: Repo, paths: list[str]) -> list[str]:
    found: list[str] = []
    for chunk in _chunks(paths):
        proc = git(
            "grep", "--cached", "-l", "-z", "-E", "-i", "-e", AGE_KEY_ERE, "--", *_literal(chunk),
            cwd=repo.top, check=False,
        )  # fmt: skip
        if proc.returncode == 0:
            found += [p for p in proc.stdout.decode("utf-8", "replace").split("\0") if p]
        elif proc.returncode != 1:
            raise GitError(f"{repo.label}: git grep failed: {proc.stderr.decode().strip()}")
    return found


def _problems(repos: Repos) -> list[str]:
    """Every reason not to commit what is staged now, one line each with its fix."""
    layout = repos.layout
    problems = []
    for repo in repos.unique():
        top = shlex.quote(str(repo.top))
        if repos.holds_secrets(repo):
            prefix = _prefix(repo, layout.secrets)
            for path in repo.tracked(repo.rel(layout.secrets)):
                if _is_plaintext_secret(path, prefix):
                    problems.append(
                        f"{_shown(layout, repo, path)}: a plaintext secret is tracked or staged "
                        f"in git; untrack it with `git -C {top} rm --cached -- "
                        f"{shlex.quote(path)}` (the file stays on disk) and make secrets/.gitignore "
                        "ignore *.txt except *.enc.txt; if it was ever pushed, rotate its secrets"
                    )
        present = _staged_present(repo)
        for path in present:
            if path.endswith(".enc.txt") and not sops.looks_encrypted(repo.show("", path)):
                problems.append(
                    f"{_shown(layout, repo, path)}: is not SOPS-encrypted (no sops "
                    "metadata; a plaintext file with an .enc.txt name?); encrypt the "
                    "plaintext with `itsup encrypt` or `sops --encrypt` instead of renaming it"
                )
        for path in _age_keys_staged(repo, present):
            problems.append(
                f"{_shown(layout, repo, path)}: holds an age secret key (AGE-SECRET-KEY-1...); "
                "keep keys out of git (in ~/.config/sops/age/keys.txt and an offline copy): "
                f"move the file away or `git -C {top} rm --cached -- {shlex.quote(path)}`"
            )
    return problems


# -- snapshot ------------------------------------------------------------------------


@dataclass
class RepoSnapshot:
    label: str
    top: str
    commit: str | None = None  # short id of the backup commit made now
    changes: int = 0  # paths in that commit
    pushed_to: str | None = None  # "origin/main": where the branch goes
    # pushed | up-to-date | no-remote | detached | unreachable | rejected | failed
    push: str = "up-to-date"
    problem: str | None = None  # git's reason when the push did not happen
    tag: str | None = None
    tag_pushed: bool = False


@dataclass
class SnapshotResult:
    message: str
    tag: str | None
    repos: list[RepoSnapshot]
    error: ItsupError | None = None

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return int(self.error.exit_code)
        if any(r.push in ("no-remote", "detached") for r in self.repos):
            return ExitCode.PARTIAL
        return ExitCode.SUCCESS


def backup_time(now: datetime | None = None) -> datetime:
    """Local time with its UTC offset, to the second (like `date -Iseconds`)."""
    return (now or datetime.now()).astimezone().replace(microsecond=0)


def _ahead(repo: Repo) -> bool:
    count = repo.run("rev-list", "--count", "@{upstream}..HEAD", check=False)
    return count.isdigit() and int(count) > 0


def _commit(repo: Repo, message: str) -> tuple[str, int] | None:
    staged = repo.staged()
    if not staged:
        return None
    repo.run(*repo.identity_args(), "commit", "--quiet", "-m", message)
    return repo.run("rev-parse", "--short", "HEAD"), len(staged)


def _tag(repo: Repo, name: str, message: str) -> None:
    existing = repo.run(
        "rev-parse", "--verify", "--quiet", f"refs/tags/{name}^{{commit}}", check=False
    )
    if existing:
        if existing == repo.head():
            return  # made a moment ago for this very commit
        raise GitError(f"{repo.label}: tag {name} already exists on another commit")
    repo.run(*repo.identity_args(), "tag", "-a", name, "-m", message)


def _push(repo: Repo, args: list[str]) -> tuple[str, str | None]:
    try:
        repo.run("push", "--quiet", *args)
    except GitRemoteError as exc:
        return "unreachable", exc.message
    except GitError as exc:
        kind = (
            "rejected"
            if "rejected" in exc.message or "non-fast-forward" in exc.message
            else "failed"
        )
        return kind, exc.message
    return "pushed", None


def _push_branch(repo: Repo, state: RepoSnapshot) -> str | None:
    """Push the branch when it has something the remote lacks; the remote used, or None."""
    if repo.head() is None:
        state.push = "up-to-date"  # an empty repository: nothing to push
        return remote_name(repo)
    branch = repo.branch()
    if branch is None:
        state.push = "detached"
        state.problem = "HEAD is detached (no branch): nothing pushed; check out a branch"
        return None
    remote, merge = _upstream(repo)
    if remote and merge:
        state.pushed_to = f"{remote}/{merge.removeprefix('refs/heads/')}"
        if state.commit is None and not _ahead(repo):
            state.push = "up-to-date"
            return remote
        state.push, state.problem = _push(repo, [remote, f"HEAD:{merge}"])
        return remote
    remote = remote_name(repo)
    if remote is None:
        state.push = "no-remote"
        state.problem = (
            "no remote configured: nothing is pushed off this host (commits stay local); "
            f"add one with `git -C {shlex.quote(str(repo.top))} remote add origin URL`"
        )
        return None
    state.pushed_to = f"{remote}/{branch}"
    state.push, state.problem = _push(repo, ["-u", remote, "HEAD"])
    return remote


def _error(result: SnapshotResult) -> ItsupError | None:
    bad = [r for r in result.repos if r.push in ("unreachable", "rejected", "failed")]
    if not bad:
        return None
    kept = "; ".join(
        f"{r.problem}"
        + (
            f" (the backup commit {r.commit} is kept locally)"
            if r.commit
            else " (commits waiting here are kept locally)"
        )
        for r in bad
    )
    if any(r.push == "unreachable" for r in bad):
        return GitRemoteError(
            f"push failed: {kept}",
            hint="check the network and the remote's address and credentials, then run "
            "`itsup snapshot` again: it pushes commits that are still waiting",
        )
    rejected = [r for r in bad if r.push == "rejected"]
    hint = (
        "the remote has commits this host does not have: run "
        + " and ".join(f"`git -C {shlex.quote(r.top)} pull --rebase`" for r in rejected)
        + ", then `itsup snapshot` again"
        if rejected
        else "fix what git says above, then run `itsup snapshot` again"
    )
    return GitError(f"push failed: {kept}", hint=hint)


def take_snapshot(
    layout: Layout, *, tag: bool = False, note: str | None = None, now: datetime | None = None
) -> SnapshotResult:
    """Stage, check, commit, tag and push; the result says what happened per repository.

    A refused safety check raises SnapshotRefused with nothing committed and the
    index as it was. Push trouble does not raise: it is in `result.error`, so the
    caller can show what was done before failing.
    """
    repos = find_repos(layout)
    when = backup_time(now)
    message = f"Backup: {when.isoformat()}" + (
        f" - {note.strip()}" if note and note.strip() else ""
    )
    tag_name = when.strftime(TAG_FORMAT) if tag else None

    saved = [_SavedIndex(r) for r in repos.unique()]
    try:
        _stage(repos)
        problems = _problems(repos)
    except BaseException:
        for s in saved:
            s.restore()
        raise
    if problems:
        for s in saved:
            s.restore()
        for p in problems:
            log.error("snapshot refused: %s", p, extra={"console": False})
        raise SnapshotRefused(
            f"refusing to commit ({len(problems)} problem(s)):\n  " + "\n  ".join(problems),
            hint="nothing was committed and the git index is as it was; "
            "fix the above and run `itsup snapshot` again",
        )

    result = SnapshotResult(message, tag_name, [])
    for repo in repos.unique():
        state = RepoSnapshot(repo.label, str(repo.top))
        made = _commit(repo, message)
        if made:
            state.commit, state.changes = made
            log.info("%s: committed %s (%d paths): %s", repo.label, made[0], made[1], message)
        if tag_name and repo.head() is not None:
            _tag(repo, tag_name, message)
            state.tag = tag_name
        remote = _push_branch(repo, state)
        if state.push in ("pushed", "up-to-date") and state.tag and remote:
            status, problem = _push(repo, [remote, f"refs/tags/{tag_name}"])
            state.tag_pushed = status == "pushed"
            if problem:
                state.push, state.problem = status, problem
        log.info(
            "%s: push %s%s", repo.label, state.push, f": {state.problem}" if state.problem else ""
        )
        result.repos.append(state)
    result.error = _error(result)
    return result


# -- prune -----------------------------------------------------------------------


@dataclass
class TagInfo:
    name: str
    time: str
    local: bool
    remote: bool


@dataclass
class RepoPrune:
    label: str
    remote: str | None
    kept: list[TagInfo] = field(default_factory=list)
    deleted: list[TagInfo] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # backup-* names without a time


def _tag_time(name: str) -> datetime | None:
    try:
        return datetime.strptime(name, TAG_FORMAT)
    except ValueError:
        return None


def _remote_tags(repo: Repo, remote: str) -> set[str]:
    text = repo.run("ls-remote", "--tags", "--refs", remote, f"refs/tags/{TAG_PREFIX}*")
    names = set()
    for line in text.splitlines():
        _, _, ref = line.partition("\t")
        if ref.startswith(f"refs/tags/{TAG_PREFIX}"):
            names.add(ref.removeprefix("refs/tags/"))
    return names


def prune_tags(
    layout: Layout,
    *,
    keep_last: int | None,
    older_than: int | None,
    dry_run: bool,
    now: datetime | None = None,
) -> list[RepoPrune]:
    """Delete `backup-*` tags beyond the newest `keep_last` and/or older than `older_than` s.

    Both given: a tag goes only when it is beyond keep-last AND older. Tags are
    deleted on the remote first, then locally, so a run cut short is finished by
    the next one.
    """
    if keep_last is None and older_than is None:
        raise UsageError("say which tags to remove: --keep-last N and/or --older-than DURATION")
    repos = find_repos(layout)
    cutoff = (
        (now or datetime.now()) - timedelta(seconds=older_than) if older_than is not None else None
    )
    results = []
    for repo in repos.unique():
        remote = remote_name(repo)
        local = {t for t in repo.run("tag", "-l", f"{TAG_PREFIX}*").split() if t}
        on_remote = _remote_tags(repo, remote) if remote else set()
        state = RepoPrune(repo.label, remote)
        dated = []
        for name in sorted(local | on_remote):
            t = _tag_time(name)
            if t is None:
                state.ignored.append(name)
            else:
                dated.append((t, name))
        dated.sort(reverse=True)
        for i, (t, name) in enumerate(dated):
            info = TagInfo(name, t.isoformat(), name in local, name in on_remote)
            beyond = keep_last is None or i >= keep_last
            old = cutoff is None or t < cutoff
            (state.deleted if beyond and old else state.kept).append(info)
        if not dry_run and state.deleted:
            gone_remote = [t.name for t in state.deleted if t.remote]
            for chunk in _chunks(gone_remote):
                assert remote is not None
                repo.run("push", "--quiet", remote, "--delete", *[f"refs/tags/{n}" for n in chunk])
            gone_local = [t.name for t in state.deleted if t.local]
            for chunk in _chunks(gone_local):
                repo.run("tag", "-d", *chunk)
            log.info(
                "%s: pruned %d backup tag(s): %s",
                repo.label,
                len(state.deleted),
                ", ".join(t.name for t in state.deleted),
            )
        results.append(state)
    return results


# -- verify ----------------------------------------------------------------------


@dataclass
class Check:
    item: str
    status: str  # ok | warn | fail
    detail: str


@dataclass
class VerifyReport:
    projects_url: str
    secrets_url: str
    shared: bool
    checks: list[Check] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    workdir: str | None = None

    def add(self, item: str, status: str, detail: str) -> None:
        self.checks.append(Check(item, status, detail))
        level = {"ok": logging.INFO, "warn": logging.WARNING}.get(status, logging.ERROR)
        log.log(level, "verify %s: %s: %s", item, status, detail, extra={"console": False})

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def warnings(self) -> list[Check]:
        return [c for c in self.checks if c.status == "warn"]

    def error(self) -> ItsupError | None:
        if self.unreachable:
            return GitRemoteError(
                f"snapshot verify: cannot clone {', '.join(self.unreachable)}",
                hint="check the address, the network and this host's credentials for the remote",
            )
        if self.failed:
            return IntegrityError(
                f"snapshot verify: {len(self.failed)} of {len(self.checks)} checks failed: "
                + ", ".join(c.item for c in self.failed),
                hint="a restore from these remotes would be incomplete; fix the items above "
                "and run `itsup snapshot`",
            )
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.error() is None,
            "projects_url": self.projects_url,
            "secrets_url": self.secrets_url,
            "shared": self.shared,
            "failed": len(self.failed),
            "warnings": len(self.warnings),
            "checks": [asdict(c) for c in self.checks],
        }


@dataclass
class _Source:
    """One remote to clone: where it goes in the temporary host root."""

    name: str  # "projects", "secrets" or "host"
    url: str
    dest: Path
    local: Repo | None
    layout: Layout | None  # this host, to look for changes not yet committed
    plaintext_prefix: str | None  # paths under it named *.txt (not .enc.txt) are never checked out


def _clone(src: _Source, report: VerifyReport) -> bool:
    item = f"{src.name} remote"
    shown = mask(src.url)
    try:
        heads = {}
        for line in git("ls-remote", "--heads", src.url, what=shown).stdout.decode().splitlines():
            sha, _, ref = line.partition("\t")
            heads[ref] = sha
    except GitError as exc:
        report.add(item, "fail", exc.message)
        report.unreachable.append(shown)
        return False
    if not heads:
        report.add(item, "fail", f"{shown}: the remote is empty (nothing was ever pushed)")
        return False
    branch_args: list[str] = []
    if src.local is not None:
        _, merge = _upstream(src.local)
        if merge and merge in heads:
            branch_args = ["--branch", merge.removeprefix("refs/heads/")]
    try:
        git(
            "clone", "--quiet", "--depth", "1", "--no-checkout", *branch_args, src.url, str(src.dest),
            what=shown,
        )  # fmt: skip
    except GitError as exc:
        report.add(item, "fail", exc.message)
        report.unreachable.append(shown)
        return False
    names = [
        p
        for p in git("ls-tree", "-r", "-z", "--name-only", "HEAD", cwd=src.dest).stdout.split(b"\0")
        if p
    ]
    keep = [
        p
        for p in names
        if src.plaintext_prefix is None
        or not _is_plaintext_secret(p.decode("utf-8", "surrogateescape"), src.plaintext_prefix)
    ]
    if keep:
        git(
            "checkout", "--quiet", "HEAD", "--pathspec-from-file=-", "--pathspec-file-nul",
            cwd=src.dest, input=b"\0".join(b":(literal)" + p for p in keep),
        )  # fmt: skip
    branch = git("rev-parse", "--abbrev-ref", "HEAD", cwd=src.dest).stdout.decode().strip()
    sha = git("rev-parse", "HEAD", cwd=src.dest).stdout.decode().strip()
    report.add(item, "ok", f"cloned {shown} ({branch} at {sha[:12]})")
    _pushed(src, sha, heads, report)
    return True


def _pushed(src: _Source, tip: str, heads: dict[str, str], report: VerifyReport) -> None:
    """Does the remote hold this host's HEAD, and is anything here left uncommitted?"""
    local = src.local
    if local is None:
        return
    item = f"{src.name} pushed"
    head = local.head()
    if head is None:
        report.add(item, "warn", "the local repository has no commits yet")
    elif head == tip or head in heads.values():
        report.add(item, "ok", f"the remote holds this host's HEAD ({head[:12]})")
    elif (
        git(
            "fetch", "--quiet", "--depth", "1", "origin", head, cwd=src.dest, check=False
        ).returncode
        == 0
    ):  # the remote has it (only a branch tip is advertised; asking for the commit tells)
        report.add(
            item,
            "warn",
            f"the remote holds this host's HEAD ({head[:12]}) but has newer commits: "
            "this host runs older configuration (`git pull` here)",
        )
    else:
        report.add(
            item,
            "warn",
            f"this host's HEAD ({head[:12]}) is not on the remote: run `itsup snapshot`",
        )
    layout = src.layout
    if layout is None:
        return
    pending = []
    if src.name in ("projects", "host"):
        pending += local.changes(local.rel(layout.projects))
    if src.name in ("secrets", "host"):
        secrets_dir = layout.secrets
        if secrets_dir.is_dir():
            prefix = _prefix(local, secrets_dir)
            pending += local.changes(
                *_literal(prefix + n for n in SECRETS_EXTRAS), f"{prefix}*.enc.txt"
            )
    if pending:
        report.add(
            f"{src.name} uncommitted",
            "warn",
            f"{len(pending)} change(s) here are not in git yet (e.g. {pending[0]}): "
            "run `itsup snapshot`",
        )


def _count_vars(plain: bytes) -> int:
    return sum(
        1
        for line in plain.decode("utf-8", "replace").splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )


def _check_config(root: Path, report: VerifyReport, shared: bool) -> None:
    from itsup.config import load_config

    item = "projects/itsup.yml"
    layout = Layout(root)
    if not layout.config_file.is_file():
        detail = "missing from the remote"
        if shared and (root / "itsup.yml").is_file():
            detail += (
                " (this repository has itsup.yml at its top: it is a projects repository; "
                "give the secrets repository with --secrets-url)"
            )
        report.add(item, "fail", detail)
        return
    try:
        config = load_config(layout)
    except ItsupError as exc:
        text = "; ".join(exc.problems) if isinstance(exc, ConfigError) else exc.message
        report.add(item, "fail", text.replace(f"{root}{os.sep}", ""))
        return
    except OSError as exc:
        report.add(item, "fail", f"cannot read: {exc.strerror}")
        return
    targets = [n for n in ("s3", "local") if getattr(config.backup, n, None) is not None]
    report.add(item, "ok", "loads" + (f" (targets: {', '.join(targets)})" if targets else ""))


def _check_projects(root: Path, report: VerifyReport) -> None:
    projects = root / "projects"
    if not projects.is_dir():
        return
    folders = sorted(p for p in projects.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        report.add("projects/", "warn", "no project folders in the remote")
    for folder in folders:
        missing = [f for f in PROJECT_FILES if not (folder / f).is_file()]
        item = f"projects/{folder.name}"
        if missing:
            report.add(item, "fail", f"missing {' and '.join(missing)}")
        else:
            report.add(item, "ok", " and ".join(PROJECT_FILES) + " present")


def _check_secrets(root: Path, report: VerifyReport) -> None:
    secrets_dir = root / "secrets"
    if not secrets_dir.is_dir():
        report.add("secrets/", "fail", "no secrets/ folder in the remote")
        return
    try:
        keys = sops.recipients(secrets_dir)
    except ItsupError as exc:
        report.add("secrets/.sops.yaml", "fail", exc.message.replace(f"{root}{os.sep}", ""))
    else:
        if (secrets_dir / sops.SOPS_CONFIG).is_file():
            report.add("secrets/.sops.yaml", "ok", f"{len(keys)} age recipient(s)")
        else:
            report.add(
                "secrets/.sops.yaml",
                "warn",
                "missing: after a restore, new secrets have no recipients to encrypt to",
            )
    files = sorted(p for p in secrets_dir.glob("*.enc.txt") if p.is_file())
    if not files:
        report.add("secrets/*.enc.txt", "warn", "no encrypted secrets in the remote")
    for path in files:
        where = f"secrets/{path.name}"
        try:
            plain = sops.decrypt(path.read_bytes(), where, secrets_dir)
        except ItsupError as exc:
            report.add(where, "fail", exc.message.removeprefix(f"{where}: "))
            continue
        except OSError as exc:
            report.add(where, "fail", f"cannot read: {exc.strerror}")
            continue
        report.add(where, "ok", f"decrypts ({_count_vars(plain)} variable(s))")


def _check_leaks(sources: list[_Source], report: VerifyReport) -> None:
    """Plaintext secrets and age keys committed in the remotes (read from git, not disk)."""
    leaks = 0
    for src in sources:
        where = "" if src.name == "host" else f"{src.name}/"
        if src.plaintext_prefix is not None:
            text = git("ls-tree", "-r", "-z", "--name-only", "HEAD", cwd=src.dest).stdout.decode(
                "utf-8", "replace"
            )
            for path in (p for p in text.split("\0") if p):
                if _is_plaintext_secret(path, src.plaintext_prefix):
                    leaks += 1
                    report.add(
                        f"{where}{path}",
                        "fail",
                        "a plaintext secret is committed in the remote: `git rm --cached` it, "
                        "push, and rotate the secrets in it (the history still holds it)",
                    )
        proc = git(
            "grep", "-l", "-z", "-E", "-i", "-e", AGE_KEY_ERE, "HEAD", "--",
            cwd=src.dest, check=False,
        )  # fmt: skip
        for hit in (p for p in proc.stdout.decode("utf-8", "replace").split("\0") if p):
            leaks += 1
            report.add(
                f"{where}{hit.removeprefix('HEAD:')}",
                "fail",
                "holds an age secret key: remove it from the repository and make a new key",
            )
    if not leaks:
        report.add("committed secrets", "ok", "no plaintext *.txt secret and no age secret key")


@contextmanager
def _workspace(workdir: Path | None) -> Iterator[Path]:
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="itsup-verify-") as tmp:
            yield Path(tmp) / "host"
        return
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        raise UsageError(f"{workdir}: exists and is not an empty folder")
    workdir.mkdir(parents=True, exist_ok=True)
    yield workdir


def verify_remotes(
    layout: Layout | None,
    *,
    projects_url: str | None = None,
    secrets_url: str | None = None,
    workdir: Path | None = None,
) -> VerifyReport:
    """Clone the remotes into a scratch host root and check a restore would work."""
    repos = None
    if layout is not None:
        try:
            repos = find_repos(layout)
        except ConfigError:
            if projects_url is None:
                raise  # nothing to verify without a remote
    local_projects = repos.projects if repos else None
    local_secrets = repos.secrets if repos else None
    if projects_url is None and local_projects is not None:
        name = remote_name(local_projects)
        projects_url = local_projects.remote_url(name) if name else None
    if projects_url is None:
        raise ConfigError(
            "projects/: no remote to verify",
            hint="add one with `git remote add origin URL` (or `itsup init`), "
            "or pass --projects-url",
        )
    if secrets_url is None:
        if local_secrets is not None:
            name = remote_name(local_secrets)
            secrets_url = local_secrets.remote_url(name) if name else None
            if secrets_url is None:
                raise ConfigError(
                    "secrets/: no remote to verify",
                    hint="add one with `git remote add origin URL`, or pass --secrets-url",
                )
        else:
            secrets_url = projects_url  # no host here: one repository holds both
    shared = secrets_url == projects_url
    report = VerifyReport(mask(projects_url), mask(secrets_url), shared)
    with _workspace(workdir) as clone:
        if workdir is not None:
            report.workdir = str(workdir)
        root = clone
        if shared:
            local = None
            if repos is not None and repos.shared and layout is not None:
                local = Repo(repos.projects.top, "projects/ and secrets/")
                inner = local.rel(layout.root)  # the repository may hold more than the host
                root = clone if inner == "." else clone / inner
            prefix = root.relative_to(clone).as_posix() + "/secrets/"
            prefix = prefix.removeprefix("./")
            sources = [_Source("host", projects_url, clone, local, layout, prefix)]
        else:
            sources = [
                _Source("projects", projects_url, root / "projects", local_projects, layout, None),
                _Source("secrets", secrets_url, root / "secrets", local_secrets, layout, ""),
            ]
        cloned = [src for src in sources if _clone(src, report)]
        names = {src.name for src in cloned}
        if names & {"projects", "host"}:
            _check_config(root, report, shared)
            _check_projects(root, report)
        if names & {"secrets", "host"}:
            _check_secrets(root, report)
        if cloned:
            _check_leaks(cloned, report)
    return report
