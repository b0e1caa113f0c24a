"""`itsup backup` and its subcommands."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click
from rich.table import Table
from rich.text import Text

from itsup.cli.common import TARGET, open_host
from itsup.cli.output import byte_progress, human_bytes, interactive, notice, out
from itsup.errors import ExitCode
from itsup.host import Host

if TYPE_CHECKING:
    from itsup.actions.backup import BackupResult
    from itsup.actions.prune import PruneResult
    from itsup.monitor import RunRecord


@click.group(invoke_without_command=True)
@TARGET
@click.option(
    "--allow-shrink",
    is_flag=True,
    help="Store this backup even if the source is empty or holds under "
    "backup.guard.min_ratio (50%) of the files or bytes of the newest complete backup.",
)
@click.pass_context
def backup(ctx: click.Context, target_choice: str | None, allow_shrink: bool) -> int | None:
    """Back up upstream/ and proxy/ (and volumes if configured) as one generation.

    With no subcommand, runs a backup. Safe under cron: prints nothing on
    success unless -v; the exit code says success (0), partial (3), or why not.
    A source that is empty, or far smaller than the newest complete backup,
    is refused (exit 1) unless --allow-shrink.
    """
    if ctx.invoked_subcommand is not None:
        return None
    from itsup.actions.backup import run_backup
    from itsup.monitor import monitored

    host = open_host(ctx)
    with monitored(host.layout, host.config, "backup", _where(host, target_choice)) as run:
        show = interactive()
        # No total: it would take a second walk of the tree before the first byte is
        # stored; the bar shows bytes read, their rate and the time instead.
        with byte_progress("backup", None, show) as advance:
            result = run_backup(
                host,
                target_choice=target_choice,
                on_bytes=advance,
                allow_shrink=allow_shrink,
                on_locked=run.begin,
            )
        record = run.record
        _record_backup(record, result)
        _report_backup(ctx, result, show)
    # After the run is recorded (log line, state, alerts, ping): prune is a step of
    # its own, and its failure never changes the backup's outcome or exit code.
    retention = host.config.backup.retention
    if retention is not None and retention.prune_after_backup:
        for stored in result.targets:
            if stored.ok:
                _prune_after_backup(ctx, host, stored.name, show)
    return record.exit_code


def _record_backup(record: RunRecord, result: BackupResult) -> None:
    """The run's record: figures, per-target details, and why it is partial."""
    s = result.stats
    record.generation = result.generation
    record.bytes, record.files = result.archive_size, s.files
    record.details = {"source_bytes": s.bytes, "unreadable_paths": len(s.problems)}
    if len(result.targets) > 1:
        failed_targets = result.failed_targets
        record.details["targets_stored"] = len(result.targets) - len(failed_targets)
        record.details["targets_failed"] = len(failed_targets)
        record.details["targets"] = [t.as_dict() for t in result.targets]
    record.exit_code = ExitCode.PARTIAL if result.partial else ExitCode.SUCCESS
    messages = []
    for target in result.failed_targets:
        assert target.error is not None
        messages.append(f"target {target.name} FAILED: {target.error.message}")
    if result.failed_dumps:
        failed = result.failed_dumps
        messages.append(
            f"{len(failed)} database dump(s) failed, e.g. {failed[0].project}/"
            f"{failed[0].service}: {failed[0].error}"
        )
    elif s.problems:
        messages.append(
            f"{len(s.problems)} path(s) could not be read completely, e.g. "
            f"{s.problems[0].path}: {s.problems[0].problem}"
        )
    if messages:
        record.message = "; ".join(messages)


def _prune_after_backup(
    ctx: click.Context, host: Host, target_choice: str | None, show: bool
) -> None:
    """`backup.retention.prune_after_backup`: prune, a WARNING when it fails."""
    import logging

    from itsup.actions.prune import run_prune
    from itsup.errors import ItsupError

    log = logging.getLogger("itsup.prune")
    try:
        result = run_prune(host, target_choice=target_choice)
    except ItsupError as exc:
        log.warning(
            "prune after the backup failed (the backup is stored; exit code unchanged): %s",
            exc.message,
        )
        return
    except Exception as exc:  # a bug in prune must not fail a stored backup either
        log.warning(
            "prune after the backup failed (the backup is stored; exit code unchanged): "
            "internal error: %s: %s",
            type(exc).__name__,
            exc,
            exc_info=True,
        )
        return
    if show or ctx.obj["verbose"]:
        out.print(_prune_summary(result))


