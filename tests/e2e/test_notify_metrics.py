"""Alerts, healthchecks pings and Prometheus metrics, end to end.

Real `itsup backup` runs (subprocesses) on sample hosts with the local
target; a real HTTP server on loopback receives the apprise `json://`
notifications and the healthchecks pings; the metrics file is parsed with
prometheus_client's own parser. The Grafana dashboard and the alert rules in
contrib/ are checked against the metric names itsup really writes.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO, Result, make_host, run_itsup, write_config
from prometheus_client.parser import text_string_to_metric_families

from itsup.errors import ExitCode
from itsup.metrics import write_metrics
from itsup.notify import redact_url, send

# apprise (imported in-process by the `send` test) still imports imghdr
pytestmark = pytest.mark.filterwarnings("ignore:'imghdr' is deprecated:DeprecationWarning")

S3_SECRET = "s3-Secret-Key-do-not-print-7731"
HOOK_PASSWORD = "hook-Password-do-not-print-4242"
SECRETS = (S3_SECRET, HOOK_PASSWORD)
HOST = "itsup-test-host"
ENV = {"ITSUP_HOST_NAME": HOST}
RESULTS = ("success", "partial", "failure", "interrupted", "stale")

# The public interface: what dashboards and alert rules may rely on.
METRIC_NAMES = {
    *(
        f"itsup_{action}_{suffix}"
        for action in ("backup", "verify", "drill")
        for suffix in (
            "last_run_timestamp_seconds",
            "last_success_timestamp_seconds",
            "last_duration_seconds",
            "last_exit_code",
            "last_result",
        )
    ),
    "itsup_backup_last_archive_bytes",
    "itsup_backup_last_source_bytes",
    "itsup_backup_last_files",
    "itsup_backup_last_unreadable_paths",
    "itsup_verify_last_generations",
    "itsup_verify_last_failed_generations",
    "itsup_drill_last_rto_seconds",
    "itsup_drill_last_rpo_seconds",
    "itsup_drill_rto_target_seconds",
    "itsup_drill_rpo_target_seconds",
}


# -- a loopback HTTP server that records what it receives ----------------------------


@dataclass
class Received:
    method: str
    path: str
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Hook:
    port: int
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def seen(self, prefix: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path.startswith(prefix)]


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook(0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with state.lock:
                state.requests.append(Received("POST", self.path, body, dict(self.headers)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def stalled_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


# -- hosts ------------------------------------------------------------------------------


def monitored_host(root: Path, *, monitoring: str = "", notify: str = "") -> Path:
    """A sample host backing up to the local target, with S3 and webhook secrets configured.

    The S3 section is never used (`target: local`), but its secret is expanded
    from secrets/itsup.txt like any other: it must never show anywhere.
    """
    make_host(root)
    (root / "secrets").mkdir(exist_ok=True)
    secrets = root / "secrets" / "itsup.txt"
    secrets.write_text(
        f"S3_KEY_ID=AKIAEXAMPLEKEYID\nS3_SECRET={S3_SECRET}\nHOOK_PASSWORD={HOOK_PASSWORD}\n"
    )
    secrets.chmod(0o600)
    config = (
        "backup:\n"
        "  target: local\n"
        "  include_volumes: true\n"
        "  s3:\n"
        "    bucket: unused-bucket\n"
        "    endpoint: http://127.0.0.1:9\n"
        "    access_key_id: ${S3_KEY_ID}\n"
        "    secret_access_key: ${S3_SECRET}\n"
    )
    if monitoring:
        config += "  monitoring:\n" + monitoring
    if notify:
        config += "notify:\n" + notify
    write_config(root, config)
    return root


def break_target(root: Path) -> None:
    """A file where the local target's folder should be: every backup fails."""
    backups = root / "backups"
    if backups.exists():
        backups.rename(root / "backups.moved")
    backups.write_text("not a folder\n")


def backup(root: Path, *, expect: int | None = None, prefix: tuple[str, ...] = ()) -> Result:
    if prefix:  # run under a wrapper (setpriv): run_itsup has no such option
        env = {k: v for k, v in os.environ.items() if k != "ITSUP_ROOT"} | ENV
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "itsup", "--root", str(root), "backup"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        res = Result(proc.returncode, proc.stdout, proc.stderr)
    else:
        res = run_itsup("backup", root=root, env=ENV, timeout=180)
    if expect is not None:
        assert res.code == expect, f"exit {res.code}\n{res.err}"
    assert "Traceback" not in res.out + res.err, res.err
    return res


