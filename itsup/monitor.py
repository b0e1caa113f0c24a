"""What happens around every run: log lines, run state, metrics, alerts, pings.

Each monitored command (`backup`, `backup verify`, `backup drill`, `backup
check`) runs inside `monitored(...)`. The action fills in a `RunRecord`;
when the run ends, however it ends, this module

1. writes one structured line to logs/backup.log (`event=start` / `event=end`),
2. stores the record in `.itsup/state.json` (`backup status` reads it),
3. rewrites the Prometheus text file, when `backup.monitoring.metrics_file` is set,
4. sends the notifications the run's event is configured for (apprise),
5. pings the healthchecks URL (start when it began, success or fail at the end).

Steps 3-5 never change the outcome of the run: a notification that cannot
be delivered, or a metrics file that cannot be written, is logged and the
exit code stays the run's own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from itsup.errors import ExitCode, ItsupError
from itsup.layout import Layout
from itsup.metrics import host_label

log = logging.getLogger("itsup.run")
STATE_VERSION = 1
ACTIONS = ("backup", "verify", "drill", "check")


@dataclass
class RunRecord:
    """One run of one action, as status, metrics and alerts see it."""

    action: str  # backup | verify | drill | check
    started: float  # unix time
    finished: float | None = None
    exit_code: int | None = None
    result: str | None = None  # success | partial | failure | stale | interrupted | locked
    target: str | None = None  # e.g. "s3://bucket/prefix" (never credentials)
    generation: str | None = None
    bytes: int | None = None  # archive bytes written (backup) or read (verify/drill)
    files: int | None = None
    message: str | None = None  # why it failed: the operator's one-line message
    details: dict[str, Any] = field(default_factory=dict)  # action-specific figures

    @property
    def duration(self) -> float | None:
        return None if self.finished is None else self.finished - self.started

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["duration"] = self.duration
        return data


# -- the state file ---------------------------------------------------------------


def state_file(layout: Layout) -> Path:
    return layout.root / ".itsup" / "state.json"


def load_state(layout: Layout) -> dict[str, Any]:
    """{"version": 1, "last": {action: record}, "last_success": {action: record}}.

    A missing or unreadable state file is an empty state, never an error: it
    only feeds status and metrics.
    """
    empty: dict[str, Any] = {"version": STATE_VERSION, "last": {}, "last_success": {}}
    try:
        data = json.loads(state_file(layout).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return empty
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        return empty
    for key in ("last", "last_success"):
        if not isinstance(data.get(key), dict):
            data[key] = {}
    return data


def _save_state(layout: Layout, record: RunRecord) -> dict[str, Any]:
    from itsup.fsutil import atomic_write

    path = state_file(layout)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    # Runs of different actions may end at once (an hourly check during the
    # nightly backup): read-modify-write under a lock of its own.
    with open(path.with_name("state.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = load_state(layout)
        state["last"][record.action] = record.as_dict()
        if record.result in ("success", "partial"):
            state["last_success"][record.action] = record.as_dict()
        atomic_write(path, json.dumps(state, indent=2, sort_keys=True).encode(), 0o600)
    return state


# -- log lines ------------------------------------------------------------------------


def _logfmt(fields: dict[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        if isinstance(value, float):
            value = f"{value:.3f}"
        text = str(value)
        if not text or any(c in text for c in ' "=\\') or "\n" in text:
            text = json.dumps(text, ensure_ascii=False)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def log_start(record: RunRecord) -> None:
    log.info(
        "%s", _logfmt({"event": "start", "action": record.action, "target": record.target}),
        extra={"console": False},
    )  # fmt: skip


def log_end(record: RunRecord) -> None:
    fields = {
        "event": "end",
        "action": record.action,
        "result": record.result,
        "exit": record.exit_code,
        "generation": record.generation,
        "target": record.target,
        "bytes": record.bytes,
        "files": record.files,
        "duration_s": record.duration,
        **{k: v for k, v in record.details.items() if isinstance(v, int | float | str)},
        "error": record.message,
    }
    if record.result in ("success", "partial"):
        level = logging.INFO
    elif record.result == "locked":  # another run is busy: not a failure of anything
        level = logging.WARNING
    else:
        level = logging.ERROR
    log.log(level, "%s", _logfmt(fields), extra={"console": False})


# -- events -----------------------------------------------------------------------------


def event_of(record: RunRecord) -> str:
    """The notification event a finished run raises."""
    if record.result in ("success", None):
        return "success"
    if record.result == "partial":
        return "partial"
    if record.result == "stale":
        return "stale"
    if record.result == "locked":
        return "locked"
    if record.action == "verify":
        return "verify_failed"
    if record.action == "drill":
        return "drill_failed"
    return "failure"


def describe(record: RunRecord, host_name: str | None = None) -> tuple[str, str]:
    """(title, body) of the notification for a finished run. Never holds a secret."""
    host_name = host_name or host_label()
    event = event_of(record)
    words = {
        "success": "succeeded",
        "partial": "completed PARTIALLY",
        "stale": "is STALE",
        "verify_failed": "FAILED",
        "drill_failed": "FAILED",
        "failure": "FAILED",
        "locked": "SKIPPED: another run holds the lock",
    }[event]
    what = "backup" if record.action in ("backup", "check") else f"backup {record.action}"
    title = f"itsup {what} {words} on {host_name}"
    lines = []
    if record.message:
        lines.append(record.message)
    for label, value in (
        ("generation", record.generation),
        ("target", record.target),
        ("exit code", record.exit_code),
    ):
        if value is not None:
            lines.append(f"{label}: {value}")
    if record.duration is not None:
        lines.append(f"duration: {record.duration:.1f} s")
    for key, value in record.details.items():
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            lines.append(f"{key}: {value}")
    return title, "\n".join(lines)


# -- the wrapper --------------------------------------------------------------------


def _result_for(code: int, action: str) -> str:
    if code == ExitCode.LOCKED:
        return "locked"
    if code == ExitCode.NO_BACKUP and action == "check":
        return "stale"  # no backup at all is the stalest there is: the `stale` alert
    if code == ExitCode.SUCCESS:
        return "success"
    if code == ExitCode.PARTIAL:
        return "partial"
    if code == ExitCode.INTERRUPTED:
        return "interrupted"
    if code == ExitCode.STALE:
        return "stale"
    return "failure"


@dataclass
class Monitor:
    """The run's record plus where its side effects go."""

    layout: Layout
    config: Any  # ItsupConfig (Any: keeps this module free of pydantic at import)
    record: RunRecord

    def begin(self) -> None:
        """The backup holds the host lock and starts: the healthchecks `start` ping.

        Called by the action once it has the lock, so that a run refused by the
        lock (another backup still going) sends no ping at all.
        """
        monitoring = self.config.backup.monitoring
        if monitoring.healthchecks and self.record.action == "backup":
            # In the log only: how the run ends is not known yet, and a run that then
            # succeeds must not make cron mail (a run that fails says so itself).
            _guard("healthchecks ping", lambda: _ping(monitoring.healthchecks, "start", None), True)

    def finish(self, code: int, message: str | None = None) -> None:
        record = self.record
        record.finished = time.time()
        record.exit_code = int(code)
        if record.result is None or code not in (ExitCode.SUCCESS, ExitCode.PARTIAL):
            record.result = _result_for(code, record.action)
        if message and not record.message:
            record.message = message
        log_end(record)
        monitoring = self.config.backup.monitoring
        if record.result == "locked":
            # The run never started: the run holding the lock records its own
            # outcome and pings. Only those who asked for `locked` hear of it.
            _guard("notifications", lambda: _notify(self.config, record, True), True)
            return
        state: dict[str, Any] | None = None
        try:
            state = _save_state(self.layout, record)
        except OSError as exc:
            log.warning("could not save run state to %s: %s", state_file(self.layout), exc)
        # A run that succeeded prints nothing under cron: a side effect that failed
        # (a dead webhook, a full metrics disk) is a WARNING in logs/backup.log only
        # (stderr still, when the host keeps no logs/), or cron would mail the
        # operator about a backup that worked.
        quiet = record.result == "success"
        if monitoring.metrics_file and state is not None:
            _guard(
                "metrics",
                lambda: _write_metrics(self.layout, monitoring.metrics_file, state),
                quiet,
            )
        _guard("notifications", lambda: _notify(self.config, record, quiet), quiet)
        # Only the backup itself pings: a check's pings would keep the dead-man's
        # switch happy while backups fail.
        if monitoring.healthchecks and record.action == "backup":
            kind = "success" if record.result in ("success", "partial") else "fail"
            _guard("healthchecks ping", lambda: _ping(monitoring.healthchecks, kind, record), quiet)


