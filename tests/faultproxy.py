"""A fault-injecting HTTP/1.1 proxy for the network fault tests.

It sits on 127.0.0.1 between itsup (boto3) and the real S3-compatible server
and forwards every request and response byte for byte, one request at a
time per connection (boto3 never pipelines), so it knows which bytes belong
to which request. Faults are injected at run time, from any thread:

    proxy = FaultProxy(s3_server.endpoint)
    rule = proxy.inject(reset_after(200_000), method="PUT", query=r"partNumber=", last=1)
    ...                                    # itsup talks to proxy.url
    assert rule.fired == 1
    proxy.close()

Fault modes (each applies to one request and its response):

- `reset_after(n, direction)`: forward `n` bytes of the request ("upstream") or
  of the response ("downstream"), then reset both connections (RST, through
  SO_LINGER 0), once the bytes passed reached the peer's kernel (waiting at
  most a second: from a peer that does not read, they are lost with the reset).
  An `n` beyond the end of the message resets at its end: upstream, that is
  after the server got the whole request and before its answer is passed on.
- `stall(seconds, direction, after_bytes)`: pass `after_bytes`, then hold the
  connection silent (read nothing, send nothing) for `seconds`. Then, if the
  client gave up meanwhile, nothing more is forwarded and both connections
  are closed; otherwise forwarding goes on.
- `trickle(bytes_per_second, direction)`: forward at that rate.
- `http_error(status, code, retry_after)`: read the request (answering
  `100 Continue` when asked) and answer an S3 XML error without forwarding it.

Scoping: a rule fires on requests that match all its filters (HTTP method,
regular expressions searched in the path and in the query string, an S3
operation name, the connection number, the global request number), on its
`first`..`last` matching request, at most `times` times; others pass through.

Counters: `connections`, `requests` (per method), `faults_fired`, and `seen`,
one record per request with the fault applied and the status answered.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import re
import select
import socket
import struct
import termios
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

Direction = Literal["upstream", "downstream", "both"]
HEAD_LIMIT = 64 * 1024
RECV = 64 * 1024
REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
MESSAGES = {
    "SlowDown": "Please reduce your request rate.",
    "InternalError": "We encountered an internal error. Please try again.",
    "ServiceUnavailable": "Service is unable to handle request.",
}


# -- faults -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    kind: Literal["reset", "stall", "trickle", "http_error"]
    direction: Direction = "upstream"
    after_bytes: int = 0  # reset, stall: where in the message
    from_body: bool = False  # count after_bytes from the end of the head, not the start
    seconds: float = 0.0  # stall
    rate: int = 0  # trickle: bytes per second
    status: int = 0  # http_error
    code: str = ""
    retry_after: int | None = None
    close: bool = False  # http_error: answer with `Connection: close` and hang up

    def describe(self) -> str:
        where = f"{self.after_bytes} {'body ' if self.from_body else ''}bytes {self.direction}"
        if self.kind == "reset":
            return f"reset after {where}"
        if self.kind == "stall":
            return f"stall {self.seconds:g}s after {where}"
        if self.kind == "trickle":
            return f"trickle {self.rate} B/s {self.direction}"
        return f"{self.status} {self.code}"


def reset_after(
    n_bytes: int,
    direction: Literal["upstream", "downstream"] = "upstream",
    *,
    from_body: bool = False,
) -> Fault:
    """Reset both connections once `n_bytes` of the request (or response) went through.

    With `from_body`, the bytes are counted from the start of the body: the
    head always goes through first.
    """
    return Fault("reset", direction, after_bytes=max(0, n_bytes), from_body=from_body)


def stall(
    seconds: float,
    direction: Literal["upstream", "downstream"] = "upstream",
    after_bytes: int = 0,
    *,
    from_body: bool = False,
) -> Fault:
    """Hold the connection silent for `seconds` once `after_bytes` went through."""
    return Fault(
        "stall", direction, after_bytes=max(0, after_bytes), seconds=seconds, from_body=from_body
    )


def trickle(bytes_per_second: int, direction: Direction = "both") -> Fault:
    """Forward the request and/or response at `bytes_per_second`."""
    if bytes_per_second <= 0:
        raise ValueError("bytes_per_second must be positive")
    return Fault("trickle", direction, rate=bytes_per_second)


def http_error(
    status: int,
    code: str = "SlowDown",
    retry_after: int | None = None,
    *,
    close: bool = False,
) -> Fault:
    """Answer an S3 error document instead of forwarding the request."""
    return Fault(
        "http_error", "both", status=status, code=code, retry_after=retry_after, close=close
    )


# -- requests and rules -------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case names

    @property
    def operation(self) -> str:
        return s3_operation(self.method, self.path, self.query, self.headers)


def s3_operation(method: str, path: str, query: str, headers: dict[str, str]) -> str:
    """The S3 API operation a path-style request is (enough for the calls itsup makes)."""
    params = {p.split("=", 1)[0] for p in query.split("&") if p}
    object_key = path.strip("/").count("/") >= 1
    if method == "PUT":
        if "partNumber" in params:
            return "UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart"
        if "x-amz-copy-source" in headers:
            return "CopyObject"
        return "PutObject" if object_key else "CreateBucket"
    if method == "POST":
        if "uploads" in params:
            return "CreateMultipartUpload"
        if "uploadId" in params:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if "delete" in params else "POST"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in params else "DeleteObject"
    if method == "HEAD":
        return "HeadObject" if object_key else "HeadBucket"
    if method == "GET":
        if not object_key:
            if "uploads" in params:
                return "ListMultipartUploads"
            return "ListObjectsV2" if "list-type" in params else "ListObjects"
        return "ListParts" if "uploadId" in params else "GetObject"
    return method


@dataclass
class Rule:
    """One injected fault and where it applies; `matched`/`fired` count as it goes."""

    fault: Fault
    method: str | None = None
    path: re.Pattern[str] | None = None
    query: re.Pattern[str] | None = None
    operation: str | None = None
    connections: tuple[int, int] | None = None
    requests: tuple[int, int] | None = None
    first: int = 1
    last: int | None = None
    times: int | None = None
    matched: int = 0
    fired: int = 0
    active: bool = True

    def applies(self, req: Request, conn_no: int, req_no: int) -> bool:
        """Count a match and say whether the fault fires on it (call under the proxy lock)."""
        if not self.active:
            return False
        if self.method is not None and req.method != self.method:
            return False
        if self.path is not None and not self.path.search(req.path):
            return False
        if self.query is not None and not self.query.search(req.query):
            return False
        if self.operation is not None and req.operation != self.operation:
            return False
        if self.connections is not None and not (
            self.connections[0] <= conn_no <= self.connections[1]
        ):
            return False
        if self.requests is not None and not (self.requests[0] <= req_no <= self.requests[1]):
            return False
        self.matched += 1
        if self.matched < self.first or (self.last is not None and self.matched > self.last):
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


@dataclass
class Seen:
    """One request as the proxy handled it."""

    connection: int
    number: int
    method: str
    path: str
    query: str
    operation: str
    fault: str | None = None
    status: int | None = None  # the final status passed to the client, if any
    sent_up: int = 0
    sent_down: int = 0


class _Reset(Exception):
    """Reset both connections now."""


class _Drop(Exception):
    """Close both connections now (the client gave up during a stall)."""


class _Closed(Exception):
    """A peer closed the connection (or it broke): stop handling it."""


# -- socket plumbing ----------------------------------------------------------------------


class _Reader:
    """Buffered reads of HTTP framing from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _more(self) -> bool:
        try:
            data = self.sock.recv(RECV)
        except OSError:
            return False
        if not data:
            return False
        self.buf += data
        return True

    def head(self) -> bytes | None:
        """Bytes up to and including the blank line; None at a clean end of stream."""
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buf[: end + 4])
                del self.buf[: end + 4]
                return head
            if len(self.buf) > HEAD_LIMIT:
                raise _Closed("head too long")
            if not self._more():
                if self.buf:
                    raise _Closed("end of stream inside a head")
                return None

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[: end + 2])
                del self.buf[: end + 2]
                return line
            if len(self.buf) > HEAD_LIMIT or not self._more():
                raise _Closed("end of stream inside a chunk header")

    def exactly(self, n: int) -> Iterator[bytes]:
        while n > 0:
            if not self.buf and not self._more():
                raise _Closed("end of stream inside a body")
            piece = bytes(self.buf[:n])
            del self.buf[: len(piece)]
            n -= len(piece)
            yield piece

    def until_eof(self) -> Iterator[bytes]:
        while self.buf or self._more():
            piece = bytes(self.buf)
            self.buf.clear()
            yield piece


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _body(reader: _Reader, headers: dict[str, str], *, until_eof: bool) -> Iterator[bytes]:
    """The raw bytes of a message body as framed by its headers (chunk framing included)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = reader.line()
            yield size_line
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, up to the blank line
                    trailer = reader.line()
                    yield trailer
                    if trailer == b"\r\n":
                        return
            yield from reader.exactly(size + 2)
    elif "content-length" in headers:
        yield from reader.exactly(int(headers["content-length"]))
    elif until_eof:
        yield from reader.until_eof()


def _unsent(sock: socket.socket) -> int:
    """Bytes in the send queue the peer has not acknowledged yet (Linux SIOCOUTQ)."""
    buf = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buf)
    return int(buf[0])


def _hard_close(sock: socket.socket | None, *, reset: bool) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        if reset:
            # A reset discards what the peer has not received yet: let the bytes
            # already passed arrive first (briefly: a peer that does not read loses them).
            deadline = time.monotonic() + 1
            while _unsent(sock) and time.monotonic() < deadline:
                time.sleep(0.005)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _peer_gone(sock: socket.socket) -> bool:
    """Did the peer close its end (FIN or RST) while we held the connection?"""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        if info[0] != 1:  # not ESTABLISHED: CLOSE_WAIT after a FIN, CLOSE after a RST
            return True
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))
    except OSError:
        return True


@dataclass
class _Flow:
    """One direction of one request: how many bytes passed and what is due where."""

    fault: Fault | None
    direction: Literal["upstream", "downstream"]
    passed: int = 0
    head: int = 0  # bytes of head(s) passed, when the fault counts from the body
    stalled: bool = False
    started: float = field(default_factory=time.monotonic)

    def applies(self) -> bool:
        return self.fault is not None and self.fault.direction in (self.direction, "both")

    def due(self) -> int:
        """Bytes still to pass before the fault's point (0: it is due now)."""
        assert self.fault is not None
        return self.fault.after_bytes + self.head - self.passed


