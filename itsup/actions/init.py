"""`itsup init`: clone (or update) projects/ and secrets/ into a host root, then check it.

Safe to run again: a folder that is already a checkout of the given
repository is updated with a fast-forward (`git fetch` + `git merge
--ff-only`, which is what `git pull --ff-only` does); one with uncommitted
changes is left alone and reported; anything that is not what the operator
asked for (another origin, a folder that is not a repository, a branch that
has diverged) is refused before it is touched. Nothing is ever forced.

Two ways to keep the config: two repositories (projects/ and secrets/, each
its own), or one repository holding both folders at its top, checked out
into the host root itself (`--repo-url`).

After the checkouts: `secrets/.gitignore` keeps plaintext `*.txt` out of git
(while `*.enc.txt` are committed), verified with `git check-ignore`; then the
layout is checked item by item and the next steps are listed.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from itsup import sops
from itsup.errors import ConfigError, ExitCode, ItsupError, UsageError
from itsup.fsutil import atomic_write
from itsup.git import GitError, GitRemoteError, Repo, git, mask
from itsup.layout import PROJECT_FILES, Layout, project_checks

Status = Literal["ok", "info", "warning", "error"]
Kind = Literal["absent", "own", "shared", "foreign"]

PROJECTS = "projects/"
SECRETS = "secrets/"
BOTH = "projects/ + secrets/"

GITIGNORE = ".gitignore"
_IGNORE_HEADER = "# itsup: plaintext secrets never go into git; SOPS-encrypted *.enc.txt do"
# Order matters: the last matching line wins, so `!*.enc.txt` follows `*.txt`.
IGNORE_LINES = (
    "*.txt",  # plaintext dotenv secrets (written by `itsup decrypt`)
    "!*.enc.txt",  # the SOPS-encrypted files: these are committed
    "*.txt.tmp",
    ".*.itsup-*.tmp",  # itsup's own atomic-write temporaries
    "*.txt~",  # editor backups of plaintext
    ".*.txt.sw?",
)
_MANAGED = {*IGNORE_LINES, _IGNORE_HEADER}


@dataclass(frozen=True)
class Item:
    """One line of the report."""

    name: str
    status: Status
    message: str
    hint: str | None = None


@dataclass
class InitResult:
    root: Path
    items: list[Item] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)
    # projects/itsup.yml missing or invalid: one `FILE:LINE: key: message` each (exit 4).
    config_problems: list[str] = field(default_factory=list)
    # Something was not updated because it holds local changes (exit 3).
    partial: bool = False

    @property
    def exit_code(self) -> ExitCode:
        if self.config_problems:
            return ExitCode.CONFIG
        return ExitCode.PARTIAL if self.partial else ExitCode.SUCCESS

    def add(self, name: str, status: Status, message: str, hint: str | None = None) -> None:
        self.items.append(Item(name, status, message, hint))


@dataclass
class _Checkout:
    """What to do for one repository."""

    label: str
    folder: Path  # the work tree's top, existing or to be
    url: str | None
    action: Literal["clone", "pull", "adopt"]
    repo: Repo | None = None
    scopes: tuple[str, ...] = ()  # for a shared repository: the folders that count
    secrets_in: bool = False  # this work tree holds secrets/


# -- where -----------------------------------------------------------------------


def host_root(given: str | os.PathLike[str] | None) -> Path:
    """The host root for init: --root / ITSUP_ROOT, else the current folder.

    No walk up to projects/itsup.yml: before init there may be none.
    """
    return Path(given if given else Path.cwd()).expanduser().absolute()


def _is_empty(folder: Path) -> bool:
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def _inspect(folder: Path, label: str) -> tuple[Kind, Repo | None]:
    """What `folder` is: absent (or empty), its own work tree, part of a bigger one, or neither."""
    if folder.exists() and not folder.is_dir():
        raise ItsupError(
            f"{label}: {folder} is a file, not a folder; nothing was changed",
            hint="move it aside and run itsup init again",
        )
    if _is_empty(folder):
        return "absent", None
    repo = Repo.at(folder, label)
    if repo is None:
        if (folder / ".git").exists():
            # A repository git will not open (often "dubious ownership"): say why.
            git("rev-parse", "--show-toplevel", cwd=folder, what=label)
        return "foreign", None
    if repo.top == folder.resolve():
        return "own", repo
    if repo.tracked(repo.rel(folder)):
        return "shared", Repo(repo.top, BOTH)
    return "foreign", None  # inside another repository that does not track it


def missing_checkouts(root: Path) -> list[str]:
    """The folders (`projects/`, `secrets/`) that init needs a URL for."""
    layout = Layout(root)
    kinds = {
        PROJECTS: _inspect(layout.projects, PROJECTS)[0],
        SECRETS: _inspect(layout.secrets, SECRETS)[0],
    }
    if "shared" in kinds.values():
        return []  # one repository holds both; a missing folder comes with it
    return [label for label, kind in kinds.items() if kind == "absent"]


# -- URLs ------------------------------------------------------------------------

_USERINFO = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/@]*@", re.I)
_SCP = re.compile(r"^[^/:]+:")  # git@host:org/repo


def _norm_url(url: str) -> str:
    """A URL as compared for "same repository": no credentials, no trailing / or .git."""
    text = _USERINFO.sub(r"\1", url.strip())
    if text.lower().startswith("file://"):
        text = text[len("file://") :]
    elif "://" not in text and _SCP.match(text) is None:
        text = str(Path(text).expanduser().resolve())
    text = text.rstrip("/")
    return text.removesuffix(".git").rstrip("/")


def same_url(a: str, b: str) -> bool:
    return _norm_url(a) == _norm_url(b)


def _check_origin(repo: Repo, url: str | None, where: Path) -> None:
    origin = repo.remote_url()
    if url is None:
        return
    if origin is None:
        raise UsageError(
            f"{repo.label}: {where} is a git repository without an 'origin' remote; "
            "nothing was changed",
            hint=f"add it with `git -C {where} remote add origin URL`, then run itsup init again",
        )
    if not same_url(origin, url):
        raise UsageError(
            f"{repo.label}: is a checkout of {mask(origin)}, not of {mask(url)}; "
            "nothing was changed",
            hint="pass the URL it was cloned from, or move the folder aside to clone the other "
            "repository",
        )


# -- planning --------------------------------------------------------------------


def _refuse_foreign(label: str, folder: Path) -> ItsupError:
    return ItsupError(
        f"{label}: {folder} exists and is not empty, but it is not a git checkout; "
        "nothing was changed",
        hint=f"move it aside (e.g. `mv {folder} {folder}.old`) and run itsup init again",
    )


def _plan_single(root: Path, url: str) -> _Checkout:
    layout = Layout(root)
    for label, folder in ((PROJECTS, layout.projects), (SECRETS, layout.secrets)):
        kind, _ = _inspect(folder, label)
        if kind == "own":
            raise UsageError(
                f"{label}: is a repository of its own, so this host keeps projects/ and "
                "secrets/ in two repositories; nothing was changed",
                hint="use --projects-url and --secrets-url (or no option) instead of --repo-url",
            )
    if _is_empty(root):
        return _Checkout(BOTH, root, url, "clone", secrets_in=True)
    repo = Repo.at(root, BOTH)
    if repo is not None and repo.top == root.resolve():
        _check_origin(repo, url, root)
        return _Checkout(BOTH, root, url, "pull", repo, ("projects", "secrets"), True)
    if repo is not None:
        raise ItsupError(
            f"{root} is inside the git repository {repo.top}; --repo-url checks a repository "
            "out into the host root itself; nothing was changed",
            hint="choose a host root outside that repository, or use --projects-url and "
            "--secrets-url",
        )
    return _Checkout(BOTH, root, url, "adopt", secrets_in=True)


def _plan_separate(
    root: Path, projects_url: str | None, secrets_url: str | None
) -> list[_Checkout]:
    layout = Layout(root)
    wanted = ((PROJECTS, layout.projects, projects_url), (SECRETS, layout.secrets, secrets_url))
    inspected = [(label, folder, url, *_inspect(folder, label)) for label, folder, url in wanted]
    shared = next((repo for *_, kind, repo in inspected if kind == "shared"), None)
    plan: list[_Checkout] = []
    missing: list[str] = []
    for label, folder, url, kind, repo in inspected:
        is_secrets = label == SECRETS
        if kind == "foreign":
            raise _refuse_foreign(label, folder)
        if kind == "absent":
            if url:
                plan.append(_Checkout(label, folder, url, "clone", secrets_in=is_secrets))
            elif shared is None:
                missing.append(label)
            elif is_secrets:  # comes with (or is created inside) the shared repository
                for co in plan:
                    co.secrets_in = co.secrets_in or co.repo == shared
            continue
        assert repo is not None
        _check_origin(repo, url, repo.top)
        if kind == "shared":
            existing = next((co for co in plan if co.repo == repo), None)
            if existing is not None:
                existing.secrets_in = existing.secrets_in or is_secrets
                continue
            scopes = tuple(
                str(Path(repo.rel(f))) for f in (layout.projects, layout.secrets) if f.exists()
            )
            plan.append(_Checkout(BOTH, repo.top, url, "pull", repo, scopes, is_secrets))
        else:
            plan.append(_Checkout(label, folder, url, "pull", repo, (), is_secrets))
    if missing:
        options = " and ".join(
            f"--{'projects' if label == PROJECTS else 'secrets'}-url URL" for label in missing
        )
        raise UsageError(
            f"{' and '.join(missing)} not cloned yet, and no repository URL was given",
            hint=f"pass {options}"
            + (", or --repo-url URL for one repository holding both folders" if len(missing) == 2
               else "")
            + " (on a terminal, itsup init asks for them)",
        )  # fmt: skip
    return plan


# -- git work ----------------------------------------------------------------------


def _short(commit: str | None) -> str:
    return commit[:7] if commit else "no commits"


def _where(repo: Repo) -> str:
    return f"{repo.branch() or 'detached HEAD'} at {_short(repo.head())}"


@contextmanager
def _remote(url: str | None) -> Iterator[None]:
    """Talking to a remote: any failure to reach it is a remote error (exit 6), with a hint."""
    try:
        yield
    except GitError as exc:
        if not isinstance(exc, GitRemoteError) and "does not exist" not in exc.message:
            raise
        raise GitRemoteError(
            exc.message,
            hint=exc.hint
            or f"check the URL{f' ({mask(url)})' if url else ''} and that this host may read it "
            "(an SSH deploy key, or a token in the URL or a credential helper)",
        ) from None


def _clone(co: _Checkout) -> Item:
    assert co.url is not None
    co.folder.parent.mkdir(parents=True, exist_ok=True)
    with _remote(co.url):
        git("clone", "--quiet", co.url, str(co.folder), what=co.label)
    repo = Repo(co.folder.resolve(), co.label)
    co.repo = repo
    if repo.head() is None:
        return Item(
            co.label, "warning", f"cloned {mask(co.url)}, but it has no commits yet",
            hint="push the configuration to it, then run itsup init again",
        )  # fmt: skip
    return Item(co.label, "ok", f"cloned {mask(co.url)} ({_where(repo)})")


def _remote_default_branch(repo: Repo) -> str | None:
    text = repo.run("ls-remote", "--symref", "origin", "HEAD")
    found = re.search(r"^ref: refs/heads/(\S+)\s+HEAD$", text, re.M)
    if found:
        return found.group(1)
    branches = repo.run("for-each-ref", "--format=%(refname:lstrip=3)", "refs/remotes/origin/")
    names = [b for b in branches.splitlines() if b and b != "HEAD"]
    for name in ("main", "master"):
        if name in names:
            return name
    return names[0] if len(names) == 1 else None


def _overwritten(stderr: str) -> list[str]:
    """The files git lists after "would be overwritten by ...:"."""
    files: list[str] = []
    collecting = False
    for line in stderr.splitlines():
        if "would be overwritten by" in line:
            collecting = True
        elif collecting and line.startswith("\t"):
            files.append(line.strip())
        else:
            collecting = False
    return files


def _adopt(co: _Checkout) -> Item:
    """Check the repository out into a non-empty host root that is not one (never forced)."""
    assert co.url is not None
    root = co.folder
    git_dir = root / ".git"
    created = not git_dir.exists()
    try:
        git("init", "--quiet", str(root), what=co.label)
        repo = Repo(root.resolve(), co.label)
        repo.run("remote", "add", "origin", co.url)
        with _remote(co.url):
            repo.run("fetch", "--quiet", "origin")
            branch = _remote_default_branch(repo)
        if branch is None:
            raise GitError(
                f"{co.label}: {mask(co.url)} has no commits to check out; nothing was changed",
                hint="push the configuration to it, then run itsup init again",
            )
        proc = git(
            "checkout", "--quiet", "-b", branch, "--track", f"origin/{branch}",
            cwd=root, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace")
            files = _overwritten(stderr)
            if files:
                shown = ", ".join(files[:10]) + (
                    f" and {len(files) - 10} more" if len(files) > 10 else ""
                )
                raise GitError(
                    f"{co.label}: cannot check out {mask(co.url)} into {root}: these files are "
                    f"already there and would be overwritten: {shown}; nothing was changed",
                    hint="move them aside (compare them with the repository's copies later) and "
                    "run itsup init again",
                )
            reason = " / ".join(ln.strip() for ln in stderr.splitlines() if ln.strip())[-300:]
            raise GitError(f"{co.label}: git checkout failed: {mask(reason) or 'no message'}")
    except BaseException:
        if created:  # leave the folder as it was found
            shutil.rmtree(git_dir, ignore_errors=True)
        raise
    co.repo = repo
    return Item(
        co.label, "ok",
        f"checked out {mask(co.url)} into the existing folder ({_where(repo)}); "
        "files already there were kept",
    )  # fmt: skip


def _status_paths(repo: Repo, *args: str) -> list[str]:
    """Paths `git status` lists (porcelain v1, -z), extra `args` before the pathspec.

    Parsed from git's raw output: stripping it would eat the leading space of
    the first entry's status (" M path") and cut the path's first character.
    """
    proc = git(
        "status", "--porcelain=v1", "-z", "--no-renames", *args, cwd=repo.top, what=repo.label
    )
    text = proc.stdout.decode("utf-8", "replace")
    return [entry[3:] for entry in text.split("\0") if len(entry) > 3]


def _ignored_by_us(name: str) -> bool:
    """Would the lines itsup writes to secrets/.gitignore ignore this file name?"""
    verdict = False
    for pattern in IGNORE_LINES:
        negate = pattern.startswith("!")
        if fnmatch.fnmatchcase(name, pattern.lstrip("!")):
            verdict = not negate
    return verdict


def _gitignore_is_ours(repo: Repo, path: Path) -> bool:
    """True when secrets/.gitignore differs from its committed copy only by itsup's lines."""
    try:
        current = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    rel = repo.rel(path)
    base: set[str] = set()
    if repo.tracked(rel):
        committed = repo.show("HEAD", rel).decode("utf-8", "replace")
        base = {line.strip() for line in committed.splitlines()}
    return all(not ln.strip() or ln.strip() in base or ln.strip() in _MANAGED for ln in current)