def log_text(root: Path) -> str:
    return (root / "logs" / "backup.log").read_text(errors="replace")


def assert_no_secret(*texts: str | bytes) -> None:
    for text in texts:
        data = text.encode() if isinstance(text, str) else text
        for secret in SECRETS:
            assert secret.encode() not in data, f"a secret leaked: {data[:300]!r}"


def hook_notify(hook: Hook, path: str, events: str | None = None) -> str:
    url = f"json://alerts:${{HOOK_PASSWORD}}@127.0.0.1:{hook.port}{path}"
    if events is None:
        return f"  - {url}\n"
    return f"  - url: {url}\n    events: [{events}]\n"


def healthchecks(hook: Hook) -> str:
    return f"    healthchecks: {hook.url('/ping/abc')}\n"


# -- notifications and pings -----------------------------------------------------------


def test_failed_backup_notifies_and_pings_fail(tmp_path: Path, hook: Hook) -> None:
    root = monitored_host(
        tmp_path / "host",
        monitoring=healthchecks(hook),
        notify=hook_notify(hook, "/hooks/itsup"),
    )
    break_target(root)
    res = backup(root)
    assert res.code not in (ExitCode.SUCCESS, ExitCode.PARTIAL), res.err

    [alert] = hook.seen("/hooks/")
    assert alert.path == "/hooks/itsup"
    message = alert.json()
    assert message["type"] == "failure"
    assert message["title"] == f"itsup backup FAILED on {HOST}"
    assert f"exit code: {res.code}" in message["message"]
    assert "backups" in message["message"]  # the operator's one-line reason
    assert alert.headers.get("Authorization", "").startswith("Basic ")  # the password was used

    pings = hook.seen("/ping/")
    assert [p.path for p in pings] == ["/ping/abc/start", "/ping/abc/fail"]
    assert f"exit code: {res.code}" in pings[1].body.decode()
    assert_no_secret(res.out, res.err, log_text(root), *(r.body for r in hook.requests))


def test_success_notifies_nobody_by_default_and_pings_success(tmp_path: Path, hook: Hook) -> None:
    root = monitored_host(
        tmp_path / "host",
        monitoring=healthchecks(hook),
        notify=hook_notify(hook, "/hooks/default"),
    )
    res = backup(root, expect=ExitCode.SUCCESS)
    assert hook.seen("/hooks/") == []
    pings = hook.seen("/ping/")
    assert [p.path for p in pings] == ["/ping/abc/start", "/ping/abc"]
    [generation] = [
        p.name.removesuffix(".tar.gz") for p in (root / "backups/itsup").glob("backup-*.tar.gz")
    ]
    assert f"generation: {generation}" in pings[1].body.decode()
    assert pings[1].headers["Content-Type"].startswith("text/plain")
    assert_no_secret(res.out, res.err, log_text(root), *(r.body for r in hook.requests))


def test_success_event_is_opt_in(tmp_path: Path, hook: Hook) -> None:
    root = monitored_host(
        tmp_path / "host",
        notify=hook_notify(hook, "/hooks/success", "success")
        + hook_notify(hook, "/hooks/failures-only"),
    )
    res = backup(root, expect=ExitCode.SUCCESS)
    [alert] = hook.seen("/hooks/")
    assert alert.path == "/hooks/success"
    message = alert.json()
    assert message["type"] == "success"
    assert message["title"] == f"itsup backup succeeded on {HOST}"
    assert "generation: backup-" in message["message"]
    assert hook.seen("/ping/") == []  # no healthchecks URL configured
    assert_no_secret(res.out, res.err, log_text(root), alert.body)


def test_partial_backup_notifies(tmp_path: Path, hook: Hook) -> None:
    root = monitored_host(tmp_path / "host", notify=hook_notify(hook, "/hooks/itsup"))
    locked = root / "upstream/app/volumes/data/locked.bin"
    locked.write_bytes(b"cannot be read\n")
    locked.chmod(0)
    # root reads anything: drop the capabilities that let it (as test_failures.py does)
    prefix = () if os.geteuid() else ("setpriv", "--bounding-set=-dac_override,-dac_read_search")
    res = backup(root, expect=ExitCode.PARTIAL, prefix=prefix)

    [alert] = hook.seen("/hooks/")
    message = alert.json()
    assert message["type"] == "failure"  # anything but success is worth attention
    assert message["title"] == f"itsup backup completed PARTIALLY on {HOST}"
    assert "upstream/app/volumes/data/locked.bin" in message["message"]
    assert "unreadable_paths: 1" in message["message"]
    assert_no_secret(res.out, res.err, log_text(root), alert.body)


