"""Rendering helpers shared by the command groups."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

# Off a terminal (cron mail, pipes) rich would assume 80 columns and cut names.
# Plain text everywhere: a file path holding "[...]" must never render as markup.
out = Console(
    markup=False, highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160
)
err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def notice(text: str) -> None:
    """A line on stderr that repeats what a log record already says.

    Left out when stderr is logs/backup.log itself (cron's `>> logs/backup.log
    2>&1`): the timestamped record is there, and the copy would double it.
    """
    from itsup.log import stderr_is_log

    if not stderr_is_log():
        err.print(text)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def interactive() -> bool:
    return sys.stderr.isatty()


@contextmanager
def byte_progress(
    label: str, total: int | None, enabled: bool
) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on a terminal; nothing at all under cron or in pipes."""
    if not enabled:
        yield None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    with progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