def _local_changes(co: _Checkout, secrets_dir: Path) -> list[str]:
    """Uncommitted work in the checkout, leaving out what itsup itself keeps out of git."""
    repo = co.repo
    assert repo is not None
    if co.scopes:  # one repository for both: its own files, and anything in the two folders
        paths = _status_paths(repo, "--untracked-files=no")
        paths += [p for p in _status_paths(repo, "--", *co.scopes) if p not in paths]
    else:
        paths = _status_paths(repo)
    if not co.secrets_in:
        return paths
    prefix = "" if repo.rel(secrets_dir) == "." else repo.rel(secrets_dir) + "/"
    ignore_file = secrets_dir / GITIGNORE
    kept = []
    for path in paths:
        if path.startswith(prefix) and not path.endswith("/"):
            name = path[len(prefix) :]
            if _ignored_by_us(Path(name).name):
                continue  # plaintext: the .gitignore below keeps it out
            if name == GITIGNORE and _gitignore_is_ours(repo, ignore_file):
                continue
        kept.append(path)
    return kept


def _upstream(repo: Repo) -> str | None:
    found = repo.upstream()
    if found:
        return found
    branch = repo.branch()
    if branch and repo.ok("rev-parse", "--verify", "--quiet", f"refs/remotes/origin/{branch}"):
        return f"origin/{branch}"
    return None