def test_dead_endpoints_do_not_change_the_outcome(
    tmp_path: Path, closed_port: int, stalled_port: int
) -> None:
    dead = f"json://alerts:${{HOOK_PASSWORD}}@127.0.0.1:{closed_port}/hooks/dead"
    stalled = f"json://127.0.0.1:{stalled_port}/hooks/stalled"
    root = monitored_host(
        tmp_path / "host",
        monitoring=f"    healthchecks: http://127.0.0.1:{closed_port}/ping/abc\n",
        notify=f"  - url: {dead}\n    events: [success]\n  - url: {stalled}\n    events: [success]\n",
    )
    started = time.monotonic()
    res = backup(root, expect=ExitCode.SUCCESS)
    elapsed = time.monotonic() - started
    # notifications give up within ~15 s; each ping within 3 attempts (1 s + 2 s apart)
    assert elapsed < 45, f"dead endpoints held the backup for {elapsed:.0f} s"

    log = log_text(root)
    assert f"notification not delivered: json://127.0.0.1:{closed_port}/…" in log
    assert f"notification not delivered: json://127.0.0.1:{stalled_port}/…" in log
    assert re.search(rf"WARNING .*healthchecks ping failed: .*127\.0\.0\.1:{closed_port}", log)
    assert "result=success exit=0" in log
    # The backup worked: nothing on stderr, so cron mails nobody; the log has it all.
    assert res.err == "" and res.out == ""
    assert_no_secret(res.out, res.err, log)


def test_send_reports_without_secrets(hook: Hook, closed_port: int) -> None:
    token_url = "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/-100123"
    failures = send(
        [
            f"json://user:{HOOK_PASSWORD}@127.0.0.1:{hook.port}/hooks/ok",
            f"json://user:{HOOK_PASSWORD}@127.0.0.1:{closed_port}/hooks/{S3_SECRET}",
            f"nosuchscheme://{S3_SECRET}@example.org/x",
        ],
        "title",
        "body",
        failed=False,
    )
    assert failures == [
        "nosuchscheme://example.org/…: not a notification URL apprise understands",
        f"json://127.0.0.1:{closed_port}/…: delivery failed",
    ]
    [ok] = hook.seen("/hooks/ok")
    assert ok.json()["type"] == "success"
    # where the host part of a URL is a token, it is not shown either
    assert redact_url(token_url) == "tgram://***/…"
    assert redact_url("ntfy://private-topic") == "ntfy://***"
    assert (
        redact_url(f"mailto://me:{HOOK_PASSWORD}@mail.example.com") == "mailto://mail.example.com"
    )


# -- metrics ------------------------------------------------------------------------------


