#!/usr/bin/env python3
"""The spec's cron entry point: `bin/backup.py` runs `itsup backup` for this host.

It only backs up when called with no arguments; anything else (such as
--help) prints this help and does nothing, so a typo never starts a backup.
Exit codes are those of `itsup backup` (see the README).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    if argv:
        print(__doc__.strip())
        print("\nusage: bin/backup.py   (no arguments)")
        return 0 if argv[0] in ("-h", "--help") else 2
    venv_python = HERE.parent / ".venv" / "bin" / "python"
    if venv_python.exists() and Path(sys.prefix).resolve() != venv_python.parent.parent.resolve():
        os.execv(str(venv_python), [str(venv_python), str(Path(__file__).resolve())])
    root = os.environ.get("ITSUP_ROOT") or str(HERE.parent)
    sys.path.insert(0, str(HERE.parent))
    from itsup.cli.main import main as itsup_main

    return itsup_main(["--root", root, "backup"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
