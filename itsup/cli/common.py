"""What the command groups share: the `--target` option and opening the host.

Command modules import these from here, never each other's private names.
"""

from __future__ import annotations

import click

from itsup.host import Host

TARGET = click.option(
    "--target",
    "target_choice",
    type=click.Choice(["s3", "local"]),
    help="Which configured target to use (default: S3 if configured, else local).",
)


def open_host(ctx: click.Context) -> Host:
    """The host root of this run (`--root`, ITSUP_ROOT or the nearest parent), its
    log file attached first, then its config and secrets loaded."""
    from itsup.host import load_host
    from itsup.layout import find_root
    from itsup.log import log_to_host

    # The log first: a run that fails on its configuration (broken YAML, a
    # misspelt section, a missing placeholder) must still leave its ERROR
    # record in logs/backup.log, where cron's operator looks.
    layout = find_root(ctx.obj["root"])
    log_to_host(layout)
    return load_host(layout)