def _set_aside_gitignore(repo: Repo, secrets_dir: Path) -> None:
    """Undo itsup's own (regenerable) edits to secrets/.gitignore so a merge can't trip on them."""
    path = secrets_dir / GITIGNORE
    rel = repo.rel(path)
    if not path.is_file() or not _gitignore_is_ours(repo, path):
        return
    if repo.tracked(rel):
        repo.run("checkout", "--", rel)
    elif rel in _status_paths(repo, "--", rel):
        path.unlink()


def _pull(co: _Checkout, secrets_dir: Path) -> Item:
    """Fast-forward the checkout to its upstream (`git pull --ff-only`, with clearer messages)."""
    repo = co.repo
    assert repo is not None
    if repo.remote_url() is None:
        return Item(
            co.label, "warning", "has no 'origin' remote; not updated",
            hint=f"add one with `git -C {repo.top} remote add origin URL`",
        )  # fmt: skip
    changes = _local_changes(co, secrets_dir)
    if changes:
        shown = ", ".join(changes[:5]) + (
            f" and {len(changes) - 5} more" if len(changes) > 5 else ""
        )
        return Item(
            co.label, "warning",
            f"has local changes, not pulled ({shown}); nothing was overwritten",
            hint=f"commit or stash them in {repo.top}, then run itsup init again",
        )  # fmt: skip
    old = repo.head()
    with _remote(repo.remote_url()):
        repo.run("fetch", "--quiet", "origin")
    branch = repo.branch()
    if branch is None:
        return Item(
            co.label, "warning", f"is on a detached HEAD ({_short(old)}); not updated",
            hint=f"check out a branch in {repo.top} (e.g. `git -C {repo.top} switch main`)",
        )  # fmt: skip
    upstream = _upstream(repo)
    if upstream is None:
        if not repo.run("for-each-ref", "refs/remotes/origin/"):
            return Item(co.label, "warning", "the remote has no commits yet; nothing to pull")
        return Item(
            co.label, "warning", f"branch {branch} tracks no remote branch; not updated",
            hint=f"set one with `git -C {repo.top} branch --set-upstream-to origin/{branch}`",
        )  # fmt: skip
    if old is None:
        ahead, behind = 0, int(repo.run("rev-list", "--count", upstream))
    else:
        counts = repo.run("rev-list", "--left-right", "--count", f"HEAD...{upstream}").split()
        ahead, behind = int(counts[0]), int(counts[1])
    if behind == 0:
        extra = f"; {ahead} local commit(s) not pushed yet" if ahead else ""
        return Item(co.label, "ok", f"already up to date ({_where(repo)}){extra}")
    if ahead:
        raise GitError(
            f"{co.label}: branch {branch} and {upstream} have diverged ({ahead} local commit(s) "
            f"not on {upstream}, {behind} there not here); nothing was changed",
            hint=f"merge or rebase by hand in {repo.top} (e.g. `git pull --rebase`), push, "
            "then run itsup init again",
        )
    _fast_forward(co, secrets_dir, upstream)
    new = repo.head()
    return Item(co.label, "ok", f"updated {_short(old)}..{_short(new)} ({behind} new commit(s))")