def _guard(what: str, step: Any, quiet: bool = False) -> None:
    """Run a side effect; log (never raise) when it fails; `quiet`: in the log only."""
    try:
        step()
    except Exception as exc:  # a side effect never changes the run's outcome
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc, extra=_only_log(quiet))


def _only_log(quiet: bool) -> dict[str, Any] | None:
    """Logging extras keeping a record off stderr, when it is quiet and a log file takes it."""
    from itsup.log import log_file

    return {"console": False} if quiet and log_file() is not None else None


def _write_metrics(layout: Layout, path: str, state: dict[str, Any]) -> None:
    from itsup.metrics import write_metrics

    target = Path(path).expanduser()
    if not target.is_absolute():
        target = layout.root / target
    write_metrics(target, state)


def _notify(config: Any, record: RunRecord, quiet: bool = False) -> None:
    event = event_of(record)
    if event == "success" and record.action == "check":
        return  # an hourly "still fresh" message would drown the real ones
    targets = [t for t in config.notify if event in t.events]
    if not targets:
        return
    from itsup.notify import send

    title, body = describe(record)
    failures = send([t.url for t in targets], title, body, failed=event_of(record) != "success")
    for failure in failures:
        log.warning("notification not delivered: %s", failure, extra=_only_log(quiet))


def _ping(url: str, kind: str, record: RunRecord | None) -> None:
    from itsup.notify import ping

    body = describe(record)[1] if record is not None else ""
    ping(url, kind, body)


@contextlib.contextmanager
def monitored(
    layout: Layout, config: Any, action: str, target: str | None = None
) -> Iterator[Monitor]:
    """Run an action with logging, state, metrics, alerts and pings around it.

    The body may set `monitor.record` fields. An ItsupError or an interrupt
    ends the run with its exit code (and is re-raised); a body that returns
    normally ends it with `monitor.record.exit_code` if it set one, else 0.
    """
    assert action in ACTIONS
    monitor = Monitor(layout, config, RunRecord(action, time.time(), target=target))
    log_start(monitor.record)
    try:
        yield monitor
    except ItsupError as exc:
        monitor.finish(exc.exit_code, exc.message)
        raise
    except KeyboardInterrupt as exc:
        monitor.finish(ExitCode.INTERRUPTED, str(exc) or "interrupted")
        raise
    except Exception as exc:
        monitor.finish(ExitCode.FAILURE, f"internal error: {type(exc).__name__}: {exc}")
        raise
    else:
        code = monitor.record.exit_code
        monitor.finish(ExitCode.SUCCESS if code is None else code)
