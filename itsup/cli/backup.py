"""`itsup backup` and its subcommands."""

from __future__ import annotations

import json

import click
from rich.table import Table

from itsup.cli.output import byte_progress, err, human_bytes, interactive, out
from itsup.errors import ExitCode
from itsup.host import Host

TARGET = click.option(
    "--target",
    "target_choice",
    type=click.Choice(["s3", "local"]),
    help="Which configured target to use (default: S3 if configured, else local).",
)


def _host(ctx: click.Context) -> Host:
    from itsup.host import open_host
    from itsup.log import log_to_host

    host = open_host(ctx.obj["root"])
    log_to_host(host.layout)
    return host


def _source_size(host: Host) -> int:
    from itsup.layout import STATE_DIRS
    from itsup.pipeline.archive import Selection, Stats, walk

    cfg = host.config.backup
    selection = Selection(STATE_DIRS, tuple(cfg.exclude), cfg.include_volumes)
    return sum(
        st.st_size
        for _r, _a, st in walk(host.layout.root, selection, Stats())
        if (st.st_mode & 0o170000) == 0o100000
    )


@click.group(invoke_without_command=True)
@TARGET
@click.pass_context
def backup(ctx: click.Context, target_choice: str | None) -> int | None:
    """Back up upstream/ and proxy/ (and volumes if configured) as one generation.

    With no subcommand, runs a backup. Safe under cron: prints nothing on
    success unless -v; the exit code says success (0), partial (3), or why not.
    """
    if ctx.invoked_subcommand is not None:
        return None
    from itsup.actions.backup import run_backup

    host = _host(ctx)
    show = interactive()
    total = _source_size(host) if show else None
    with byte_progress("backup", total, show) as advance:
        result = run_backup(host, target_choice=target_choice, on_bytes=advance)
    s = result.stats
    if show or ctx.obj["verbose"]:
        out.print(
            f"{result.generation}: {s.files} files, {human_bytes(s.bytes)} -> "
            f"{human_bytes(result.archive_size)} in {result.seconds:.1f} s "
            f"({result.target}/{result.archive_key})",
            markup=False,
        )
    if result.partial:
        err.print(
            f"itsup: warning: {result.generation} is PARTIAL: {len(s.problems)} path(s) could "
            "not be read completely:",
            markup=False,
        )
        for problem in s.problems[:20]:
            err.print(f"  {problem.path}: {problem.problem}", markup=False)
        if len(s.problems) > 20:
            err.print(f"  ... and {len(s.problems) - 20} more (see the manifest)", markup=False)
        return ExitCode.PARTIAL
    return ExitCode.SUCCESS


@backup.command("list")
@TARGET
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_cmd(ctx: click.Context, target_choice: str | None, as_json: bool) -> None:
    """List generations, newest first, and whether each is complete."""
    from itsup.actions.listing import list_generations

    host = _host(ctx)
    where, rows = list_generations(host, target_choice)
    if as_json:
        out.print(json.dumps([r.as_dict() for r in rows], indent=2), markup=False)
        return
    if not rows:
        out.print(f"no backups on {where}", markup=False)
        return
    table = Table(title=f"Backups on {where}", title_justify="left")
    for col in ("generation", "status", "size", "source", "files", "encrypted"):
        table.add_column(col, justify="right" if col in ("size", "source", "files") else "left")
    for r in rows:
        status = r.status if not r.problem else f"{r.status}: {r.problem}"
        table.add_row(
            r.name,
            status,
            human_bytes(r.archive_bytes),
            human_bytes(r.source_bytes),
            "-" if r.files is None else str(r.files),
            "-" if r.encrypted is None else ("yes" if r.encrypted else "no"),
        )
    out.print(table)
