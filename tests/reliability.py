"""The fault ledger behind docs/reliability.md.

Fault tests call `record(category, fault, outcome)` once per attempt (one
fault injected, one outcome observed). At the end of the session the
ledger is written as JSON when ITSUP_RELIABILITY_OUT names a file;
`make reliability` runs the fault tests that way and renders the table with
`bench/reliability.py`. A normal `make test` records too and discards it.

Outcomes are the guarantees the suite checks, in words an operator reads:
e.g. "completed, verified", "failed cleanly, nothing offered", "restored
exactly", "destination unchanged". A test asserts the outcome before it
records it, so the ledger only ever holds what was observed.
"""

from __future__ import annotations

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
    """Merge this process's ledger into `path` (several pytest runs may add up)."""
    rows: Counter[tuple[str, str, str]] = Counter()
    if path.exists():
        for row in json.loads(path.read_text()):
            rows[(row["category"], row["fault"], row["outcome"])] += row["count"]
    rows.update(_ledger)
    data = [
        {"category": c, "fault": f, "outcome": o, "count": n}
        for (c, f, o), n in sorted(rows.items())
    ]
    path.write_text(json.dumps(data, indent=2) + "\n")


def flush() -> None:
    out = os.environ.get("ITSUP_RELIABILITY_OUT")
    if out and _ledger:
        write(Path(out))
