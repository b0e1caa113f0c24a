"""Run state as Prometheus metrics, in a file for node_exporter's textfile collector.

`write_metrics` is called after every monitored run with the whole run state
(`itsup.monitor.load_state`), so the file always describes the last run of
each action, whichever ran last. All metrics are gauges named `itsup_*`, with
a `host` label (`ITSUP_HOST_NAME`, else the host name). The names are a public
interface: dashboards and alert rules (contrib/) depend on them.

For each of backup, verify and drill (once it has run at least once):

    itsup_<action>_last_run_timestamp_seconds      when the last run ended
    itsup_<action>_last_success_timestamp_seconds  when the last success/partial run ended (0: never)
    itsup_<action>_last_duration_seconds           how long the last run took
    itsup_<action>_last_exit_code                  the last run's exit code
    itsup_<action>_last_result{result=...}         1 for the last run's result, 0 for the others

and, when the runs recorded them:

    itsup_backup_last_archive_bytes        archive size of the last successful backup
    itsup_backup_last_source_bytes         source data read by the last successful backup
    itsup_backup_last_files                files in the last successful backup
    itsup_backup_last_unreadable_paths     paths the last successful backup could not read
    itsup_verify_last_generations          generations the last verify checked
    itsup_verify_last_failed_generations   generations the last verify found damaged
    itsup_drill_last_rto_seconds           recovery time the last drill measured
    itsup_drill_last_rpo_seconds           age of the data the last drill restored
    itsup_drill_rto_target_seconds         the configured RTO target
    itsup_drill_rpo_target_seconds         the configured RPO target
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ACTIONS = ("backup", "verify", "drill")
RESULTS = ("success", "partial", "failure", "interrupted", "stale")
FILE_MODE = 0o644  # node_exporter usually runs as its own user: it must read the file

_WHAT = {"backup": "backup", "verify": "backup verify", "drill": "restore drill"}

# (metric suffix, where the value comes from, key, help); "last" is the last
# run's record, "last_success" the last success/partial run's record.
_FIGURES: dict[str, list[tuple[str, str, str, str]]] = {
    "backup": [
        ("last_archive_bytes", "last_success", "bytes",
         "Size in bytes of the archive written by the last successful or partial backup."),
        ("last_source_bytes", "last_success", "details.source_bytes",
         "Bytes of source data read by the last successful or partial backup."),
        ("last_files", "last_success", "files",
         "Number of files in the archive of the last successful or partial backup."),
        ("last_unreadable_paths", "last_success", "details.unreadable_paths",
         "Paths the last successful or partial backup could not read completely (above 0: partial)."),
    ],
    "verify": [
        ("last_generations", "last", "details.generations",
         "Number of backup generations the last verify run checked."),
        ("last_failed_generations", "last", "details.failed",
         "Number of backup generations the last verify run found damaged or unreadable."),
    ],
    "drill": [
        ("last_rto_seconds", "last", "details.rto_seconds",
         "Recovery time measured by the last restore drill, in seconds."),
        ("last_rpo_seconds", "last", "details.rpo_seconds",
         "Age in seconds of the data the last restore drill restored (recovery point)."),
        ("rto_target_seconds", "last", "details.rto_target",
         "Configured recovery time objective (backup.monitoring.rto), in seconds."),
        ("rpo_target_seconds", "last", "details.rpo_target",
         "Configured recovery point objective (backup.monitoring.rpo), in seconds."),
    ],
}  # fmt: skip


def host_label() -> str:
    """This host's name in metrics and alerts: ITSUP_HOST_NAME, else the system's host name."""
    return os.environ.get("ITSUP_HOST_NAME") or socket.gethostname()


def _number(value: Any) -> float | None:
    """A value fit for a gauge: a real number, never a bool or a string."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _lookup(record: Any, key: str) -> float | None:
    if not isinstance(record, dict):
        return None
    if key.startswith("details."):
        details = record.get("details")
        return _number(details.get(key[len("details.") :])) if isinstance(details, dict) else None
    return _number(record.get(key))


def _ended(record: Any) -> float | None:
    if not isinstance(record, dict):
        return None
    return _number(record.get("finished")) or _number(record.get("started"))


def _duration(record: dict[str, Any]) -> float | None:
    duration = _number(record.get("duration"))
    if duration is None:
        finished, started = _number(record.get("finished")), _number(record.get("started"))
        if finished is not None and started is not None:
            duration = finished - started
    return duration


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def build_registry(state: dict[str, Any], host: str | None = None) -> Any:
    """A fresh CollectorRegistry holding the gauges for `state`."""
    from prometheus_client import CollectorRegistry, Gauge

    if host is None:
        host = host_label()
    registry = CollectorRegistry()
    last_runs: dict[str, Any] = state.get("last") or {}
    successes: dict[str, Any] = state.get("last_success") or {}
    if not isinstance(last_runs, dict) or not isinstance(successes, dict):
        raise ValueError("not a run state: 'last' and 'last_success' must be mappings")

    def gauge(name: str, help_text: str, value: float | None) -> None:
        if value is not None:
            Gauge(name, help_text, ["host"], registry=registry).labels(host=host).set(value)

    for action in ACTIONS:
        last = last_runs.get(action)
        if not isinstance(last, dict):
            continue  # never ran: no metrics rather than misleading zeros
        success = successes.get(action)
        sources = {"last": last, "last_success": success}
        what, prefix = _WHAT[action], f"itsup_{action}"
        gauge(
            f"{prefix}_last_run_timestamp_seconds",
            f"Unix time when the last {what} run ended, whatever its result.",
            _ended(last),
        )
        gauge(
            f"{prefix}_last_success_timestamp_seconds",
            f"Unix time when the last successful or partial {what} run ended (0: none yet).",
            _ended(success) or 0.0,
        )
        gauge(
            f"{prefix}_last_duration_seconds",
            f"Duration of the last {what} run, in seconds.",
            _duration(last),
        )
        gauge(
            f"{prefix}_last_exit_code",
            f"Exit code of the last {what} run (0 success, 3 partial, 130 interrupted, "
            "others failure; see the README).",
            _number(last.get("exit_code")),
        )
        result = Gauge(
            f"{prefix}_last_result",
            f"Result of the last {what} run: 1 for its result label, 0 for the others.",
            ["host", "result"],
            registry=registry,
        )
        for name in RESULTS:
            result.labels(host=host, result=name).set(1 if last.get("result") == name else 0)
        for suffix, source, key, help_text in _FIGURES[action]:
            gauge(f"{prefix}_{suffix}", help_text, _lookup(sources[source], key))
    return registry


def write_metrics(path: Path, state: dict[str, Any]) -> None:
    """Rewrite `path` (Prometheus text format) from `state`, atomically, mode 0644.

    The parent folder is created when missing. Name the file `*.prom` and put
    it in node_exporter's `--collector.textfile.directory`.
    """
    from prometheus_client import write_to_textfile

    registry = build_registry(state)
    path = Path(path)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    # write_to_textfile writes `<path>.<pid>.<thread>` and renames it over
    # `path`; a umask of 022 gives that temporary file its final mode already.
    with _umask(0o022):
        write_to_textfile(str(path), registry)
    os.chmod(path, FILE_MODE)
