"""`itsup snapshot`: the spec's git backup of the configuration as code.

The spec's manual backup, made safe to run unattended:

    git add projects/ secrets/*.enc.txt
    git commit -m "Backup: $(date -Iseconds)"
    git push

and its pre-deployment tag (`git tag backup-$(date +%Y%m%d-%H%M%S)`). The
retention of those tags is in `actions/tags.py`, the "clone it elsewhere and
check" half of the spec's backup verification in `actions/remote_verify.py`.

What is staged: everything in projects/ (its .gitignore applies), and in
secrets/ only `*.enc.txt` (also their deletions), `.sops.yaml` (the public
age recipients) and `.gitignore`, which hold no secret. Before anything is
committed, every staged or tracked path is checked: a plaintext secret
(`secrets/*.txt` that is not `.enc.txt`), an `.enc.txt` without SOPS metadata
(a plaintext file renamed), or an age secret key anywhere stops the run with
the index put back exactly as it was. Messages name paths, never contents.
"""

from __future__ import annotations

import logging
import os
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from itsup import sops
from itsup.errors import ExitCode, ItsupError
from itsup.git import GitError, GitRemoteError, Repo
from itsup.layout import Layout
from itsup.repos import (
    SECRETS_EXTRAS,
    SNAPSHOT_LOGGER,
    TAG_FORMAT,
    Repos,
    age_key_paths,
    chunks,
    find_repos,
    folder_prefix,
    is_plaintext_secret,
    literal,
    remote_name,
    tracking,
)

log = logging.getLogger(SNAPSHOT_LOGGER)


class SnapshotRefused(ItsupError):
    """A safety check failed: nothing was committed."""

    exit_code = ExitCode.FAILURE


def _shown(layout: Layout, repo: Repo, path: str) -> str:
    """A repository path as the operator sees it: relative to the host root."""
    full = repo.top / path
    try:
        return full.relative_to(layout.root.resolve()).as_posix()
    except ValueError:
        return str(full)


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
    prefix = folder_prefix(repo, secrets_dir)
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
            repo.run("add", "-A", "--", *literal([repo.rel(layout.projects)]))
        if repos.holds_secrets(repo):
            enc, extras = _secrets_paths(repo, layout.secrets)
            # -f: an .enc.txt caught by a too-broad `*.txt` ignore rule is still backed
            # up (its contents are checked below: it must carry SOPS metadata).
            for chunk in chunks(enc):
                repo.run("add", "-A", "-f", "--", *literal(chunk))
            if extras:
                repo.run("add", "-A", "--", *literal(extras))


def _staged_present(repo: Repo) -> list[str]:
    """Staged paths that exist in the index (not deletions)."""
    text = repo.run("diff", "--cached", "--name-only", "-z", "--no-renames", "--diff-filter=d")
    return [p for p in text.split("\0") if p]


def _age_keys_staged(repo: Repo, paths: list[str]) -> list[str]:
    found: list[str] = []
    for chunk in chunks(paths):
        found += age_key_paths(repo.top, "--", *literal(chunk), cached=True, label=repo.label)
    return found


def _problems(repos: Repos) -> list[str]:
    """Every reason not to commit what is staged now, one line each with its fix."""
    layout = repos.layout
    problems = []
    for repo in repos.unique():
        top = shlex.quote(str(repo.top))
        if repos.holds_secrets(repo):
            prefix = folder_prefix(repo, layout.secrets)
            for path in repo.tracked(repo.rel(layout.secrets)):
                if is_plaintext_secret(path, prefix):
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
    remote, merge = tracking(repo)
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