def _fast_forward(co: _Checkout, secrets_dir: Path, upstream: str) -> None:
    """`git merge --ff-only upstream` in a checkout already known to be only behind it.

    itsup's own edits to secrets/.gitignore are set aside first (so the merge
    cannot trip on them) and written again if the merge fails. GitError names
    the local files the new commits would overwrite, or quotes git's reason.
    """
    repo = co.repo
    assert repo is not None
    if co.secrets_in:
        _set_aside_gitignore(repo, secrets_dir)
    try:
        proc = git("merge", "--ff-only", "--quiet", upstream, cwd=repo.top, check=False)
        if proc.returncode != 0:
            stderr = proc.stderr.decode("utf-8", "replace")
            files = _overwritten(stderr)
            if files:
                raise GitError(
                    f"{co.label}: cannot update: the new commits would overwrite local files "
                    f"{', '.join(files[:10])}; nothing was changed",
                    hint="move them aside (or commit them) and run itsup init again",
                )
            reason = " / ".join(ln.strip() for ln in stderr.splitlines() if ln.strip())[-300:]
            raise GitError(
                f"{co.label}: git merge --ff-only failed: {mask(reason) or 'no message'}"
            )
    except BaseException:
        if co.secrets_in and secrets_dir.is_dir():
            ensure_gitignore(secrets_dir)
        raise


