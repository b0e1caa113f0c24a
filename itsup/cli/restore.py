"""`itsup restore`."""

from __future__ import annotations

import logging
import signal
import sys
from typing import TYPE_CHECKING

import click

from itsup.cli.backup import TARGET, _host
from itsup.cli.output import byte_progress, human_bytes, interactive, notice, out
from itsup.errors import IntegrityError, NotFoundError, UsageError

if TYPE_CHECKING:
    from itsup.actions.restore import GenerationDamaged

log = logging.getLogger("itsup.restore")
QUIET = {"console": False}  # logged to logs/backup.log; the console line is printed here


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
@click.option(
    "--fallback",
    is_flag=True,
    help="If the newest complete generation turns out damaged (or its objects are "
    "missing), restore the next older complete one instead, and so on; each skipped "
    "generation is named on stderr. Not with --from: a named generation is never replaced.",
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
    fallback: bool,
    target_choice: str | None,
) -> None:
    """Restore state from a backup generation (stage, verify, then swap into place).

    \b
    itsup restore all                      everything in the generation
    itsup restore proxy                    proxy/ (Traefik config, acme.json)
    itsup restore PROJECT                  upstream/PROJECT (and its volumes if backed up)
    itsup restore --path proxy/traefik/acme.json
    itsup restore all --fallback           newest generation that passes every check

    \b
    A damaged generation is refused (exit 5) before anything is written;
    with --fallback the next older complete generation is tried instead.
    """
    # The restore action imports pyrage, a Rust extension that panics (traceback,
    # exit 1) if a SIGINT/SIGTERM is handled while it initialises: hold them back
    # for the import; they are handled right after it (exit 130).
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        from itsup.actions.restore import GenerationDamaged, plan_restore, run_restore
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)

    if fallback and generation:
        raise UsageError(
            "--fallback cannot be combined with --from: a named generation is never "
            "replaced by another one",
            hint="drop --from to restore the newest intact generation, or --fallback to "
            "restore exactly the one named",
        )
    host = _host(ctx)
    skipped: list[GenerationDamaged] = []

    def give_up() -> None:
        """Every complete generation was tried: none restores."""
        tried = "; ".join(f"{s.generation} ({_why(s)})" for s in skipped)
        raise IntegrityError(
            f"--fallback: no complete generation could be restored; tried {tried}",
            hint="`itsup backup verify --all` shows what is wrong with each",
        )

    def skip(exc: GenerationDamaged) -> None:
        skipped.append(exc)
        notice(
            f"itsup: warning: skipped {exc.generation}: {_why(exc)}; trying the next "
            "older complete generation (--fallback)"
        )
        log.warning("--fallback: skipped %s: %s", exc.generation, exc.message, extra=QUIET)

    while True:
        try:
            plan = plan_restore(
                host,
                what,
                path=path,
                generation=generation,
                to=to,
                target_choice=target_choice,
                external_links=allow_external_links,
                prefetch=not dry_run,
                skip=[s.generation for s in skipped],
            )
        except GenerationDamaged as exc:
            if not fallback:
                raise
            skip(exc)
            continue
        except NotFoundError:
            if skipped:  # the damaged ones were all there was
                give_up()
            raise
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
            _report_fallback(skipped, plan.manifest.generation, "would restore")
            return
        if replace and not yes:
            if not sys.stdin.isatty():
                raise UsageError(
                    f"restore would overwrite {replace} existing path(s) in {plan.dest}",
                    hint="re-run with --yes, or look first with --dry-run",
                )
            click.confirm(f"{summary}. Overwrite?", abort=True, err=True)
        show = interactive()
        try:
            with byte_progress("restore", plan.manifest.source_bytes, show) as advance:
                result = run_restore(plan, on_bytes=advance)
        except GenerationDamaged as exc:
            if not fallback:
                raise
            skip(exc)
            continue
        break
    _report_fallback(skipped, result.generation, "restored")
    if show or ctx.obj["verbose"]:
        out.print(
            f"restored {plan.scope.label} from {result.generation} into {result.dest}: "
            f"{result.files} files, {human_bytes(result.bytes)} in {result.seconds:.1f} s",
            markup=False,
        )


def _why(exc: GenerationDamaged) -> str:
    return exc.message.removeprefix(f"{exc.generation}: ")


def _report_fallback(skipped: list[GenerationDamaged], generation: str, done: str) -> None:
    if not skipped:
        return
    names = ", ".join(s.generation for s in skipped)
    notice(
        f"itsup: warning: {done} {generation}, an older generation: skipped {names} "
        "(damaged) because of --fallback"
    )
    log.warning("--fallback: %s %s; skipped %s", done, generation, names, extra=QUIET)