def _where(host: Host, choice: str | None) -> str | None:
    """Where the run writes, for its log lines and alerts: the opened target and
    prefix (no credentials). None when the target cannot be opened: the run
    opens it again and fails inside its record, so the failure alert goes out."""
    from itsup.errors import ItsupError
    from itsup.generation import location

    try:
        opened = [host.target(name) for name in host.target_names(choice)]
    except ItsupError:
        return None
    return ", ".join(location(target, prefix) for target, prefix in opened)


def _report_backup(ctx: click.Context, result: BackupResult, show: bool) -> None:
    s = result.stats
    several = len(result.targets) > 1
    if show or ctx.obj["verbose"]:
        where = f"{len(result.targets)} targets" if several else result.target
        out.print(
            f"{result.generation}: {s.files} files, {human_bytes(s.bytes)} -> "
            f"{human_bytes(result.archive_size)} in {result.seconds:.1f} s "
            + (f"(to {where})" if several else f"({where}/{result.archive_key})"),
        )
        for t in result.targets if several else ():
            if t.ok:
                out.print(
                    f"  {t.name}: {result.generation} stored, {human_bytes(t.archive_size)} in "
                    f"{t.seconds:.1f} s ({t.where})"
                )
            else:  # also its ERROR record, on stderr and in logs/backup.log
                assert t.error is not None
                out.print(f"  {t.name}: FAILED, nothing stored ({t.where}): {t.error.message}")
    if s.problems:  # each path is also a WARNING record in logs/backup.log
        failed = result.failed_dumps
        others = [p for p in s.problems if not p.problem.startswith("dump failed: ")]
        if failed:
            notice(
                f"itsup: warning: {result.generation} is PARTIAL: {len(failed)} database "
                "dump(s) failed (everything else is stored):"
            )
            for dump in failed:
                notice(f"  {dump.project}/{dump.service} ({dump.adapter}): {dump.error}")
        if others:
            notice(
                f"itsup: warning: {result.generation} is PARTIAL: {len(others)} path(s) could "
                "not be read completely:"
            )
            for problem in others[:20]:
                notice(f"  {problem.path}: {problem.problem}")
            if len(others) > 20:
                notice(f"  ... and {len(others) - 20} more (see the manifest)")


