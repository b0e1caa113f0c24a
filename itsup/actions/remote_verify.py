"""`itsup snapshot verify`: clone the git remotes elsewhere and check a restore would work.

The "clone it elsewhere and check" half of the spec's backup verification,
also run by `itsup backup drill`. Verification clones into a temporary folder
without ever checking out a plaintext secret file, and decrypts every
`.enc.txt` in memory (sops reads from a pipe and writes to one).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from itsup import sops
from itsup.errors import ConfigError, IntegrityError, ItsupError, UsageError
from itsup.git import GitError, GitRemoteError, Repo, git, mask
from itsup.layout import PROJECT_FILES, Layout, project_checks
from itsup.repos import (
    SECRETS_EXTRAS,
    SNAPSHOT_LOGGER,
    Repos,
    age_key_paths,
    find_repos,
    folder_prefix,
    is_plaintext_secret,
    literal,
    remote_name,
    tracking,
)

log = logging.getLogger(SNAPSHOT_LOGGER)


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
        _, merge = tracking(src.local)
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
        or not is_plaintext_secret(p.decode("utf-8", "surrogateescape"), src.plaintext_prefix)
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
            prefix = folder_prefix(local, secrets_dir)
            pending += local.changes(
                *literal(prefix + n for n in SECRETS_EXTRAS), f"{prefix}*.enc.txt"
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
    layout = Layout(root)
    if not layout.projects.is_dir():
        return
    projects = project_checks(layout)
    if not projects:
        report.add("projects/", "warn", "no project folders in the remote")
    for project in projects:
        item = f"projects/{project.name}"
        # A failure here, a warning in `itsup init`: a restore from this remote
        # would bring up a project without its compose or ingress file, while
        # init only reports on a host that may still be being set up.
        if project.missing:
            report.add(item, "fail", f"missing {' and '.join(project.missing)}")
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
                if is_plaintext_secret(path, src.plaintext_prefix):
                    leaks += 1
                    report.add(
                        f"{where}{path}",
                        "fail",
                        "a plaintext secret is committed in the remote: `git rm --cached` it, "
                        "push, and rotate the secrets in it (the history still holds it)",
                    )
        for hit in age_key_paths(src.dest, "HEAD", "--", check=False):
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
    repos, projects_url, secrets_url = _remote_urls(layout, projects_url, secrets_url)
    shared = secrets_url == projects_url
    report = VerifyReport(mask(projects_url), mask(secrets_url), shared)
    with _workspace(workdir) as clone:
        if workdir is not None:
            report.workdir = str(workdir)
        root, sources = _sources(clone, layout, repos, projects_url, secrets_url)
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


def _remote_urls(
    layout: Layout | None, projects_url: str | None, secrets_url: str | None
) -> tuple[Repos | None, str, str]:
    """(this host's repositories if any, projects URL, secrets URL) to verify.

    A URL not given is the remote of the local repository. With no host root
    (or one without repositories) and only --projects-url, one repository holds
    both. ConfigError when a folder has no remote to verify.
    """
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
    return repos, projects_url, secrets_url


def _sources(
    clone: Path, layout: Layout | None, repos: Repos | None, projects_url: str, secrets_url: str
) -> tuple[Path, list[_Source]]:
    """(the scratch host root inside `clone`, the remotes to clone into it).

    Two URLs: projects/ and secrets/ cloned side by side in `clone`. One URL:
    the repository cloned at `clone`; when this host keeps both folders in one
    repository that holds more than the host root, the host root is the same
    subfolder of the clone.
    """
    if secrets_url != projects_url:
        local_projects = repos.projects if repos else None
        local_secrets = repos.secrets if repos else None
        return clone, [
            _Source("projects", projects_url, clone / "projects", local_projects, layout, None),
            _Source("secrets", secrets_url, clone / "secrets", local_secrets, layout, ""),
        ]
    root = clone
    local = None
    if repos is not None and repos.shared and layout is not None:
        local = Repo(repos.projects.top, "projects/ and secrets/")
        inner = local.rel(layout.root)  # the repository may hold more than the host
        root = clone if inner == "." else clone / inner
    prefix = root.relative_to(clone).as_posix() + "/secrets/"
    prefix = prefix.removeprefix("./")
    return root, [_Source("host", projects_url, clone, local, layout, prefix)]
