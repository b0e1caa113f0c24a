"""`itsup backup schedule`: show, install or remove the timers (or cron lines) that run
backups, restore drills and stale checks unattended."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from itsup.cli.output import err, out

if TYPE_CHECKING:
    from itsup.actions.schedule import Outcome, Rendered


def _say(text: str) -> None:
    out.print(text)


def _note(text: str) -> None:
    err.print(f"itsup: note: {text}")


def _warn(text: str) -> None:
    err.print(f"itsup: warning: {text}")


def _missing_commands(ctx: click.Context, drill: str, check: bool) -> list[str]:
    """Subcommands the jobs would run that this itsup does not have (yet)."""
    group = ctx.parent.command if ctx.parent is not None else None
    if not isinstance(group, click.Group):
        return []
    wanted = (["drill"] if drill != "off" else []) + (["check"] if check else [])
    return [name for name in wanted if name not in group.commands]


def _config_problem(root: str | None) -> str | None:
    from itsup.errors import ItsupError
    from itsup.host import open_host

    try:
        open_host(root).require_backup_section()
    except ItsupError as exc:
        return exc.message.splitlines()[0]
    return None


def _default_kind(unit_dir: str | None, user: bool, cron_file: str | None) -> str:
    """The scheduler when neither --systemd nor --cron is given.

    An option only one of them has picks it (--unit-dir or --user: systemd,
    --cron-file: cron); otherwise systemd where it runs, else cron.
    """
    from itsup.actions import schedule as act

    if unit_dir is not None or user:
        return "systemd"
    if cron_file is not None:
        return "cron"
    return act.default_kind()


def _warn_unrunnable(ctx: click.Context, drill: str, check: bool) -> None:
    """Warn (and only warn) about what would make the scheduled jobs fail when they run.

    Jobs naming a `backup` subcommand this itsup lacks, and a host
    configuration that does not load. Neither stops the schedule from being
    shown or installed: the operator may fix either afterwards.
    """
    for missing in _missing_commands(ctx, drill, check):
        _warn(
            f"this itsup has no `backup {missing}` command: that job will fail until it does "
            f"(or leave it out with {'--drill off' if missing == 'drill' else '--no-check'})"
        )
    problem = _config_problem(ctx.obj["root"])
    if problem is not None:
        _warn(f"the scheduled runs will fail until the configuration is fixed: {problem}")


def _show(rendered: list[Rendered], kind: str) -> None:
    """Print the files `--install` would write, each under its label; write nothing."""
    from itsup.actions import schedule as act

    for i, f in enumerate(rendered):
        _say(("\n" if i else "") + f"# --- {f.label} ---")
        _say(f.text.rstrip("\n"))
    if kind == "systemd" and not act.systemd_running():
        _note("systemd is not running on this machine; --cron schedules with cron")
    _note("nothing written; add --install to install this")


def _report(outcome: Outcome) -> None:
    """Print what an install or uninstall did (stdout) and its notes (stderr)."""
    for line in outcome.done:
        _say(line)
    for line in outcome.notes:
        _note(line)


@click.command("schedule")
@click.option("--at", "at", metavar="HH:MM", help="Daily backup time (default 03:00).")
@click.option(
    "--on-calendar",
    metavar="SPEC",
    help="Instead of --at: a systemd OnCalendar spec ('Mon..Fri 02:30'), or with cron "
    "the 5 time fields ('0 3 * * 1-5').",
)
@click.option(
    "--randomized-delay",
    default="30m",
    show_default=True,
    metavar="DURATION",
    help="systemd RandomizedDelaySec for the backup and drill timers (cron has none).",
)
@click.option(
    "--drill",
    type=click.Choice(["monthly", "weekly", "off"]),
    default="monthly",
    show_default=True,
    help="Restore drill (`backup drill`) 90 minutes after the backup, on the 1st or on Sundays.",
)
@click.option(
    "--check/--no-check",
    default=False,
    help="Also run `backup check --max-age AGE` hourly (stale-backup alert).",
)
@click.option("--max-age", default="48h", show_default=True, help="Age limit for --check.")
@click.option("--systemd", "kind", flag_value="systemd", help="Use systemd timers.")
@click.option("--cron", "kind", flag_value="cron", help="Use cron.")
@click.option("--install", is_flag=True, help="Write and enable what is shown.")
@click.option("--uninstall", is_flag=True, help="Disable and remove what itsup installed.")
@click.option(
    "--unit-dir",
    type=click.Path(file_okay=False),
    help="Where unit files go (default /etc/systemd/system, or ~/.config/systemd/user "
    "with --user).",
)
@click.option(
    "--cron-file",
    type=click.Path(dir_okay=False),
    help="A system crontab to write, with a user field (e.g. /etc/cron.d/itsup); "
    "default: your crontab via `crontab`.",
)
@click.option("--user", is_flag=True, help="systemd user units (systemctl --user).")
@click.option(
    "--name",
    metavar="NAME",
    help="Unit names itsup-NAME-backup.* etc.: needed for a second host root on one machine.",
)
@click.option(
    "--logrotate",
    is_flag=True,
    help="Also a logrotate stanza for logs/backup.log (/etc/logrotate.d/itsup[-NAME]).",
)
@click.option(
    "--logrotate-file",
    type=click.Path(dir_okay=False),
    help="Where the --logrotate stanza goes instead.",
)
@click.pass_context
def schedule(
    ctx: click.Context,
    at: str | None,
    on_calendar: str | None,
    randomized_delay: str,
    drill: str,
    check: bool,
    max_age: str,
    kind: str | None,
    install: bool,
    uninstall: bool,
    unit_dir: str | None,
    cron_file: str | None,
    user: bool,
    name: str | None,
    logrotate: bool,
    logrotate_file: str | None,
) -> None:
    """Run backups unattended: systemd timers where systemd runs, else cron.

    \b
    Without --install or --uninstall it only prints what it would install.
    systemd: itsup-backup.service/.timer (daily, Persistent, randomized
    delay, lowest CPU and I/O priority), itsup-drill.* (monthly restore
    drill) and with --check itsup-check.* (hourly stale check). cron: the
    same jobs as lines between "# BEGIN itsup (root: R)" and "# END itsup
    (root: R)"; reinstalling replaces that block, --uninstall removes only it.

    \b
    Files itsup writes start with "# Managed by itsup backup schedule
    (root: R)"; it never overwrites or removes a file without that line.
    Examples:
      itsup --root /srv/host backup schedule --at 02:30 --check --install
      itsup --root /srv/host backup schedule --cron --cron-file /etc/cron.d/itsup --install
    """
    from itsup.actions import schedule as act
    from itsup.errors import UsageError
    from itsup.layout import find_root
    from itsup.log import log_to_host

    if install and uninstall:
        raise UsageError("--install and --uninstall exclude each other")
    if logrotate_file is not None:
        logrotate = True
    if kind is None:
        kind = _default_kind(unit_dir, user, cron_file)
    layout = find_root(ctx.obj["root"])
    opts = act.Options(
        kind=kind,
        at=at,
        on_calendar=on_calendar,
        randomized_delay=randomized_delay,
        drill=drill,
        check=check,
        max_age=max_age,
        user=user,
        name=name,
        unit_dir=Path(unit_dir) if unit_dir is not None else None,
        cron_file=Path(cron_file) if cron_file is not None else None,
        logrotate=logrotate,
        logrotate_file=Path(logrotate_file) if logrotate_file is not None else None,
    )
    if uninstall:
        log_to_host(layout)
        _report(act.uninstall(layout, opts))
        return
    rendered = act.render(layout, opts)
    _warn_unrunnable(ctx, drill, check)
    if not install:
        _show(rendered, kind)
        return
    log_to_host(layout)
    _report(act.install(layout, opts))
