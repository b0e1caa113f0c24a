"""Alerts (apprise URLs) and healthchecks-style pings.

Both are side effects of a run (see `itsup.monitor`): they must never hang a
backup, never print a secret, and never change the run's exit code.

* `send` delivers one message through apprise to every URL given and returns
  one line per URL it could not deliver. Those lines show only a URL's scheme
  and host (`json://127.0.0.1:8123/…`): tokens, passwords, topics and paths
  never appear. apprise's own log records are kept off the console (they may
  quote a URL) and passed on, scrubbed, at DEBUG level.
* `ping` tells a healthchecks.io-style service that a backup started,
  succeeded or failed (`URL/start`, `URL`, `URL/fail`), with the run summary
  as the request body. It raises `PingError` when the ping cannot be
  delivered; the caller logs that.
"""

from __future__ import annotations

import http.client
import inspect
import logging
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from itsup import __version__

log = logging.getLogger("itsup.notify")

# apprise gives each service 4 s to connect and 4 s per read; this caps the
# whole call (a service URL may ask for longer with ?cto= / ?rto=).
SEND_DEADLINE = 12.0
PING_TIMEOUT = 10.0  # seconds per attempt
PING_RETRIES = 2  # attempts after the first
PING_MAX_BODY = 10_000  # bytes: what healthchecks.io keeps of a ping body
PING_KINDS = {"start": "/start", "success": "", "fail": "/fail"}

_SCHEME_NETLOC = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://([^/?#]*)")
# A host worth showing: a DNS name ending in a letters-only label, an IPv4 or
# a bracketed IPv6 address, or localhost; with an optional port. Anything else
# in the host position (a bot token, a webhook id, an ntfy topic) is a secret.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_SHOWABLE_HOST = re.compile(
    rf"(?:localhost|(?:{_LABEL}\.)+[A-Za-z]{{2,63}}|\d{{1,3}}(?:\.\d{{1,3}}){{3}}|\[[0-9A-Fa-f:.]+\])"
    r"(?::\d{1,5})?"
)
_ANY_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_URL_PATH = re.compile(r"(\burl: )/\S*")  # as urllib3 quotes a request path


class PingError(Exception):
    """A healthchecks ping could not be delivered (the message holds no secret)."""


def redact_url(url: str) -> str:
    """`scheme://host[:port]/…`: what may be shown of a URL. Never a credential."""
    match = _SCHEME_NETLOC.match(url.strip())
    if not match:
        return "(a URL that is not scheme://...)"
    scheme, netloc = match.groups()
    host = netloc.rpartition("@")[2]
    shown = host if _SHOWABLE_HOST.fullmatch(host) else "***"
    rest = url.strip()[match.end() :]
    return f"{scheme.lower()}://{shown}{'/…' if rest else ''}"


def _scrub(text: str) -> str:
    text = _ANY_URL.sub(lambda m: redact_url(m.group(0)), text)
    return _URL_PATH.sub(r"\1/…", text)


# -- apprise -----------------------------------------------------------------------


