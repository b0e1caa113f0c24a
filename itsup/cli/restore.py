"""`itsup restore`."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from itsup.cli.common import TARGET, open_host
from itsup.cli.output import byte_progress, err, human_bytes, interactive, notice, out
from itsup.errors import UsageError

if TYPE_CHECKING:
    from itsup.actions.restore import GenerationDamaged, RestoreOptions, RestorePlan


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
    help="Restore into this folder instead of the host root (not inside the host's "
    "upstream/ or proxy/, which the next backup would take for live state).",
)
@click.option("--dry-run", is_flag=True, help="Show what would change; write nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask before overwriting existing files.")
@click.option(
    "--refuse-external-links",
    is_flag=True,
    help="Refuse the restore (exit 5) when what it restores holds a symlink pointing "
    "outside the destination, instead of creating it as a link (the default: such links "
    "are created, never followed, and named).",
)
@click.option("--allow-external-links", is_flag=True, hidden=True, help="Deprecated: the default.")
@click.option(
    "--fallback",
    is_flag=True,
    help="If the newest complete generation turns out damaged (or its objects are "
    "missing), restore the next older complete one instead, and so on; each skipped "
    "generation is named on stderr. Not with --from: a named generation is never replaced.",
)
@click.option(
    "--no-databases",
    is_flag=True,
    help="Leave the database dumps out: restore files only, load nothing.",
)
@click.option(
    "--databases-only",
    is_flag=True,
    help="Only the database dumps: load them into the running engines (with --to, "
    "extract them there), change no other file.",
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
    refuse_external_links: bool,
    allow_external_links: bool,
    fallback: bool,
    no_databases: bool,
    databases_only: bool,
    target_choice: str | None,
) -> None:
    """Restore state from a backup generation (stage, verify, then swap into place).

    \b
    itsup restore all                      everything in the generation
    itsup restore proxy                    proxy/ (Traefik config, acme.json)
    itsup restore PROJECT                  upstream/PROJECT (and its volumes if backed up)
    itsup restore --path proxy/traefik/acme.json
    itsup restore all --fallback           newest generation that passes every check
    itsup restore PROJECT --databases-only load its database dumps, nothing else

    \b
    Say what to restore: with none of these it stops (exit 2). A damaged
    generation is refused (exit 5) before anything is written; with
    --fallback the next older complete generation is tried instead.
    Symlinks pointing outside the tree are created as links (never
    followed) and named. Into the host root, the host lock is held (exit 11
    while a backup or another restore runs); --to elsewhere needs no lock.

    \b
    Database dumps (upstream/PROJECT/_backup/) are loaded into the running
    engines after the files, replacing their data (each engine must answer
    first, or nothing is changed); with --to they are extracted as files.
    """
    from itsup.actions.restore import RestoreOptions, restore_with_fallback

    options = RestoreOptions(
        what,
        path=path,
        generation=generation,
        to=to,
        target_choice=target_choice,
        refuse_external_links=refuse_external_links,
        dry_run=dry_run,
        fallback=fallback,
        databases="skip" if no_databases else "only" if databases_only else "load",
    )
    if no_databases and databases_only:
        raise UsageError("--no-databases and --databases-only contradict each other")
    _check_arguments(ctx, options, allow_external_links)
    host = open_host(ctx)
    show = interactive()
    outcome = restore_with_fallback(
        host,
        options,
        on_skip=_skipped,
        confirm=lambda plan: _confirm(plan, yes),
        progress=lambda plan: byte_progress("restore", plan.manifest.source_bytes, show),
    )
    plan, result = outcome.plan, outcome.result
    if result is None:  # a dry run
        _show_dry_run(plan)
        _fell_back(outcome.skipped, plan.manifest.generation, "would restore")
        _note_external(plan.external, "would restore")
        return
    _fell_back(outcome.skipped, result.generation, "restored")
    _note_external(result.external_links, "restored")
    if show or ctx.obj["verbose"]:
        out.print(
            f"restored {plan.scope.label} from {result.generation} into {result.dest}: "
            f"{result.files} files, {human_bytes(result.bytes)} in {result.seconds:.1f} s",
        )
        if result.databases:
            out.print(f"loaded database dumps into: {', '.join(result.databases)}")


def _check_arguments(
    ctx: click.Context, options: RestoreOptions, allow_external_links: bool
) -> None:
    """Usage errors found from the arguments alone: before any storage is read.

    `--allow-external-links` was the opt-in before links pointing outside were
    restored by default; it is accepted (and does nothing) so scripts keep working.
    """
    from itsup.actions.restorescope import no_scope
    from itsup.errors import ConfigError
    from itsup.layout import find_root

    if options.what is None and options.path is None:  # never an implicit "everything"
        try:
            layout = find_root(ctx.obj["root"])
        except ConfigError:
            layout = None
        raise no_scope(layout)
    if options.fallback and options.generation:
        raise UsageError(
            "--fallback cannot be combined with --from: a named generation is never "
            "replaced by another one",
            hint="drop --from to restore the newest intact generation, or --fallback to "
            "restore exactly the one named",
        )
    if allow_external_links and options.refuse_external_links:
        raise UsageError(
            "--allow-external-links and --refuse-external-links contradict each other",
            hint="links pointing outside are restored as links by default; keep "
            "--refuse-external-links to refuse them",
        )


def _skipped(exc: GenerationDamaged) -> None:
    notice(
        f"itsup: warning: skipped {exc.generation}: {exc.reason}; trying the next "
        "older complete generation (--fallback)"
    )


def _fell_back(skipped: list[GenerationDamaged], generation: str, done: str) -> None:
    if not skipped:
        return
    names = ", ".join(s.generation for s in skipped)
    notice(
        f"itsup: warning: {done} {generation}, an older generation: skipped {names} "
        "(damaged) because of --fallback"
    )


def _show_dry_run(plan: RestorePlan) -> None:
    lines: list[str] = []
    for path, kind in plan.changed():
        line = f"{'+' if kind == 'new' else '~'} {path}"
        lines.append(line.encode("utf-8", "backslashreplace").decode())
        if len(lines) >= 4096:  # in pieces: rich per line costs seconds on a large tree
            click.echo("\n".join(lines))
            lines.clear()
    if lines:
        click.echo("\n".join(lines))
    out.print(f"dry run: {_summary(plan)}")
    for load in plan.loads:
        names = [str(r.get("database") or r["file"].rsplit("/", 1)[1]) for r in load.records]
        out.print(f"dry run: would load into {load.name} ({load.adapter}): {', '.join(names)}")


def _summary(plan: RestorePlan) -> str:
    new, replace, same = plan.counts["new"], plan.counts["replace"], plan.counts["same"]
    return (
        f"{plan.scope.label} from {plan.manifest.generation} into {plan.dest}: "
        f"{new} new, {replace} to overwrite, {same} unchanged"
    )


def _confirm(plan: RestorePlan, yes: bool) -> None:
    """Ask before overwriting existing paths or replacing databases; without a
    terminal, refuse (exit 2)."""
    if not (plan.overwrites or plan.loads) or yes:
        return
    engines = ", ".join(load.name for load in plan.loads)
    replacing = f"replace the data of {engines}" if engines else ""
    if not sys.stdin.isatty():
        what = (
            [f"overwrite {plan.overwrites} existing path(s) in {plan.dest}"]
            if plan.overwrites
            else []
        )
        raise UsageError(
            f"restore would {' and '.join(what + ([replacing] if replacing else []))}",
            hint="re-run with --yes, or look first with --dry-run",
        )
    if replacing:
        question = f"{_summary(plan)}; and {replacing} with the dumps. Go on?"
    else:
        question = f"{_summary(plan)}. Overwrite?"
    click.confirm(question, abort=True, err=True)


def _note_external(links: list[tuple[str, str]], done: str) -> None:
    """Name the symlinks pointing outside the tree that were (or would be) restored."""
    from itsup.actions.restore import describe_links

    if not links:
        return
    n = len(links)
    what = (
        "1 symlink pointing outside the tree as a link"
        if n == 1
        else (f"{n} symlinks pointing outside the tree as links")
    )
    text = f"{done} {what} (never followed): {describe_links(links)}"
    line = f"itsup: note: {text}".encode("utf-8", "backslashreplace").decode()
    if done == "restored":  # also a log record (run_restore): once under cron's redirect
        notice(line)
    else:
        err.print(line)
