"""`itsup restore`."""

from __future__ import annotations

import sys

import click

from itsup.cli.backup import TARGET, _host
from itsup.cli.output import byte_progress, err, human_bytes, interactive, out
from itsup.errors import UsageError


@click.command()
@click.argument("what", required=False, metavar="[all|proxy|PROJECT]")
@click.option("--path", "path", help="Restore one file or folder, e.g. proxy/traefik/acme.json.")
@click.option(
    "--from",
    "generation",
    metavar="GENERATION",
    help="Generation to restore (default: the newest complete one).",
)
@click.option(
    "--to",
    "to",
    type=click.Path(file_okay=False),
    help="Restore into this folder instead of the host root.",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before overwriting existing files.")
@click.option(
    "--allow-external-links",
    is_flag=True,
    help="Also restore symlinks that point outside the destination (absolute links in "
    "volumes); nothing is ever written through them.",
)
@TARGET
@click.pass_context
def restore(
    ctx: click.Context,
    what: str | None,
    path: str | None,
    generation: str | None,
    to: str | None,
    dry_run: bool,
    yes: bool,
    allow_external_links: bool,
    target_choice: str | None,
) -> None:
    """Restore state from a backup generation (stage, verify, then swap into place).

    \b
    itsup restore all                      everything in the generation
    itsup restore proxy                    proxy/ (Traefik config, acme.json)
    itsup restore PROJECT                  upstream/PROJECT (and its volumes if backed up)
    itsup restore --path proxy/traefik/acme.json
    """
    from itsup.actions.restore import plan_restore, run_restore

    host = _host(ctx)
    plan = plan_restore(
        host,
        what,
        path=path,
        generation=generation,
        to=to,
        target_choice=target_choice,
        external_links=allow_external_links,
        prefetch=not dry_run,
    )
    new = sum(1 for c in plan.changes if c.kind == "new")
    replace = plan.overwrites
    same = len(plan.changes) - new - replace
    summary = (
        f"{plan.scope.label} from {plan.manifest.generation} into {plan.dest}: "
        f"{new} new, {replace} to overwrite, {same} unchanged"
    )
    if dry_run:
        lines = [
            f"{'+' if c.kind == 'new' else '~'} {c.path}".encode(
                "utf-8", "backslashreplace"
            ).decode()
            for c in plan.changes
            if c.kind != "same"
        ]
        if lines:  # one write: rich per line costs seconds on a large tree
            click.echo("\n".join(lines))
        out.print(f"dry run: {summary}", markup=False)
        return
    if replace and not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"restore would overwrite {replace} existing path(s) in {plan.dest}",
                hint="re-run with --yes, or look first with --dry-run",
            )
        click.confirm(f"{summary}. Overwrite?", abort=True, err=True)
    show = interactive()
    with byte_progress("restore", plan.manifest.source_bytes, show) as advance:
        result = run_restore(plan, on_bytes=advance)
    if show or ctx.obj["verbose"]:
        out.print(
            f"restored {plan.scope.label} from {result.generation} into {result.dest}: "
            f"{result.files} files, {human_bytes(result.bytes)} in {result.seconds:.1f} s",
            markup=False,
        )
    _ = err