# -- secrets/.gitignore ----------------------------------------------------------------


def ensure_gitignore(secrets_dir: Path, again: bool = False) -> list[str]:
    """Make secrets/.gitignore hold itsup's lines; keep the operator's. Return lines added.

    `again` appends the whole block even when the lines are there (in an order,
    or before lines, that undo them: in a .gitignore the last match wins).
    """
    path = secrets_dir / GITIGNORE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    present = {line.strip() for line in text.splitlines()}
    missing = list(IGNORE_LINES) if again else [ln for ln in IGNORE_LINES if ln not in present]
    if not missing:
        return []
    if text and not text.endswith("\n"):
        text += "\n"
    block = ([] if _IGNORE_HEADER in present and not again else [_IGNORE_HEADER]) + missing
    if text.strip():
        text += "\n"
    text += "\n".join(block) + "\n"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode("utf-8"), 0o644)
    return missing


def _ignore_works(secrets_dir: Path) -> tuple[bool, bool] | None:
    """(plaintext ignored, encrypted ignored) as git sees it, or None outside a work tree."""
    repo = Repo.at(secrets_dir, SECRETS)
    if repo is None:
        return None
    rel = repo.rel(secrets_dir)
    prefix = "" if rel == "." else rel + "/"

    def ignored(name: str) -> bool:
        proc = git("check-ignore", "-q", "--no-index", prefix + name, cwd=repo.top, check=False)
        if proc.returncode not in (0, 1):
            raise GitError(
                f"{SECRETS}: git check-ignore failed: "
                f"{proc.stderr.decode('utf-8', 'replace').strip() or 'no message'}"
            )
        return proc.returncode == 0

    return ignored("itsup.txt"), ignored("itsup.enc.txt")


