"""The fault ledger behind docs/reliability.md.

Fault tests call `record(category, fault, outcome)` once per attempt (one
fault injected, one outcome observed). At the end of the session (of each
pytest-xdist worker) the ledger is merged into the JSON file that
ITSUP_RELIABILITY_OUT names, if any; `make reliability` runs the fault tests
that way and renders the table with `bench/reliability.py`. A normal
`make test` records too and discards it.

Outcomes are the guarantees the suite checks, in words an operator reads:
e.g. "completed, verified", "failed cleanly, nothing offered", "restored
exactly", "destination unchanged". A test asserts the outcome before it
records it, so the ledger only ever holds what was observed.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections import Counter
from pathlib import Path

_lock = threading.Lock()
_ledger: Counter[tuple[str, str, str]] = Counter()


def record(category: str, fault: str, outcome: str, times: int = 1) -> None:
    with _lock:
        _ledger[(category, fault, outcome)] += times


def write(path: Path) -> None:
    """Merge this process's ledger into `path` (several pytest runs may add up).

    Under pytest-xdist every worker merges its own part as it finishes, so the
    read-merge-write holds an exclusive lock on a file beside the ledger.
    """
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows: Counter[tuple[str, str, str]] = Counter()
        if path.exists():
            for row in json.loads(path.read_text()):
                rows[(row["category"], row["fault"], row["outcome"])] += row["count"]
        rows.update(_ledger)
        data = [
            {"category": c, "fault": f, "outcome": o, "count": n}
            for (c, f, o), n in sorted(rows.items())
        ]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(path)


def flush() -> None:
    out = os.environ.get("ITSUP_RELIABILITY_OUT")
    if out and _ledger:
        write(Path(out))