class _AppriseToDebug(logging.Handler):
    """apprise's warnings and errors, scrubbed of URLs, as DEBUG records of our own.

    Its INFO and DEBUG records (payloads, request paths holding tokens) are
    dropped; what failed is reported by `send`'s return value instead.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is not worth a traceback
            return
        log.debug("apprise %s: %s", record.levelname.lower(), _scrub(message))


def _quiet_apprise() -> None:
    """Keep apprise's records away from the console (Python's last-resort handler).

    Without a handler of its own, a WARNING from apprise is printed to stderr,
    and such lines may quote a service URL.
    """
    logger = logging.getLogger("apprise")
    if not any(isinstance(h, _AppriseToDebug) for h in logger.handlers):
        logger.addHandler(_AppriseToDebug(logging.WARNING))
    logger.propagate = False


def send(urls: list[str], title: str, body: str, failed: bool) -> list[str]:
    """Deliver `title`/`body` to each apprise URL; describe each one not delivered.

    Never raises for a delivery problem and returns within about
    `SEND_DEADLINE` seconds, whatever the endpoints do.
    """
    if not urls:
        return []
    _quiet_apprise()
    try:
        import apprise
    except ImportError as exc:  # a broken install: report, do not crash the run
        return [f"{redact_url(u)}: notifications unavailable ({exc})" for u in urls]

    failures: list[str] = []
    shown: dict[str, str] = {}  # tag -> the URL as it may be shown
    apobj = apprise.Apprise()
    for i, url in enumerate(urls):
        tag = f"itsup-target-{i}"
        try:
            service = apprise.Apprise.instantiate(url, tag=tag)
        except Exception:
            service = None
        if service is None or not apobj.add(service):
            failures.append(f"{redact_url(url)}: not a notification URL apprise understands")
            continue
        shown[tag] = redact_url(url)
    if not shown:
        return failures

    kwargs: dict[str, Any] = {
        "body": body,
        "title": title,
        "notify_type": apprise.NotifyType.FAILURE if failed else apprise.NotifyType.SUCCESS,
        "body_format": apprise.NotifyFormat.TEXT,
    }
    try:
        if "timeout" in inspect.signature(apobj.notify).parameters:
            kwargs["timeout"] = SEND_DEADLINE
    except (TypeError, ValueError):
        pass

    outcome: dict[str, Any] = {}

    def deliver() -> None:
        try:
            outcome["result"] = apobj.notify(**kwargs)
        except Exception as exc:
            outcome["error"] = f"{type(exc).__name__}: {_scrub(str(exc))}"

    worker = threading.Thread(target=deliver, name="itsup-notify", daemon=True)
    worker.start()
    worker.join(SEND_DEADLINE + 3)
    if worker.is_alive():  # left behind: a daemon thread does not keep us running
        reason = f"gave up after {SEND_DEADLINE + 3:.0f} s"
        return failures + [f"{url}: {reason}" for url in shown.values()]
    if "error" in outcome:
        reason = f"delivery crashed: {outcome['error']}"
        return failures + [f"{url}: {reason}" for url in shown.values()]
    return failures + _undelivered(outcome.get("result"), shown)


def _undelivered(result: Any, shown: dict[str, str]) -> list[str]:
    """One line per tagged service that the result does not show as delivered."""
    per_service = getattr(result, "results", None)
    if per_service is None:  # apprise 1.x: one bool for the whole call
        if result:
            return []
        return [f"{url}: delivery failed (here or at another target)" for url in shown.values()]
    reasons: dict[str, str] = {}
    delivered: set[str] = set()
    for service_result in per_service:
        tags = set(getattr(service_result, "tag", ()) or ())
        for tag in tags & shown.keys():
            if service_result:
                delivered.add(tag)
            else:
                status = getattr(getattr(service_result, "status", None), "name", "FAILURE")
                reasons[tag] = (
                    f"timed out after {SEND_DEADLINE:.0f} s"
                    if status == "TIMEOUT"
                    else "delivery failed"
                )
    return [
        f"{url}: {reasons.get(tag, 'not attempted')}"
        for tag, url in shown.items()
        if tag not in delivered
    ]


# -- healthchecks pings --------------------------------------------------------------


def ping_url(url: str, kind: str) -> str:
    """The URL a `kind` ping goes to: base, base/start or base/fail (query kept)."""
    if kind not in PING_KINDS:
        raise ValueError(f"unknown ping kind {kind!r} (expected start, success or fail)")
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/") + PING_KINDS[kind]
    return urllib.parse.urlunsplit(parts._replace(path=path or "/"))


def _body(text: str) -> bytes:
    data = text.encode("utf-8", errors="replace")
    if len(data) <= PING_MAX_BODY:
        return data
    return data[:PING_MAX_BODY].decode("utf-8", errors="ignore").encode("utf-8")


def ping(url: str, kind: str, body: str = "") -> None:
    """POST a healthchecks.io-style ping; raise `PingError` when it cannot be delivered.

    `kind` is "start" (URL/start), "success" (URL) or "fail" (URL/fail). Each
    attempt may take `PING_TIMEOUT` seconds; a refused connection, a timeout
    or a server error is retried `PING_RETRIES` times, a 4xx answer is not.
    """
    target = ping_url(url, kind)
    request = urllib.request.Request(
        target,
        data=_body(body),
        method="POST",
        headers={
            "Content-Type": "text/plain; charset=utf-8",
            "User-Agent": f"itsup/{__version__}",
        },
    )
    problem = "no attempt made"
    attempts = 0
    for attempt in range(1 + PING_RETRIES):
        if attempt:
            time.sleep(attempt)  # 1 s, then 2 s
        attempts += 1
        try:
            with urllib.request.urlopen(request, timeout=PING_TIMEOUT) as response:
                response.read(4096)
            return
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code} {exc.reason}"
            exc.close()
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                break  # the URL is wrong (e.g. an unknown check): retrying will not help
        except urllib.error.URLError as exc:
            problem = _scrub(str(exc.reason))
        except (OSError, http.client.HTTPException) as exc:
            problem = _scrub(str(exc) or type(exc).__name__)
    raise PingError(
        f"{redact_url(url)} ({kind}): not delivered after {attempts} attempt(s): {problem}"
    )