def secure_secrets(secrets_dir: Path, result: InitResult) -> bool:
    """Write and verify secrets/.gitignore; report plaintext already committed. True if changed."""
    added = ensure_gitignore(secrets_dir)
    verdict = _ignore_works(secrets_dir)
    if verdict is not None and verdict != (True, False):
        added += ensure_gitignore(secrets_dir, again=True)
        verdict = _ignore_works(secrets_dir)
        if verdict != (True, False):
            what = "plaintext *.txt are not ignored" if not verdict or not verdict[0] else (
                "encrypted *.enc.txt are ignored"
            )  # fmt: skip
            raise ConfigError(
                f"{secrets_dir / GITIGNORE}: {what} by git even with itsup's lines in it",
                hint="look for other ignore rules (a .gitignore above secrets/, "
                ".git/info/exclude, core.excludesFile) that override it",
            )
    name = f"{SECRETS}{GITIGNORE}"
    if verdict is None:
        result.add(
            name, "warning", "written, but secrets/ is not in a git repository, so not verified"
        )
    elif added:
        result.add(
            name, "ok",
            f"{'written' if len(added) == len(IGNORE_LINES) else 'updated'}: plaintext *.txt "
            "ignored by git, *.enc.txt committed (verified with git check-ignore)",
        )  # fmt: skip
    else:
        result.add(name, "ok", "plaintext *.txt ignored by git, *.enc.txt committed (verified)")
    repo = Repo.at(secrets_dir, SECRETS)
    if repo is not None:
        rel = repo.rel(secrets_dir)
        committed = [
            p for p in repo.tracked(rel) if p.endswith(".txt") and not p.endswith(".enc.txt")
        ]
        if committed:
            result.add(
                SECRETS, "warning",
                f"plaintext file(s) are committed to git: {', '.join(committed[:10])}",
                hint="`git rm --cached` them and commit; the values stay in the git history, so "
                "change those secrets too",
            )  # fmt: skip
    return bool(added)


