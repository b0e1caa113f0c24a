"""Exit codes and the typed errors that carry them.

Errors are raised deep down with a message written for the operator; the
command line translates them to an exit code in exactly one place
(`itsup.cli.main`). Cron jobs and monitoring depend on these numbers: they
are documented in the README and never change meaning.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    SUCCESS = 0
    FAILURE = 1  # the run failed; nothing new is offered for restore
    USAGE = 2  # wrong arguments or options
    PARTIAL = 3  # backup complete, but some source files could not be read
    CONFIG = 4  # itsup.yml or the secrets it needs are broken or missing
    DAMAGED = 5  # a backup failed an integrity check or held hostile paths
    STORAGE = 6  # the storage target could not be reached or refused us
    NO_BACKUP = 10  # the target holds no complete generation (empty bucket, wrong prefix)
    LOCKED = 11  # another backup holds the lock for this host root
    STALE = 12  # `backup check`: the newest complete backup is too old (or there is none)
    INTERRUPTED = 130  # stopped by SIGINT/SIGTERM; nothing half-written kept


class ItsupError(Exception):
    """An error with a message meant for the operator and an exit code."""

    exit_code = ExitCode.FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(ItsupError):
    exit_code = ExitCode.USAGE


class ConfigError(ItsupError):
    """One or more problems in configuration; `problems` holds one line each."""

    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[str] | str, *, hint: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems), hint=hint)


class IntegrityError(ItsupError):
    """A backup is damaged, lies about itself, or holds hostile paths."""

    exit_code = ExitCode.DAMAGED


class StorageError(ItsupError):
    exit_code = ExitCode.STORAGE


class NotFoundError(StorageError):
    """The object or generation does not exist."""

    exit_code = ExitCode.FAILURE


class NoBackupError(NotFoundError):
    """The target holds no complete generation at all: restore, verify, drill and
    check all say so with this one code, naming where they looked."""

    exit_code = ExitCode.NO_BACKUP


class LockedError(ItsupError):
    exit_code = ExitCode.LOCKED


class StaleError(ItsupError):
    """The newest complete backup is older than allowed, or there is none."""

    exit_code = ExitCode.STALE