def read_metrics(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{metric name: {sorted labels: value}}, parsed as Prometheus would."""
    families = text_string_to_metric_families(path.read_text())
    values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in families:
        assert family.type == "gauge", family.name
        assert family.documentation, f"{family.name} has no HELP text"
        for sample in family.samples:
            values.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return values


def value(metrics: dict[str, Any], name: str, **labels: str) -> float:
    key = tuple(sorted({"host": HOST, **labels}.items()))
    return float(metrics[name][key])


def test_metrics_file_after_success_and_failure(tmp_path: Path) -> None:
    prom = tmp_path / "textfile" / "collector" / "itsup.prom"  # its folder does not exist yet
    root = monitored_host(tmp_path / "host", monitoring=f"    metrics_file: {prom}\n")
    backup(root, expect=ExitCode.SUCCESS)
    now = time.time()

    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert [p.name for p in prom.parent.iterdir()] == ["itsup.prom"]  # no temporary left
    metrics = read_metrics(prom)
    success_at = value(metrics, "itsup_backup_last_success_timestamp_seconds")
    assert now - 60 < success_at <= now
    assert value(metrics, "itsup_backup_last_run_timestamp_seconds") == success_at
    [archive] = (root / "backups/itsup").glob("backup-*.tar.gz")
    archive_size = archive.stat().st_size
    assert value(metrics, "itsup_backup_last_archive_bytes") == archive_size
    assert value(metrics, "itsup_backup_last_source_bytes") > 400_000  # the two volumes' db.bin
    files = [p for top in ("upstream", "proxy") for p in (root / top).rglob("*") if p.is_file()]
    assert value(metrics, "itsup_backup_last_files") == len(files)
    assert value(metrics, "itsup_backup_last_unreadable_paths") == 0
    assert value(metrics, "itsup_backup_last_exit_code") == 0
    assert 0 <= value(metrics, "itsup_backup_last_duration_seconds") < 60
    for result in RESULTS:
        expected = 1 if result == "success" else 0
        assert value(metrics, "itsup_backup_last_result", result=result) == expected
    assert not [name for name in metrics if name.startswith(("itsup_verify", "itsup_drill"))]

    break_target(root)
    time.sleep(0.05)  # the failed run ends at a later clock reading
    res = backup(root)
    assert res.code not in (ExitCode.SUCCESS, ExitCode.PARTIAL)
    metrics = read_metrics(prom)
    assert value(metrics, "itsup_backup_last_run_timestamp_seconds") > success_at
    assert value(metrics, "itsup_backup_last_success_timestamp_seconds") == success_at
    assert value(metrics, "itsup_backup_last_exit_code") == res.code
    for result in RESULTS:
        expected = 1 if result == "failure" else 0
        assert value(metrics, "itsup_backup_last_result", result=result) == expected
    # the size figures still describe the newest backup there is
    assert value(metrics, "itsup_backup_last_archive_bytes") == archive_size


# -- the dashboard and alert rules use only metrics itsup writes ------------------------


def full_state() -> dict[str, Any]:
    now = time.time()

    def record(action: str, result: str, details: dict[str, Any]) -> dict[str, Any]:
        return {
            "action": action,
            "started": now - 30,
            "finished": now,
            "exit_code": 0 if result == "success" else 1,
            "result": result,
            "target": "/srv/backups",
            "generation": "backup-2024-01-01-000000",
            "bytes": 1000,
            "files": 10,
            "message": None,
            "details": details,
            "duration": 30.0,
        }

    backup_details = {"source_bytes": 5000, "unreadable_paths": 0}
    verify_details = {"generations": 3, "failed": 1}
    drill_details = {
        "rto_seconds": 120.5,
        "rpo_seconds": 4000,
        "rto_target": 3600,
        "rpo_target": 86400,
        "report": "drill report text",
    }
    return {
        "version": 1,
        "last": {
            "backup": record("backup", "success", backup_details),
            "verify": record("verify", "failure", verify_details),
            "drill": record("drill", "success", drill_details),
            "check": record("check", "stale", {}),
        },
        "last_success": {
            "backup": record("backup", "success", backup_details),
            "drill": record("drill", "success", drill_details),
        },
    }


def metric_names_in(expr: str) -> set[str]:
    return set(re.findall(r"\bitsup_[a-z0-9_]+\b", expr))


def dashboard_exprs(node: Any) -> Iterator[str]:
    """Every PromQL text in a dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, item in node.items():
            if key in ("expr", "definition") and isinstance(item, str):
                yield item
            elif key == "query" and isinstance(item, str | dict):
                yield item if isinstance(item, str) else str(item.get("query", ""))
            else:
                yield from dashboard_exprs(item)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def test_dashboard_and_alerts_use_only_written_metrics(tmp_path: Path) -> None:
    prom = tmp_path / "itsup.prom"
    write_metrics(prom, full_state())
    written = set(read_metrics(prom))
    assert written == METRIC_NAMES  # a rename breaks every dashboard: keep them

    dashboard = json.loads((REPO / "contrib/grafana/itsup-backups.json").read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["host"]["type"] == "query"
    panel_exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert panel_exprs and all('host=~"$host"' in e for e in panel_exprs)
    used = set().union(*(metric_names_in(e) for e in dashboard_exprs(dashboard)))
    assert used - written == set(), "the dashboard queries metrics itsup does not write"
    assert {"itsup_backup_last_success_timestamp_seconds", "itsup_backup_last_result"} <= used
    [stale_panel] = [
        p for p in dashboard["panels"] if p["title"] == "Time since last successful backup"
    ]
    steps = [s["value"] for s in stale_panel["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 26 * 3600, 48 * 3600]

    rules = yaml.safe_load((REPO / "contrib/prometheus/itsup-alerts.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    for name, rule in alerts.items():
        assert metric_names_in(rule["expr"]) <= written, name
        assert metric_names_in(rule["expr"]), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"], name
    stale = alerts["ItsupBackupStale"]["expr"]
    assert "time() - itsup_backup_last_success_timestamp_seconds" in stale and "48 * 3600" in stale
    assert (
        'itsup_backup_last_result{result=~"failure|interrupted"} == 1'
        in (alerts["ItsupBackupFailed"]["expr"])
    )
    assert "itsup_verify_last_result" in alerts["ItsupVerifyFailed"]["expr"]
    assert "itsup_drill_last_result" in alerts["ItsupDrillFailed"]["expr"]