# -- layout check ------------------------------------------------------------------------


def _rel(layout: Layout, path: Path) -> str:
    return path.relative_to(layout.root).as_posix()


def check_config(layout: Layout, result: InitResult) -> None:
    """projects/itsup.yml: present, loads, validates (secrets decrypted in memory if possible)."""
    from itsup.config import load_config, load_secrets

    name = _rel(layout, layout.config_file)
    if not layout.config_file.is_file():
        result.config_problems.append(f"{layout.config_file}: not found")
        result.add(
            name, "error", "not found",
            hint="add itsup.yml to the projects repository (see the README), push it, "
            "and run itsup init again",
        )  # fmt: skip
        return
    secrets_problem: ItsupError | None = None
    try:
        shared = load_secrets(layout)
    except ItsupError as exc:
        shared, secrets_problem = {}, exc
        result.add("shared secrets", "warning", f"not loaded: {exc.message}", exc.hint)
    try:
        load_config(layout, secrets=shared)
    except ConfigError as exc:
        problems = exc.problems
        if secrets_problem is not None or not shared:
            # `${VAR}` from secrets that could not be read, or that nobody has
            # written yet (a new setup): not the file's fault.
            waiting = [p for p in problems if " is not defined in " in p]
            problems = [p for p in problems if p not in waiting]
            if waiting and secrets_problem is not None:
                result.add(
                    name, "warning",
                    f"{len(waiting)} setting(s) use secrets that could not be decrypted; "
                    "checked again once they can",
                )  # fmt: skip
            elif waiting:
                names = sorted({m for p in waiting for m in re.findall(r"\$\{(\w+)", p)})
                result.add(
                    name, "warning",
                    f"needs {', '.join(names)}, which no secrets file defines yet",
                    hint="put them in secrets/itsup.txt as KEY=VALUE lines, then "
                    "`itsup encrypt itsup`",
                )  # fmt: skip
        if problems:
            result.config_problems += problems
            result.add(name, "error", f"invalid ({len(problems)} problem(s), listed below)")
            return
    if not any(i.name == name for i in result.items):
        result.add(name, "ok", "present and valid")


def check_projects(layout: Layout, result: InitResult) -> None:
    traefik = layout.projects / "traefik.yml"
    if layout.projects.is_dir() and not traefik.is_file():
        result.add(_rel(layout, traefik), "warning", "not found (Traefik's static configuration)")
    projects = project_checks(layout)
    if not projects:
        result.add(PROJECTS, "info", "no project folders yet")
    for project in projects:
        name = f"project {project.name}"
        # A warning here, a failure in `snapshot verify`: init reports on a host
        # being set up (projects may still be written, and the layout report
        # only informs, README "Set up a host"), while verify asks whether a
        # restore from the remote would be complete (exit 5 when not).
        if project.missing:
            result.add(
                name, "warning",
                f"{' and '.join(project.missing)} missing in {_rel(layout, project.folder)}/",
                hint="every project folder holds docker-compose.yml and ingress.yml",
            )  # fmt: skip
        else:
            result.add(name, "ok", ", ".join(PROJECT_FILES))


