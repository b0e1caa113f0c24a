"""Logging: a line per event in logs/backup.log when the host has logs/; warnings to stderr."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from itsup.layout import Layout

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(verbose: bool = False) -> None:
    root = logging.getLogger("itsup")
    root.setLevel(logging.DEBUG)
    if not any(getattr(h, "_itsup_console", False) for h in root.handlers):
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(logging.INFO if verbose else logging.WARNING)
        console.setFormatter(logging.Formatter("itsup: %(levelname)s: %(message)s"))
        console.addFilter(lambda record: getattr(record, "console", True))
        console._itsup_console = True  # type: ignore[attr-defined]
        root.addHandler(console)
    root.propagate = False


def log_to_host(layout: Layout) -> Path | None:
    """Also log to <root>/logs/backup.log when the host keeps a logs/ folder."""
    if not layout.logs.is_dir():
        return None
    path = layout.logs / "backup.log"
    root = logging.getLogger("itsup")
    if any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
        return path
    try:
        handler = logging.FileHandler(path, encoding="utf-8", errors="backslashreplace")
    except OSError:
        return None
    handler.setLevel(logging.INFO)
    formatter = logging.Formatter(FORMAT, "%Y-%m-%dT%H:%M:%S%z")
    handler.setFormatter(formatter)
    root.addHandler(handler)
    return path
