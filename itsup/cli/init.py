"""`itsup init`: set a host root up from its config repositories (or update it)."""

from __future__ import annotations

import sys

import click

from itsup.cli.output import err, out
from itsup.errors import ConfigError


def _ask(missing: list[str]) -> tuple[str | None, str | None, str | None]:
    """Prompt for the URLs of the folders not cloned yet: (projects, secrets, repo)."""
    if "projects/" in missing:
        first = click.prompt(
            "Git URL of the projects/ repository (or of one repository holding both "
            "projects/ and secrets/)",
            err=True,
        )
        if "secrets/" not in missing:
            return first, None, None
        second = click.prompt(
            "Git URL of the secrets/ repository (leave empty if secrets/ is in the same "
            "repository)",
            default="",
            show_default=False,
            err=True,
        )
        return (first, second, None) if second.strip() else (None, None, first)
    if "secrets/" in missing:
        return None, click.prompt("Git URL of the secrets/ repository", err=True), None
    return None, None, None


@click.command()
@click.option(
    "--projects-url", metavar="URL", help="Git URL to clone projects/ from (config as code)."
)
@click.option(
    "--secrets-url", metavar="URL", help="Git URL to clone secrets/ from (SOPS-encrypted)."
)
@click.option(
    "--repo-url",
    metavar="URL",
    help="One repository holding both projects/ and secrets/ at its top, checked out "
    "into the host root itself.",
)
@click.pass_context
def init(
    ctx: click.Context, projects_url: str | None, secrets_url: str | None, repo_url: str | None
) -> int:
    """Clone (or update) projects/ and secrets/ into the host root, then check it.

    \b
    The host root is --root (or ITSUP_ROOT), else the current folder.
    Without URLs, asks for them on a terminal; already cloned folders are
    updated with a fast-forward pull. Never overwrites local changes: a
    checkout with uncommitted changes is left as it is (exit 3). Writes
    secrets/.gitignore so plaintext *.txt are never committed.

    \b
    itsup init --projects-url URL --secrets-url URL
    itsup init --repo-url URL          one repository holding both folders
    itsup init                         update what is already cloned
    """
    from itsup.actions.init import host_root, missing_checkouts, run_init

    root = host_root(ctx.obj["root"])
    if not (projects_url or secrets_url or repo_url) and sys.stdin.isatty():
        projects_url, secrets_url, repo_url = _ask(missing_checkouts(root))
    result = run_init(root, projects_url=projects_url, secrets_url=secrets_url, repo_url=repo_url)
    out.print(f"host root: {result.root}")
    for item in result.items:
        if item.status in ("ok", "info"):
            out.print(f"  {item.name}: {item.message}")
        else:
            err.print(f"itsup: {item.status}: {item.name}: {item.message}")
            if item.hint:
                err.print(f"itsup: hint: {item.hint}")
    if result.next_steps:
        out.print("next steps:")
        for step in result.next_steps:
            out.print(f"  - {step}")
    if result.config_problems:
        raise ConfigError(
            result.config_problems,
            hint="fix projects/itsup.yml in its repository, push, and run itsup init again",
        )
    return int(result.exit_code)  # 0, or 3 when a checkout was left alone (local changes)