def check_keys(layout: Layout, result: InitResult) -> None:
    config = layout.secrets / sops.SOPS_CONFIG
    name = _rel(layout, config)
    wanted: list[str] = []
    if not config.is_file():
        result.add(
            name, "warning", "not found: no age recipients to encrypt secrets to",
            hint="create a key with `itsup keygen` (it adds its public key there)",
        )  # fmt: skip
    else:
        try:
            wanted = sops.recipients(layout.secrets)
        except ConfigError as exc:
            result.add(name, "warning", exc.message, exc.hint)
        else:
            if wanted:
                result.add(name, "ok", f"{len(wanted)} age recipient(s)")
            else:
                result.add(
                    name, "warning", "no age recipients for secrets/*.txt",
                    hint="`itsup keygen` or `itsup secrets add-recipient age1...`",
                )  # fmt: skip
    key = sops.key_file()
    if key.is_file() or os.environ.get("SOPS_AGE_KEY"):
        mine = sops.local_public_keys()
        where = str(key) if key.is_file() else "SOPS_AGE_KEY"
        if wanted and mine and not set(mine) & set(wanted):
            result.add(
                "age key", "warning",
                f"{where} holds a key that is not a recipient in {name}, so it cannot "
                "decrypt these secrets",
                hint="ask someone who holds a recipient key to run `itsup secrets add-recipient` "
                "with your public key (`itsup keygen --show`), or restore the right key",
            )  # fmt: skip
        else:
            result.add("age key", "ok", f"found ({where})")
    else:
        result.add(
            "age key", "warning", f"none at {key} (nor SOPS_AGE_KEY)",
            hint=f"restore your age key to {key} (or set SOPS_AGE_KEY_FILE); on a new "
            "setup, create one with `itsup keygen`",
        )  # fmt: skip
    encrypted = (
        sorted(p.name for p in layout.secrets.glob("*.enc.txt")) if layout.secrets.is_dir() else []
    )
    result.add(SECRETS, "info", f"{len(encrypted)} encrypted secrets file(s) (*.enc.txt)")


def _next_steps(layout: Layout, result: InitResult, gitignore_changed: bool) -> None:
    steps = result.next_steps
    for item in result.items:
        if item.message.startswith("has local changes"):
            steps.append(
                f"{item.name}: commit or stash the local changes, then run `itsup init` again"
            )
    if gitignore_changed:
        steps.append(
            "commit secrets/.gitignore: "
            "`cd secrets && git add .gitignore && git commit -m 'Ignore plaintext secrets' && git push`"
        )
    if result.config_problems:
        steps.append("fix projects/itsup.yml in its repository, push, and run `itsup init` again")
    if not any(i.name == "age key" and i.status == "ok" for i in result.items):
        steps.append(f"put the age key in {sops.key_file()} (or `itsup keygen` on a new setup)")
    if layout.secrets.is_dir() and any(layout.secrets.glob("*.enc.txt")):
        steps.append("`itsup decrypt` to write the plaintext secrets/*.txt the containers read")
    if not result.config_problems:
        steps.append(
            "`itsup restore all` to bring back upstream/ and proxy/ from the newest backup"
        )


# -- the command ------------------------------------------------------------------------------


def run_init(
    root: Path,
    *,
    projects_url: str | None = None,
    secrets_url: str | None = None,
    repo_url: str | None = None,
) -> InitResult:
    """Clone or update the config repositories into `root`, secure secrets/, check the layout."""
    projects_url = (projects_url or "").strip() or None
    secrets_url = (secrets_url or "").strip() or None
    repo_url = (repo_url or "").strip() or None
    if repo_url and (projects_url or secrets_url):
        raise UsageError(
            "--repo-url is for one repository holding both folders: give it alone, "
            "or give --projects-url and --secrets-url"
        )
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root}: is not a folder")
    layout = Layout(root)
    # Everything that would refuse is found before anything is written.
    plan = (
        [_plan_single(root, repo_url)]
        if repo_url
        else _plan_separate(root, projects_url, secrets_url)
    )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ItsupError(f"{root}: cannot create the host root: {exc.strerror or exc}") from None
    result = InitResult(root)
    for co in plan:
        if co.action == "clone":
            item = _clone(co)
        elif co.action == "adopt":
            item = _adopt(co)
        else:
            item = _pull(co, layout.secrets)
            if item.message.startswith("has local changes"):
                result.partial = True
        result.items.append(item)
    if not layout.secrets.is_dir():
        # One repository without a secrets/ folder yet: it belongs in it.
        layout.secrets.mkdir(parents=True)
        result.add(SECRETS, "info", "created (the repository has no secrets/ folder yet)")
    gitignore_changed = secure_secrets(layout.secrets, result)
    check_config(layout, result)
    check_projects(layout, result)
    check_keys(layout, result)
    _next_steps(layout, result, gitignore_changed)
    return result
