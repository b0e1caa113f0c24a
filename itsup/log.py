"""Logging: a line per event in logs/backup.log when the host has logs/; warnings to stderr.

Under cron's usual redirect (`itsup backup >> logs/backup.log 2>&1`) stderr
*is* logs/backup.log: then each event is written once, as its timestamped
record, and the console copies (this module's console handler, and the
`itsup: error:` lines of the command line) are left out.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from itsup.layout import Layout

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_stderr_is_log = False
_log_file: Path | None = None


def log_file() -> Path | None:
    """The host's logs/backup.log once `log_to_host` attached it, else None."""
    return _log_file


def stderr_is_log() -> bool:
    """Whether stderr goes to the log file this run writes (the cron redirect)."""
    return _stderr_is_log


def _to_console(record: logging.LogRecord) -> bool:
    return bool(getattr(record, "console", True)) and not _stderr_is_log


def configure(verbose: bool = False) -> None:
    root = logging.getLogger("itsup")
    root.setLevel(logging.DEBUG)
    if not any(getattr(h, "_itsup_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.INFO if verbose else logging.WARNING)
        console.setFormatter(logging.Formatter("itsup: %(levelname)s: %(message)s"))
        console.addFilter(_to_console)
        console._itsup_console = True  # type: ignore[attr-defined]
        root.addHandler(console)
    root.propagate = False


def _same_file(fd: int, path: Path) -> bool:
    try:
        opened, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def log_to_host(layout: Layout) -> Path | None:
    """Also log to <root>/logs/backup.log when the host keeps a logs/ folder."""
    global _stderr_is_log, _log_file
    if not layout.logs.is_dir():
        return None
    path = layout.logs / "backup.log"
    root = logging.getLogger("itsup")
    if any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
        _log_file = path
        return path
    try:
        handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    except OSError:
        return None
    handler.setLevel(logging.INFO)
    formatter = logging.Formatter(FORMAT, "%Y-%m-%dT%H:%M:%S%z")
    handler.setFormatter(formatter)
    root.addHandler(handler)
    _log_file = path
    _stderr_is_log = _same_file(2, path)
    return path