@backup.command("plan")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def plan_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show the databases each project dumps, how, and what is left out of the file copy.

    Reads projects/{project}/backup.yml, or discovers engines by image in
    upstream/{project}/docker-compose.yml; runs nothing. Secrets show as ***.
    """
    from itsup.actions.dbplan import describe_plan

    host = open_host(ctx)
    projects = describe_plan(host)
    if as_json:
        out.print(json.dumps([p.as_dict() for p in projects], indent=2))
        return
    if not projects:
        out.print(
            "no databases found: no project has a backup.yml, and no compose file runs a "
            "known engine (postgres, mariadb, mysql, redis)"
        )
        return
    for project in projects:
        state = (
            ""
            if project.dumped
            else "  [NOT DUMPED: set backup.databases: auto in itsup.yml, or write a backup.yml]"
        )
        out.print(f"{project.project}  ({project.source}){state}")
        for dump in project.dumps:
            where = {"container": "in its container", "host": "outside containers (host's client)"}
            out.print(f"  {dump.name}: {dump.adapter}, {where.get(dump.where, 'a file')}")
            for note in dump.credentials:
                out.print(f"    credentials: {note}")
            for command in dump.commands:
                out.print(f"    $ {command}")
        for path in project.excluded:
            out.print(f"  left out of the file copy: {path}")
        if project.stop:
            out.print(f"  stopped while its files are copied: {', '.join(project.stop)}")
        for note in project.notes:
            out.print(f"  note: {note}")


@backup.command("list")
@TARGET
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_cmd(ctx: click.Context, target_choice: str | None, as_json: bool) -> None:
    """List generations, newest first, and whether each is complete."""
    from itsup.actions.listing import list_generations

    host = open_host(ctx)
    where, rows = list_generations(host, target_choice)
    if as_json:
        out.print(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    if not rows:
        out.print(f"no backups on {where}")
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


def _age(seconds: float | None) -> str:
    from itsup.durations import format_duration

    return "-" if seconds is None else format_duration(seconds)


def _when(record: dict[str, object] | None) -> str:
    from datetime import datetime

    if not record or not isinstance(record.get("finished"), int | float):
        return "never"
    finished = float(record["finished"])  # type: ignore[arg-type]
    ago = _age(datetime.now().timestamp() - finished)
    stamp = datetime.fromtimestamp(finished).astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"{stamp} ({ago} ago)"


@backup.command("status")
@TARGET
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status_cmd(ctx: click.Context, target_choice: str | None, as_json: bool) -> int:
    """The newest backup on each target, and the last backup, verify and drill runs."""
    from itsup.actions.status import status

    host = open_host(ctx)
    st = status(host, target_choice)
    if as_json:
        out.print(json.dumps(st.as_dict(), indent=2))
        return ExitCode.SUCCESS
    table = Table(title="Newest complete backup", title_justify="left")
    columns = ("target", "where", "generation", "age", "size", "source", "files", "took", "stored")
    for col in columns:
        table.add_column(col, justify="right" if col in ("size", "source", "files") else "left")
    for t in st.targets:
        if t.error:
            error = Text(f"unreachable: {t.error}", style="red")  # not markup: it quotes the server
            table.add_row(t.name, Text(t.where), error, *["-"] * 6)
            continue
        stored = (
            f"{t.generations} ({t.incomplete} incomplete)" if t.incomplete else str(t.generations)
        )
        table.add_row(
            t.name,
            Text(t.where),
            (t.newest or "none") + (" (partial)" if t.partial else ""),
            _age(t.age_seconds),
            human_bytes(t.archive_bytes) if t.archive_bytes is not None else "-",
            human_bytes(t.source_bytes) if t.source_bytes is not None else "-",
            "-" if t.files is None else str(t.files),
            _age(t.duration_seconds),
            stored,
        )
    out.print(table)
    runs = Table(title="Last runs on this host", title_justify="left")
    for col in ("run", "last", "result", "last success", "detail"):
        runs.add_column(col)
    for action in ("backup", "verify", "drill", "check"):
        last = st.runs.get(action)
        detail = ""
        if last:
            if last.get("message"):
                detail = str(last["message"])
            elif action == "drill":
                d = last.get("details") or {}
                detail = f"RTO {_age(d.get('rto_seconds'))}, RPO {_age(d.get('rpo_seconds'))}"
            elif last.get("generation"):
                detail = str(last["generation"])
        runs.add_row(
            action,
            _when(last),
            str(last.get("result")) if last else "-",
            _when(st.successes.get(action)),
            detail,
        )
    out.print(runs)
    return ExitCode.SUCCESS


@backup.command("check")
@TARGET
@click.option(
    "--max-age",
    metavar="DURATION",
    help="Newest complete backup may be at most this old: 30s, 90m, 48h, 7d "
    "(default: backup.monitoring.max_age, 48h).",
)
@click.pass_context
def check_cmd(ctx: click.Context, target_choice: str | None, max_age: str | None) -> int:
    """Exit 12 when the newest complete backup is older than --max-age (for cron/monitoring).

    Reads the storage itself, so it also notices a backup job that stopped
    running. Sends a `stale` notification when it fails.
    """
    from itsup.actions.status import check
    from itsup.durations import format_duration, parse_duration
    from itsup.errors import UsageError
    from itsup.monitor import monitored

    try:
        limit = parse_duration(max_age) if max_age else None
    except ValueError as exc:
        raise UsageError(f"--max-age: {exc}") from None
    host = open_host(ctx)
    seconds = limit if limit is not None else host.config.backup.monitoring.max_age
    with monitored(host.layout, host.config, "check") as run:
        run.record.details = {"max_age_seconds": seconds}
        run.record.target = _where(host, target_choice)
        checked = check(host, seconds, target_choice)
        st = max(checked, key=lambda t: t.age_seconds or 0)  # the oldest newest backup
        run.record.generation = st.newest
        run.record.details["age_seconds"] = round(st.age_seconds or 0)
        if ctx.obj["verbose"] or interactive():
            for st in checked:
                name = f"{st.name}: " if len(checked) > 1 else ""
                out.print(
                    f"ok: {name}{st.newest} is {format_duration(st.age_seconds or 0)} old "
                    f"(limit {format_duration(seconds)})",
                )
    return ExitCode.SUCCESS


@backup.command("sync")
@click.option("--from", "source", required=True, metavar="NAME", help="The target to copy from.")
@click.option("--to", "dest", required=True, metavar="NAME", help="The target to copy to.")
@click.option("--dry-run", is_flag=True, help="Show what would be copied; copy nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def sync_cmd(ctx: click.Context, source: str, dest: str, dry_run: bool, as_json: bool) -> int:
    """Copy the complete generations on --from that --to lacks, then point its latest.

    Server-side between two S3 targets of one service (same endpoint and
    credentials), else streamed through this host. Each copy is checked on
    --to (size and SHA-256 against the manifest) before its manifest is
    written. A generation that does not match its manifest on --from is not
    copied, and named (exit 5). A second run copies nothing.
    """
    from itsup.actions.sync import run_sync
    from itsup.errors import UsageError

    host = open_host(ctx)
    host.require_backup_section()
    for option, name in (("--from", source), ("--to", dest)):
        problem = host.config.backup.unknown_target(name)
        if problem is not None:
            raise UsageError(f"{option} {name}: {problem}")
    result = run_sync(host, source, dest, dry_run=dry_run)
    if as_json:
        out.print(json.dumps(result.as_dict(), indent=2))
    else:
        for row in result.rows:
            detail = row.error or human_bytes(row.bytes)
            if row.action == "copied":
                detail += f" in {row.seconds:.1f} s"
            out.print(f"{row.name}  {row.action.upper() if row.error else row.action}: {detail}")
        verb = "would copy" if dry_run else "copied"
        count = len(result.rows) - len(result.failed) if dry_run else len(result.copied)
        latest = f"; latest there: {result.latest}" if result.latest and not dry_run else ""
        out.print(
            f"sync {source} -> {dest} ({result.how}): {verb} {count} generation(s), "
            f"{result.present} already there"
            + (f", {len(result.failed)} NOT copied" if result.failed else "")
            + latest
        )
    error = result.error()
    if error is not None:
        raise error
    return ExitCode.SUCCESS


@backup.command("prune")
@TARGET
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def prune_cmd(ctx: click.Context, target_choice: str | None, dry_run: bool, as_json: bool) -> int:
    """Remove the generations backup.retention does not keep (restic's forget rules).

    Lists every generation with the rules that keep it, or `remove`, then
    removes (not with --dry-run) and sums up. Never removes the newest
    complete generation nor what `latest` is a copy of. Also removes what
    failed runs left (no manifest) once older than backup.orphan_grace.
    Exit 4 when itsup.yml has no backup.retention.
    """
    from itsup.actions.prune import run_prune

    host = open_host(ctx)

    def show_plan(plan: PruneResult) -> None:
        header = f"Generations on {plan.where}"
        out.print(header + (" (dry run: nothing is removed)" if dry_run else ""))
        out.print(f"policy: {plan.describe_policy()}")
        if not plan.rows:
            out.print("no generations there")
        width = max((len(r.name) for r in plan.rows), default=0)
        for row in plan.rows:
            out.print(f"{row.name:<{width}}  {row.action:<6}  {row.why(plan.within)}".rstrip())

    result = run_prune(
        host, target_choice=target_choice, dry_run=dry_run, on_plan=None if as_json else show_plan
    )
    out.print(json.dumps(result.as_dict(), indent=2) if as_json else _prune_summary(result))
    return ExitCode.SUCCESS


def _prune_summary(result: PruneResult) -> str:
    removed = result.removed
    incomplete = sum(1 for r in removed if not r.complete)
    if result.dry_run:
        extra = f" ({incomplete} incomplete)" if incomplete else ""
        return (
            f"dry run: would remove {len(removed)} generation(s){extra} and keep "
            f"{len(result.kept)}; run without --dry-run to remove them"
        )
    details = [f"{incomplete} incomplete"] if incomplete else []
    details.append(f"{len(result.deleted)} object(s)")
    if result.uploads:
        details.append(f"{result.uploads} unfinished upload(s) discarded")
    locked = [
        f"{r.name}: not removed: {r.note}; kept until then"
        for r in result.rows
        if r.note and r.note.startswith("locked")
    ]
    return "\n".join(
        [
            *locked,
            f"prune: removed {len(removed)} generation(s) ({'; '.join(details)}), "
            f"kept {len(result.kept)}, in {result.seconds:.1f} s",
        ]
    )
