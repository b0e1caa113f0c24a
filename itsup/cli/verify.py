"""`itsup backup verify` and `itsup backup drill`: proof that backups restore."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table
from rich.text import Text

from itsup.cli.common import TARGET, open_host
from itsup.cli.output import human_bytes, notice, out
from itsup.errors import ExitCode

if TYPE_CHECKING:
    from itsup.actions.drill import DrillResult
    from itsup.actions.verify import VerifyResult
    from itsup.host import Host
    from itsup.monitor import RunRecord

_STYLE = {
    "ok": "green",
    "info": "cyan",
    "warn": "yellow",
    "skipped": "dim",
    "incomplete": "yellow",
    "fail": "bold red",
    "failed": "bold red",
}


def _percent(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from itsup.actions.verify import parse_percent

    try:
        return parse_percent(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("verify")
@click.argument("generation", required=False)
@click.option("--all", "every", is_flag=True, help="Verify every generation on the target.")
@click.option(
    "--read-data-subset",
    "subset",
    metavar="PERCENT",
    callback=_percent,
    help="Also re-hash the content of a random PERCENT of the files (10, 10%; 100: all) "
    "and compare it with the file index.",
)
@TARGET
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def verify(
    ctx: click.Context,
    generation: str | None,
    every: bool,
    subset: float | None,
    target_choice: str | None,
    as_json: bool,
) -> int:
    """Check that generations on the target are intact and restorable.

    \b
    GENERATION defaults to the newest complete one; --all checks every one
    (incomplete ones are reported as such). For each: the manifest reads;
    the archive and file index exist with the recorded sizes; the archive
    streams (as a restore reads it, nothing written anywhere) with the
    recorded SHA-256, decrypts, decompresses, and its members are the
    index's, in order. Exit codes: 0 all passed, 4 no key decrypts it,
    5 a generation failed, 6 the target could not be reached, 10 no
    complete backup on the target.
    """
    if every and generation:
        raise click.UsageError("give a GENERATION or --all, not both")
    from itsup.actions.verify import verify_backups
    from itsup.monitor import monitored

    host = open_host(ctx)
    names = host.target_names(target_choice)
    with monitored(host.layout, host.config, "verify") as run:
        if len(names) == 1:
            result = verify_backups(
                host, generation, every=every, subset=subset, target_choice=target_choice
            )
            _record_verify(run.record, [result])
            _show_verify(result, as_json)
            error = result.error()
            if error is not None:
                raise error
        else:
            _verify_every_target(host, names, run.record, generation, every, subset, as_json)
        run.record.exit_code = ExitCode.SUCCESS
    return ExitCode.SUCCESS


def _record_verify(record: RunRecord, results: list[VerifyResult]) -> None:
    record.target = ", ".join(r.target for r in results) or None
    first = next((r.generations[0] for r in results if r.generations), None)
    record.generation = first.generation if first else None
    record.bytes = sum(r.bytes_read for r in results)
    record.files = sum(r.files for r in results)
    record.details = {
        "generations": sum(len(r.generations) for r in results),
        "failed": sum(len(r.failed) for r in results),
        "incomplete": sum(len(r.incomplete) for r in results),
        "files_hashed": sum(r.files_hashed for r in results),
    }


def _verify_every_target(
    host: Host,
    names: list[str],
    record: RunRecord,
    generation: str | None,
    every: bool,
    subset: float | None,
    as_json: bool,
) -> None:
    """`verify` without --target on a host with several targets: each one in turn.

    Exit code: 5 when a generation failed on any target; else the error of the
    first target that could not be verified (6 unreachable, 10 no backup); a
    missing key (4) stops at once, as on one target.
    """
    import logging

    from itsup.actions.verify import verify_backups
    from itsup.errors import StorageError

    log = logging.getLogger("itsup.verify")
    results: list[tuple[str, VerifyResult]] = []
    errors: list[tuple[str, StorageError]] = []
    for name in names:
        try:
            verified = verify_backups(
                host, generation, every=every, subset=subset, target_choice=name
            )
        except StorageError as exc:  # NotFoundError and NoBackupError included
            errors.append((name, exc))
            continue
        results.append((name, verified))
    _record_verify(record, [r for _n, r in results])
    record.details["targets_failed"] = len(errors) + sum(1 for _n, r in results if not r.ok)
    if as_json:
        rows = [{"name": n, **r.as_dict()} for n, r in results]
        rows += [{"name": n, "ok": False, "error": e.message} for n, e in errors]
        ok = not errors and all(r.ok for _n, r in results)
        out.print(json.dumps({"ok": ok, "targets": rows}, indent=2))
    else:
        for name, verified in results:
            out.print(f"target {name}:")
            _show_verify(verified, False)
    damaged = [(n, e) for n, r in results if (e := r.error()) is not None]
    if damaged:  # the error raised names the damage; these are said here
        for name, unread in errors:
            log.error("target %s: %s", name, unread.message)
    for found in (damaged, errors):
        if found:
            first = found[0][1]
            first.message = "; ".join(f"target {n}: {e.message}" for n, e in found)
            raise first


def _lock(lock: dict[str, str] | None) -> str:
    """`COMPLIANCE 2026-04-15 03:00 UTC`, or `-` for a generation not locked."""
    if not lock:
        return "-"
    return f"{lock['mode']} {lock['retain_until'][:16].replace('T', ' ')} UTC"


def _show_verify(result: VerifyResult, as_json: bool) -> None:
    if as_json:
        out.print(json.dumps(result.as_dict(), indent=2))
        return
    table = Table(title=f"Backup verify: {result.target}", title_justify="left")
    table.add_column("generation")
    table.add_column("result", overflow="fold")
    for col in ("objects", "bytes read", "files hashed", "db dumps", "seconds"):
        table.add_column(col, justify="right")
    locked = any(g.lock for g in result.generations)
    if locked:
        table.add_column("locked until")
    for g in result.generations:
        words = "FAILED" if g.result == "failed" else g.result
        label = Text(words, style=_STYLE[g.result])
        if g.reason:
            label.append(f": {g.reason}")
        table.add_row(
            Text(g.generation),
            label,
            str(g.objects_checked),
            human_bytes(g.bytes_read),
            str(g.files_hashed) if g.files_sampled or g.files_hashed else "-",
            str(len(g.dumps)) if g.dumps else "-",
            f"{g.seconds:.1f}",
            *([_lock(g.lock)] if locked else []),
        )
    out.print(table)
    dumps = sum(len(g.dumps) for g in result.generations)
    if dumps:
        out.print(f"{dumps} database dump(s) checked: SHA-256 and structure (see --json)")
    summary = f"{len(result.generations)} generation(s) checked: {len(result.failed)} failed"
    if result.incomplete:
        summary += f", {len(result.incomplete)} incomplete"
    out.print(summary)


@click.command("drill")
@TARGET
@click.option(
    "--generation",
    metavar="NAME",
    help="Drill this generation instead of the newest complete one.",
)
@click.option(
    "--report",
    "report",
    type=click.Path(dir_okay=False),
    help="Write the JSON report here (default: logs/drill-YYYYmmdd-HHMMSS.json, or "
    ".itsup/ when the host has no logs/).",
)
@click.option("--keep", is_flag=True, help="Keep the temporary host root (its path is printed).")
@click.option("--no-git", "no_git", is_flag=True, help="Skip cloning and checking the git remotes.")
@click.pass_context
def drill(
    ctx: click.Context,
    target_choice: str | None,
    generation: str | None,
    report: str | None,
    keep: bool,
    no_git: bool,
) -> int:
    """Restore drill: restore a generation in full into a scratch root and check it.

    \b
    Restores the newest complete generation (or --generation) into a new
    temporary folder, never the live tree; checks every restored path
    against the file index (type, size, mode, SHA-256); clones the git
    remotes of projects/ and secrets/ and checks them as `snapshot verify`
    does; measures RTO (how long it all took) and RPO (how old the restored
    data is) against backup.monitoring.rto / rpo; writes a JSON report.
    Exit codes: 0 passed, 1 only a target (RTO/RPO) was missed, 4 no key
    decrypts it, 5 the drill failed (restored data, git, or the restore
    itself), 6 the target could not be reached, 10 no complete backup.
    """
    from itsup.actions.drill import run_drill
    from itsup.monitor import monitored

    host = open_host(ctx)
    with monitored(host.layout, host.config, "drill") as run:
        result = run_drill(
            host,
            target_choice=target_choice,
            generation=generation,
            keep=keep,
            git=not no_git,
            report=Path(report) if report else None,
        )
        record = run.record
        record.target, record.generation = result.target, result.generation
        record.bytes, record.files = result.archive_bytes, result.files_checked
        record.details = {
            "rto_seconds": _rounded(result.rto_seconds),
            "rpo_seconds": _rounded(result.rpo_seconds),
            "rto_target": result.rto_target,
            "rpo_target": result.rpo_target,
            "report": result.report,
        }
        if sys.stdout.isatty() or ctx.obj["verbose"]:
            _show_drill(result)
        else:
            out.print(drill_summary(result, host.layout.root))
        if result.report_problem:
            notice(f"itsup: warning: {result.report_problem}")
        if result.error is not None:
            raise result.error
        record.exit_code = ExitCode.SUCCESS
    return ExitCode.SUCCESS


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _seconds(value: float | None, goal: int | None, suffix: str = "") -> str:
    shown = "-" if value is None else f"{value:.1f} s{suffix}"
    return shown + (f" (target {goal} s)" if goal is not None else " (no target)")


def _show_drill(result: DrillResult) -> None:
    table = Table(title=f"Restore drill: {result.generation}", title_justify="left")
    table.add_column("check", overflow="fold")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    for c in result.checks:
        table.add_row(
            Text(c.item), Text(c.status.upper(), style=_STYLE.get(c.status, "")), Text(c.detail)
        )
    out.print(table)
    verdict = "PASSED" if result.ok else "FAILED"
    out.print(
        f"drill {verdict}: {result.generation} from {result.target}; "
        f"{result.files_checked} files ({human_bytes(result.bytes_checked)}) checked; "
        f"RTO {_seconds(result.rto_seconds, result.rto_target)}, "
        f"RPO {_seconds(result.rpo_seconds, result.rpo_target, ' old')}",
    )
    if result.workdir:
        out.print(f"restored tree kept in {result.workdir}")
    if result.report:
        out.print(f"report: {result.report}")


def drill_summary(result: DrillResult, root: Path) -> str:
    """The drill in one line, for cron's log and mail (the table is for terminals and -v)."""
    extras = []
    if result.report:
        report = Path(result.report)
        extras.append(
            f"report: {report.relative_to(root) if report.is_relative_to(root) else report}"
        )
    if result.workdir:
        extras.append(f"restored tree kept in {result.workdir}")
    tail = f" ({'; '.join(extras)})" if extras else ""
    if result.ok:
        counts: dict[str, int] = {}
        for c in result.checks:
            counts[c.status] = counts.get(c.status, 0) + 1
        checks = f"{counts.pop('ok', 0)} checks ok" + "".join(
            f", {n} {status}" for status, n in sorted(counts.items())
        )
        return (
            f"drill of {result.generation} passed: {checks}, "
            f"RTO {_brief(result.rto_seconds)}, RPO {_brief(result.rpo_seconds)}{tail}"
        )
    first = next((f"{c.item}: {c.detail}".splitlines()[0] for c in result.failed), None)
    if first is None:
        first = result.error.message.splitlines()[0] if result.error else "unknown"
    return f"drill of {result.generation} FAILED: {first}{tail}"


def _brief(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"
