"""What the command groups share: the `--target` option and opening the host.

Command modules import these from here, never each other's private names.
"""

from __future__ import annotations

import click

from itsup.host import Host

TARGET = click.option(
    "--target",
    "target_choice",
    metavar="NAME",
    help="Which configured target to use: a name under backup.targets, or s3 / local for "
    "those sections (default: backup.target, else every target: a backup writes to each, "
    "verify and check check each, other commands read the first that answers). "
    "An unknown name is a usage error (exit 2).",
)


def open_host(ctx: click.Context) -> Host:
    """The host root of this run (`--root`, ITSUP_ROOT or the nearest parent), its
    log file attached first, then its config and secrets loaded, and the command's
    `--target NAME`, if given, checked against the configured targets."""
    from itsup.host import load_host
    from itsup.layout import find_root
    from itsup.log import log_to_host

    # The log first: a run that fails on its configuration (broken YAML, a
    # misspelt section, a missing placeholder) must still leave its ERROR
    # record in logs/backup.log, where cron's operator looks.
    layout = find_root(ctx.obj["root"])
    log_to_host(layout)
    host = load_host(layout)
    choice = ctx.params.get("target_choice")
    # A typo is caught before any run starts (no failed run, no alert); without
    # a backup section the command's own run reports that instead.
    if choice is not None and host.config.backup_given:
        host.check_target_name(choice)
    return host