# -- the proxy ----------------------------------------------------------------------------


class FaultProxy:
    """A threaded proxy on 127.0.0.1 (a free port) in front of one HTTP upstream."""

    def __init__(self, upstream: str | tuple[str, int], *, buffer: int | None = 256 * 1024) -> None:
        if isinstance(upstream, str):
            parts = urlsplit(upstream)
            assert parts.hostname and parts.port, upstream
            upstream = (parts.hostname, parts.port)
        self.upstream = upstream
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._rules: list[Rule] = []
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self.connections = 0
        self.requests: Counter[str] = Counter()
        self.faults_fired = 0
        self.seen: list[Seen] = []
        self._request_no = 0
        self.buffer = buffer
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if buffer:
            # Loopback buffers grow to megabytes: keep the proxy's own small, so that
            # what it holds back stays with the client and a stall or trickle slows the
            # client's sends. Accepted sockets inherit this (the TCP window follows it).
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept, name="faultproxy", daemon=True)
        self._acceptor.start()

    # -- control (any thread) ----------------------------------------------------------

    def inject(
        self,
        fault: Fault,
        *,
        method: str | None = None,
        path: str | None = None,
        query: str | None = None,
        operation: str | None = None,
        connections: tuple[int, int] | None = None,
        requests: tuple[int, int] | None = None,
        first: int = 1,
        last: int | None = None,
        times: int | None = None,
    ) -> Rule:
        """Apply `fault` to matching requests (the `first`..`last` of them, `times` at most).

        Rules are tried in the order they were injected; the first that fires wins,
        and a request it fires on is not counted by the rules after it.
        """
        rule = Rule(
            fault,
            method=method.upper() if method else None,
            path=re.compile(path) if path else None,
            query=re.compile(query) if query else None,
            operation=operation,
            connections=connections,
            requests=requests,
            first=first,
            last=last,
            times=times,
        )
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule: from now on everything passes through."""
        with self._lock:
            for rule in self._rules:
                rule.active = False
            self._rules.clear()

    def operations(self) -> Counter[str]:
        """Requests seen per S3 operation."""
        with self._lock:
            return Counter(s.operation for s in self.seen)

    def log(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def close(self) -> None:
        self._stop.set()
        self._acceptor.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            socks, threads = list(self._sockets), list(self._threads)
        for sock in socks:
            _hard_close(sock, reset=False)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving -------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
                self._sockets.add(client)
            thread = threading.Thread(
                target=self._serve, args=(client, number), name=f"faultproxy-{number}", daemon=True
            )
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _track(self, sock: socket.socket | None, add: bool) -> None:
        if sock is None:
            return
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.upstream, timeout=10)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._track(sock, True)
        return sock

    def _serve(self, client: socket.socket, conn_no: int) -> None:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.buffer:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.buffer)
        client.settimeout(None)
        reader = _Reader(client)
        upstream: socket.socket | None = None
        reset = False
        try:
            while not self._stop.is_set():
                head = reader.head()
                if head is None:
                    break
                if upstream is not None and select.select([upstream], [], [], 0)[0]:
                    # The server hung up on the idle connection (or sent junk): start afresh.
                    self._track(upstream, False)
                    _hard_close(upstream, reset=False)
                    upstream = None
                upstream, keep = self._one(client, reader, head, upstream, conn_no)
                if not keep:
                    break
        except _Reset:
            reset = True
        except (_Drop, _Closed, OSError, ValueError):
            pass
        finally:
            self._track(upstream, False)
            self._track(client, False)
            _hard_close(upstream, reset=reset)
            _hard_close(client, reset=reset)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _one(
        self,
        client: socket.socket,
        reader: _Reader,
        head: bytes,
        upstream: socket.socket | None,
        conn_no: int,
    ) -> tuple[socket.socket | None, bool]:
        """Handle one request and its response; return the upstream and whether to go on."""
        start, headers = _parse_head(head)
        method, target, _ = [*start.split(" ", 2), "", ""][:3]
        path, _, query = target.partition("?")
        req = Request(method.upper(), path, query, headers)
        with self._lock:
            self._request_no += 1
            number = self._request_no
            self.requests[req.method] += 1
            fault = next((r.fault for r in self._rules if r.applies(req, conn_no, number)), None)
            if fault is not None:
                self.faults_fired += 1
            seen = Seen(
                conn_no,
                number,
                req.method,
                path,
                query,
                req.operation,
                fault.describe() if fault else None,
            )
            self.seen.append(seen)

        expect = headers.get("expect", "").lower() == "100-continue"
        if fault is not None and fault.kind == "http_error":
            if expect:
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            for _ in _body(reader, headers, until_eof=False):
                pass
            client.sendall(self._error_response(req, fault))
            seen.status = fault.status
            return upstream, not fault.close

        if upstream is None:
            upstream = self._connect()
        if expect:
            # Answer the expectation here and send the body on at once: the server
            # then sees a plain request (`Expect` is never part of the signature).
            head = re.sub(rb"(?im)^expect:[^\r\n]*\r\n", b"", head)
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        up = _Flow(fault, "upstream")
        if fault is not None and fault.from_body:
            up.head = len(head)
        self._send(upstream, client, head, up)
        for piece in _body(reader, headers, until_eof=False):
            self._send(upstream, client, piece, up)
        seen.sent_up = up.passed
        if up.applies():
            assert fault is not None
            if fault.kind == "reset":
                raise _Reset  # the whole request went up; its answer never comes back
            if fault.kind == "stall" and not up.stalled:
                self._stall(client, fault)

        down = _Flow(fault, "downstream")
        up_reader = _Reader(upstream)
        while True:
            resp_head = up_reader.head()
            if resp_head is None:
                raise _Closed("the server closed the connection")
            status_line, resp_headers = _parse_head(resp_head)
            status = int(status_line.split(" ", 2)[1])
            if fault is not None and fault.from_body:
                down.head += len(resp_head)
            self._send(client, upstream, resp_head, down)
            if status >= 200 or status == 101:
                break
        seen.status = status
        has_body = req.method != "HEAD" and status not in (204, 304) and status >= 200
        if has_body:
            for piece in _body(up_reader, resp_headers, until_eof=True):
                self._send(client, upstream, piece, down)
        seen.sent_down = down.passed
        if down.applies():
            assert fault is not None
            if fault.kind == "reset":
                raise _Reset
            if fault.kind == "stall" and not down.stalled:
                self._stall(client, fault)
        framed = "content-length" in resp_headers or "chunked" in resp_headers.get(
            "transfer-encoding", ""
        )
        closing = (
            "close" in resp_headers.get("connection", "").lower()
            or "close" in headers.get("connection", "").lower()
        )
        keep = (framed or not has_body) and not closing
        if not keep:
            self._track(upstream, False)
            _hard_close(upstream, reset=False)
            upstream = None
        return upstream, keep

    def _stall(self, client: socket.socket, fault: Fault) -> None:
        self._stop.wait(fault.seconds)
        if self._stop.is_set() or _peer_gone(client):
            raise _Drop

    def _send(self, sock: socket.socket, client: socket.socket, data: bytes, flow: _Flow) -> None:
        """Send `data` on, applying the flow's fault as its bytes go through."""
        fault = flow.fault if flow.applies() else None
        view = memoryview(data)
        while view:
            limit = len(view)
            if fault is not None:
                if fault.kind == "reset":
                    room = flow.due()
                    if room <= 0:
                        raise _Reset
                    limit = min(limit, room)
                elif fault.kind == "stall" and not flow.stalled:
                    room = flow.due()
                    if room <= 0:
                        flow.stalled = True
                        self._stall(client, fault)
                        continue
                    limit = min(limit, room)
                elif fault.kind == "trickle":
                    limit = min(limit, max(1, fault.rate // 20))
            piece = view[:limit]
            sock.sendall(piece)
            flow.passed += len(piece)
            view = view[len(piece) :]
            if fault is not None and fault.kind == "trickle":
                due = flow.started + flow.passed / fault.rate
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    raise _Drop

    def _error_response(self, req: Request, fault: Fault) -> bytes:
        request_id = uuid.uuid4().hex[:16].upper()
        message = MESSAGES.get(fault.code, fault.code)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{fault.code}</Code><Message>{message}</Message>"
            f"<Resource>{req.path}</Resource><RequestId>{request_id}</RequestId></Error>"
        ).encode()
        lines = [
            f"HTTP/1.1 {fault.status} {REASONS.get(fault.status, 'Error')}",
            "Content-Type: application/xml",
            f"Content-Length: {len(body)}",
            f"x-amz-request-id: {request_id}",
            "Server: faultproxy",
        ]
        if fault.retry_after is not None:
            lines.append(f"Retry-After: {fault.retry_after}")
        if fault.close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        return head if req.method == "HEAD" else head + body
