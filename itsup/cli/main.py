"""Entry point: the one place where errors become exit codes."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import click

from itsup import __version__
from itsup.cli.output import notice
from itsup.errors import ConfigError, ExitCode, ItsupError
from itsup.log import configure


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(file_okay=False),
    envvar="ITSUP_ROOT",
    help="Host root (folder holding projects/itsup.yml). Default: ITSUP_ROOT, "
    "else the nearest parent of the current folder that has one.",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Say what happened, also when not on a terminal; -vv also logs each step to stderr.",
)
@click.version_option(__version__, prog_name="itsup")
@click.pass_context
def cli(ctx: click.Context, root: str | None, verbose: int) -> None:
    """Backup and disaster recovery for a Docker Compose + Traefik host.

    \b
    Exit codes: 0 success, 1 failure, 2 usage, 3 partial backup, 4 config,
    5 damaged or hostile backup, 6 storage unreachable, 10 no backup on the
    target, 11 locked, 12 stale backup (backup check), 130 interrupted.
    """
    configure(verbose >= 2)
    ctx.obj = {"root": root, "verbose": verbose}


def _register() -> None:
    from itsup.cli import backup, bucket, init, restore, schedule, secrets, snapshot, verify

    cli.add_command(backup.backup)
    backup.backup.add_command(verify.verify)
    backup.backup.add_command(verify.drill)
    backup.backup.add_command(schedule.schedule)
    for command in (bucket.setup_bucket, bucket.doctor, bucket.iam_policy):
        backup.backup.add_command(command)
    cli.add_command(restore.restore)
    cli.add_command(init.init)
    cli.add_command(secrets.keygen)
    cli.add_command(secrets.encrypt)
    cli.add_command(secrets.decrypt)
    cli.add_command(secrets.secrets)
    cli.add_command(snapshot.snapshot)


_register()


class _Stopped(KeyboardInterrupt):
    """SIGTERM, raised as a BaseException like Ctrl-C: libraries catch Exception
    broadly (botocore retries any error raised while it waits on the network), and
    would swallow an Exception raised from the handler."""


def _on_signal(signum: int, _frame: Any) -> None:
    raise _Stopped(f"stopped by {signal.Signals(signum).name}")


def _report(exc: ItsupError) -> None:
    """The error on stderr, as copies of the log record (see `notice`)."""
    if isinstance(exc, ConfigError) and len(exc.problems) > 1:
        notice(f"itsup: error: {len(exc.problems)} problems in configuration:")
        for problem in exc.problems:
            notice(f"  {problem}")
    else:
        notice(f"itsup: error: {exc.message}")
    if exc.hint:
        notice(f"itsup: hint: {exc.hint}")


def _interrupted(exc: KeyboardInterrupt) -> int:
    how = str(exc) or "interrupted"
    logging.getLogger("itsup").error("%s (exit 130)", how, extra={"console": False})
    notice(f"itsup: {how}; nothing half-written is offered for restore")
    return ExitCode.INTERRUPTED


def _stopped_by_signal(exc: click.exceptions.Abort) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM behind an Abort, if that is what it was.

    click wraps one raised in the command as the Abort's cause; one that came
    while a prompt waited is only its context (`raise Abort() from None`).
    """
    for inner in (exc.__cause__, exc.__context__):
        if isinstance(inner, KeyboardInterrupt):
            return inner
    return None


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        result = cli.main(args=argv, prog_name="itsup", standalone_mode=False)
    except click.exceptions.Abort as exc:
        stopped = _stopped_by_signal(exc)
        if stopped is not None:
            return _interrupted(stopped)
        # "no" at a prompt (or its input closed): the operator declined, nothing
        # was done. A failure to do what was asked, not an interrupt.
        logging.getLogger("itsup").error("aborted at a prompt (exit 1)", extra={"console": False})
        notice("itsup: aborted")
        return ExitCode.FAILURE
    except click.ClickException as exc:
        exc.show()
        return ExitCode.USAGE
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except ItsupError as exc:
        # Goes to logs/backup.log (the spec monitors it for errors); the console
        # line comes from _report, so the console handler is skipped here.
        # The hint goes into the record too: under cron's redirect the record is
        # all that is written (see itsup.log). A run refused by the lock is not a
        # failure: the run holding it reports.
        hint = f"; hint: {exc.hint}" if exc.hint else ""
        level = logging.WARNING if exc.exit_code == ExitCode.LOCKED else logging.ERROR
        logging.getLogger("itsup").log(
            level,
            "%s (exit %d)%s",
            exc.message,
            int(exc.exit_code),
            hint,
            extra={"console": False},
        )
        _report(exc)
        return int(exc.exit_code)
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except BrokenPipeError:
        return ExitCode.FAILURE
    except Exception as exc:  # the last line of defence: no tracebacks for operators
        logging.getLogger("itsup").exception("internal error", extra={"console": False})
        notice(f"itsup: internal error: {type(exc).__name__}: {exc}")
        notice(
            "itsup: hint: this is a bug in itsup; the details are in logs/backup.log "
            "(or run with -v)"
        )
        return ExitCode.FAILURE
    return int(result) if isinstance(result, int) else ExitCode.SUCCESS


def run() -> None:
    try:
        code = main()
    except KeyboardInterrupt:  # a signal while the first one was being reported
        code = ExitCode.INTERRUPTED
    # The run is over and its outcome decided: a signal arriving while Python
    # shuts down must not turn a finished run into a death by signal.
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except KeyboardInterrupt:  # one still pending when the handlers were replaced
        code = ExitCode.INTERRUPTED
    sys.exit(code)
