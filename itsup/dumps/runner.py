"""Run an engine's client: in the engine's own container, or on the host.

`Client` builds the command line (`docker compose exec -T SERVICE ...` in the
project folder, or the host's client for an engine reached by host/port/
socket) and passes secrets by environment variable NAME only (`-e PGPASSWORD`),
so that no password is ever on a command line that `ps` shows.

`Client.dump` streams a command's output to a file while hashing it, and
kills the command when it produces no bytes for `idle_timeout` seconds: a
dump waiting on a lock or a dead pipe never hangs the backup. Errors carry
the engine's own error line, with secret values replaced by `***`.
"""

from __future__ import annotations

import hashlib
import os
import selectors
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from itsup.errors import ItsupError

CHUNK = 1 << 20
STDERR_KEPT = 64 * 1024


class DumpError(ItsupError):
    """A dump or a load failed; the message holds the engine's error line."""


@dataclass
class Written:
    size: int
    sha256: str
    seconds: float


@dataclass
class Client:
    """Where an engine's client runs: `compose` + `cwd` + `service`, or on the host."""

    compose: list[str] | None = None
    cwd: Path | None = None
    service: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # secrets, passed by name
    secrets: set[str] = field(default_factory=set)  # values never shown
    cancel: threading.Event | None = None  # set: running dumps are killed

    @property
    def in_container(self) -> bool:
        return self.compose is not None

    def argv(self, command: list[str]) -> list[str]:
        if self.compose is None:
            return command
        assert self.service is not None
        names = [arg for name in sorted(self.env) for arg in ("-e", name)]
        return [*self.compose, "exec", "-T", *names, self.service, *command]

    def _environ(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def redact(self, text: str) -> str:
        for value in sorted(self.secrets | set(self.env.values()), key=len, reverse=True):
            if len(value) >= 3:
                text = text.replace(value, "***")
        return text

    def shown(self, command: list[str]) -> str:
        """The command line as printed (`backup plan`, messages): secrets as `***`."""
        return self.redact(shlex.join(self.argv(command)))

    def call(
        self,
        command: list[str],
        *,
        stdin: IO[bytes] | None = None,
        timeout: float | None = None,
        input: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run to the end and return what happened (DumpError only when it cannot start).

        `input` is written to its standard input: the way to hand a command a
        secret it would otherwise take as an argument."""
        if input is None:
            stdin = stdin if stdin is not None else subprocess.DEVNULL  # type: ignore[assignment]
        try:
            return subprocess.run(
                self.argv(command),
                stdin=stdin,
                input=input,
                capture_output=True,
                env=self._environ(),
                cwd=self.cwd,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError as exc:
            raise DumpError(f"{exc.filename}: command not found on this host") from None
        except subprocess.TimeoutExpired:
            raise DumpError(f"{command[0]} did not answer within {timeout:.0f} s") from None

    def call_compose(
        self, args: list[str], timeout: float = 600
    ) -> subprocess.CompletedProcess[bytes]:
        """A compose command of the project itself (`up -d`, `down`), not run in a service."""
        assert self.compose is not None
        try:
            return subprocess.run(
                [*self.compose, *args],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=self._environ(),
                cwd=self.cwd,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DumpError(f"{' '.join(self.compose)} {args[0]}: {exc}") from None

    def run(
        self,
        command: list[str],
        *,
        stdin: IO[bytes] | None = None,
        timeout: float | None = None,
        input: bytes | None = None,
    ) -> str:
        """Run to the end; its standard output as text, or DumpError with the error line."""
        done = self.call(command, stdin=stdin, timeout=timeout, input=input)
        if done.returncode != 0:
            raise DumpError(self.error_line(done.stderr, done.stdout, done.returncode))
        return done.stdout.decode("utf-8", "replace")

    def dump(self, command: list[str], dest: Path, idle_timeout: float) -> Written:
        """Stream the command's output into `dest` (created 0600), hashing it as it comes."""
        started = time.monotonic()
        digest = hashlib.sha256()
        size = 0
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            proc = subprocess.Popen(
                self.argv(command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._environ(),
                cwd=self.cwd,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            os.close(fd)
            raise DumpError(f"{exc.filename}: command not found on this host") from None
        stderr = bytearray()
        try:
            assert proc.stdout is not None and proc.stderr is not None
            with selectors.DefaultSelector() as sel:
                sel.register(proc.stdout, selectors.EVENT_READ)
                sel.register(proc.stderr, selectors.EVENT_READ)
                last = time.monotonic()
                while sel.get_map():
                    ready = sel.select(timeout=min(0.5, idle_timeout))
                    if self.cancel is not None and self.cancel.is_set():
                        _kill(proc)
                        raise DumpError(f"{command[0]} stopped: the backup was abandoned")
                    if not ready and time.monotonic() - last >= idle_timeout:
                        _kill(proc)
                        raise DumpError(
                            f"{command[0]} produced no output for {idle_timeout:.0f} s "
                            "(dump idle timeout): killed"
                        )
                    for key, _ in ready:
                        data = os.read(key.fd, CHUNK)
                        if not data:
                            sel.unregister(key.fileobj)
                        elif key.fileobj is proc.stdout:
                            last = time.monotonic()
                            digest.update(data)
                            _write_all(fd, data)
                            size += len(data)
                        else:
                            stderr += data
                            del stderr[:-STDERR_KEPT]
            code = proc.wait()
        except BaseException:
            _kill(proc)
            raise
        finally:
            os.close(fd)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        if code != 0:
            raise DumpError(self.error_line(bytes(stderr), b"", code))
        if size == 0:
            raise DumpError(f"{command[0]} wrote nothing")
        return Written(size, digest.hexdigest(), time.monotonic() - started)

    def error_line(self, stderr: bytes, stdout: bytes, code: int) -> str:
        """The engine's own error line: the first that says error/fatal/denied, else the last."""
        text = (stderr or stdout).decode("utf-8", "replace")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        lines = [line for line in lines if not line.startswith("Warning: Using a password")]
        words = ("error", "fatal", "denied", "failed", "not running", "no such", "refused")
        chosen = next((line for line in lines if any(w in line.lower() for w in words)), None)
        chosen = chosen or (lines[-1] if lines else f"exit status {code}")
        return self.redact(chosen)[:500]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
