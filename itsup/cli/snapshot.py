"""`itsup snapshot`: commit and push projects/ and secrets/*.enc.txt (the spec's git backup)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from itsup.cli.output import err, out
from itsup.errors import ConfigError
from itsup.layout import Layout


def _layout(ctx: click.Context) -> Layout:
    from itsup.layout import find_root
    from itsup.log import log_to_host

    layout = find_root(ctx.obj["root"])
    log_to_host(layout)
    return layout


def _say(text: str) -> None:
    out.print(text)


def _warn(text: str) -> None:
    err.print(f"itsup: warning: {text}")


@click.group(invoke_without_command=True)
@click.option(
    "--tag",
    is_flag=True,
    help="Also tag HEAD as backup-YYYYmmdd-HHMMSS (the pre-deployment backup) and push the tag.",
)
@click.option(
    "-m",
    "--message",
    "note",
    metavar="TEXT",
    help='Text added after "Backup: <time>" in the commit message.',
)
@click.pass_context
def snapshot(ctx: click.Context, tag: bool, note: str | None) -> int | None:
    """Commit projects/ and secrets/*.enc.txt to git and push (the spec's git backup).

    \b
    Stages projects/ and, in secrets/, only *.enc.txt, .sops.yaml and .gitignore;
    refuses (exit 1, nothing committed) when a plaintext secret, an unencrypted
    .enc.txt or an age secret key would be committed. Commits as
    "Backup: <ISO time>" and pushes. Works with projects/ and secrets/ as two
    repositories or as one.

    \b
    Exit codes: 0 done (also: nothing to commit), 1 refused or push rejected,
    3 committed but no remote to push to, 6 remote unreachable (commit kept).
    """
    if ctx.invoked_subcommand is not None:
        return None
    from itsup.actions.snapshot import take_snapshot

    result = take_snapshot(_layout(ctx), tag=tag, note=note)
    for r in result.repos:
        if r.commit:
            line = f"{r.label}: committed {r.changes} change(s) as {r.commit} ({result.message})"
        else:
            line = f"{r.label}: nothing to commit"
        if r.push == "pushed":
            line += f"; pushed to {r.pushed_to}"
        elif r.push == "up-to-date" and r.pushed_to:
            line += f"; {r.pushed_to} is up to date"
        _say(line)
        if r.tag:
            where = "pushed" if r.tag_pushed else "local only"
            _say(f"{r.label}: tagged {r.tag} ({where})")
        if r.push in ("no-remote", "detached") and r.problem:
            _warn(f"{r.label}: {r.problem}")
    if result.error is not None:
        raise result.error
    return result.exit_code


@snapshot.command("prune")
@click.option(
    "--keep-last",
    type=click.IntRange(min=1),
    metavar="N",
    help="Keep the newest N backup-* tags.",
)
@click.option(
    "--older-than",
    metavar="DURATION",
    help="Remove backup-* tags older than this (e.g. 90d, 12w). With --keep-last, "
    "a tag goes only when it is both beyond the newest N and older.",
)
@click.option("--dry-run", is_flag=True, help="Show which tags would go; delete nothing.")
@click.pass_context
def prune(ctx: click.Context, keep_last: int | None, older_than: str | None, dry_run: bool) -> None:
    """Remove old backup-* tags, locally and on the remote."""
    from itsup.actions.tags import prune_tags
    from itsup.durations import parse_duration

    if keep_last is None and older_than is None:
        raise click.UsageError("give --keep-last N and/or --older-than DURATION")
    seconds = None
    if older_than is not None:
        try:
            seconds = parse_duration(older_than)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
    results = prune_tags(_layout(ctx), keep_last=keep_last, older_than=seconds, dry_run=dry_run)
    for r in results:
        where = f" ({r.remote})" if r.remote else " (no remote: local tags only)"
        verb = "would delete" if dry_run else "deleted"
        _say(
            f"{r.label}{where}: {len(r.kept) + len(r.deleted)} backup tag(s), "
            f"keeping {len(r.kept)}, {verb} {len(r.deleted)}"
        )
        for t in r.deleted:
            places = "+".join(p for p, here in (("local", t.local), ("remote", t.remote)) if here)
            _say(f"  {'-' if not dry_run else '?'} {t.name} ({places})")
        if r.ignored:
            _warn(
                f"{r.label}: ignored {len(r.ignored)} tag(s) whose name holds no "
                f"backup-YYYYmmdd-HHMMSS time: {', '.join(r.ignored)}"
            )
    if dry_run:
        _say("dry run: nothing deleted")


_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@snapshot.command("verify")
@click.option(
    "--projects-url",
    metavar="URL",
    help="Remote of projects/ (default: the remote of the local projects/ repository).",
)
@click.option(
    "--secrets-url",
    metavar="URL",
    help="Remote of secrets/ (default: the local secrets/ remote; the same URL as "
    "--projects-url means one repository holds both).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Clone into this (new or empty) folder and keep it, instead of a temporary one.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def verify(
    ctx: click.Context,
    projects_url: str | None,
    secrets_url: str | None,
    workdir: str | None,
    as_json: bool,
) -> None:
    """Clone the remotes elsewhere and check that a restore from them would work.

    \b
    Checks: the remotes clone; this host's HEAD is pushed; projects/itsup.yml
    loads; every project has docker-compose.yml and ingress.yml; every
    secrets/*.enc.txt decrypts (in memory, with this host's age key); no
    plaintext secret or age key is committed. Plaintext never touches disk.
    Exit codes: 0 all passed (warnings allowed), 5 a check failed,
    6 a remote could not be cloned.
    """
    from itsup.actions.remote_verify import verify_remotes

    layout: Layout | None
    try:
        layout = _layout(ctx)
    except ConfigError:
        if projects_url is None:
            raise
        layout = None  # verifying remotes from a machine without a host root
    report = verify_remotes(
        layout,
        projects_url=projects_url,
        secrets_url=secrets_url,
        workdir=Path(workdir) if workdir else None,
    )
    if as_json:
        out.print(json.dumps(report.as_dict(), indent=2))
    else:
        title = (
            report.projects_url
            if report.shared
            else f"{report.projects_url} + {report.secrets_url}"
        )
        table = Table(title=f"Snapshot verify: {title}", title_justify="left")
        table.add_column("check")
        table.add_column("status")
        table.add_column("detail", overflow="fold")
        for c in report.checks:
            table.add_row(
                Text(c.item), Text(c.status.upper(), style=_STYLE[c.status]), Text(c.detail)
            )
        out.print(table)
        _say(
            f"{len(report.checks)} checks: {len(report.failed)} failed, "
            f"{len(report.warnings)} warning(s)"
            + (f"; clone kept in {report.workdir}" if report.workdir else "")
        )
    error = report.error()
    if error is not None:
        raise error
