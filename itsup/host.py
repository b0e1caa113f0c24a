"""A host root opened for work: its layout, validated config and shared secrets."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from itsup.config import ItsupConfig, TargetSettings, load_config, load_secrets
from itsup.errors import ConfigError, NotFoundError, StorageError, UsageError
from itsup.layout import Layout, find_root
from itsup.storage import Target, TargetSpec, open_target

MiB = 1024 * 1024
T = TypeVar("T")
log = logging.getLogger("itsup.target")


@dataclass
class Host:
    layout: Layout
    config: ItsupConfig
    secrets: dict[str, str]
    # Targets opened in this run, by name: each is opened once (one S3 client).
    _opened: dict[str, tuple[Target, str]] = field(default_factory=dict, repr=False)

    def require_backup_section(self) -> None:
        """Refuse to guess where backups go when itsup.yml has no `backup:` section.

        An empty, comment-only or misspelt itsup.yml would otherwise back up,
        unencrypted and without S3 or monitoring, to the local default.
        """
        if not self.config.backup_given:
            raise ConfigError(
                f"{self.layout.config_file}: backup: section is missing, so itsup does not "
                "know where backups go",
                hint="add `backup: {}` to select the local default (backups/ in the host "
                "root) explicitly, or a backup.s3 section to back up to S3",
            )

    def check_target_name(self, name: str) -> None:
        """UsageError (exit 2) unless `name` is a target of this host: one line for a
        typo in `--target`, naming the known ones and the closest."""
        problem = self.config.backup.unknown_target(name)
        if problem is not None:
            raise UsageError(f"--target {name}: {problem}")

    def target(self, choice: str | None = None) -> tuple[Target, str]:
        """The target named `choice` (default: `backup.target`, else the first one
        configured), opened once per run, and the key prefix of its generations."""
        self.require_backup_section()
        name = choice or self.config.backup.default_target
        if name not in self._opened:
            self.check_target_name(name)
            settings = self.config.backup.target_settings(name)
            self._opened[name] = (open_target(self._spec(settings)), settings.prefix)
        return self._opened[name]

    def target_names(self, choice: str | None = None) -> list[str]:
        """The targets a command works with: `choice` (--target), else `backup.target`,
        else every configured one in file order. A backup writes to each of them; a
        command that reads takes the first that answers (`first_answering`)."""
        self.require_backup_section()
        if choice:
            return [choice]
        if self.config.backup.target:
            return [self.config.backup.target]
        return self.config.backup.target_names()

    def first_answering(
        self, choice: str | None, read: Callable[[Target, str], T]
    ) -> tuple[str, Target, str, T]:
        """The first of `target_names(choice)` whose first read (`read(target, prefix)`)
        succeeds: its name, the target, its prefix and what `read` returned.

        A target that cannot be reached (StorageError, not a missing object) is
        passed over with a WARNING naming it and the next one is tried; the last
        one's error is raised when none answers.
        """
        names = self.target_names(choice)
        for number, name in enumerate(names, 1):
            try:
                target, prefix = self.target(name)
                return name, target, prefix, read(target, prefix)
            except NotFoundError:
                raise
            except StorageError as exc:
                if number == len(names):
                    raise
                log.warning(
                    "target %s cannot be reached, trying %s: %s", name, names[number], exc.message
                )
        raise AssertionError("target_names is never empty")

    def target_settings(self, choice: str | None = None) -> TargetSettings:
        """The settings of the target named `choice` (default as for `target`), for
        commands that configure its bucket rather than read or write generations."""
        self.require_backup_section()
        name = choice or self.config.backup.default_target
        self.check_target_name(name)
        return self.config.backup.target_settings(name)

    def target_spec(self, settings: TargetSettings) -> TargetSpec:
        """What `open_target` needs to open the target `settings` describe."""
        return self._spec(settings)

    def _spec(self, target: TargetSettings) -> TargetSpec:
        if target.scheme == "file":
            folder = Path(target.location).expanduser()
            if not folder.is_absolute():
                folder = self.layout.root / folder
            return TargetSpec(f"file://{folder}")
        assert target.s3 is not None
        return TargetSpec(f"s3://{target.location}", self._s3_options(target))

    def _s3_options(self, target: TargetSettings) -> dict[str, Any]:
        s3 = target.s3
        assert s3 is not None

        def secret(value: Any, name: str) -> str | None:
            if value is not None:
                return str(value.get_secret_value())
            return self.secrets.get(name)

        key_id = secret(s3.access_key_id, "AWS_ACCESS_KEY_ID")
        key = secret(s3.secret_access_key, "AWS_SECRET_ACCESS_KEY")
        if (key_id is None) != (key is None):
            raise ConfigError(
                f"{self.layout.config_file}: {target.key_path}: set both access_key_id and "
                "secret_access_key, or neither"
            )
        return {
            "region": s3.region,
            "endpoint": s3.endpoint,
            "access_key_id": key_id,
            "secret_access_key": key,
            "session_token": secret(s3.session_token, "AWS_SESSION_TOKEN") if key_id else None,
            "storage_class": s3.storage_class,
            "part_size": s3.part_size_mb * MiB,
            "max_concurrency": s3.max_concurrency,
            "addressing_style": s3.addressing_style,
            "connect_timeout": s3.connect_timeout,
            "read_timeout": s3.read_timeout,
            "max_attempts": s3.max_attempts,
            "checksum": s3.checksum,
            "object_lock": (s3.object_lock.mode, s3.object_lock.days) if s3.object_lock else None,
        }


def load_host(layout: Layout) -> Host:
    """Read the shared secrets and itsup.yml of a host root already found."""
    secrets = load_secrets(layout)
    return Host(layout, load_config(layout, secrets=secrets), secrets)


def open_host(root: str | None = None) -> Host:
    return load_host(find_root(root))
