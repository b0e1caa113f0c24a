"""`python -m itsup` and the `itsup` command.

SIGINT and SIGTERM are caught from the very first instruction: the imports
below take a few tenths of a second, and a signal in that window must still
end the run with the documented exit code (130), not a traceback.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any


def _early(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def entry() -> None:
    signal.signal(signal.SIGTERM, _early)
    signal.signal(signal.SIGINT, _early)
    try:
        from itsup.cli.main import run
    except KeyboardInterrupt as exc:
        sys.stderr.write(f"itsup: {exc or 'interrupted'} before it started; nothing was written\n")
        sys.stderr.flush()
        # Straight out: nothing was started that needs finishing, and an interpreter
        # shutting down right after an interrupted import may still die by the signal.
        os._exit(130)
    run()


if __name__ == "__main__":
    entry()
