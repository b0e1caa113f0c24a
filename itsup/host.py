"""A host root opened for work: its layout, validated config and shared secrets."""

from __future__ import annotations

from dataclasses import dataclass

from itsup.config import ItsupConfig, load_config, load_secrets
from itsup.errors import ConfigError
from itsup.layout import Layout, find_root
from itsup.storage import Target, open_target


@dataclass
class Host:
    layout: Layout
    config: ItsupConfig
    secrets: dict[str, str]

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

    def target(self, choice: str | None = None) -> tuple[Target, str]:
        self.require_backup_section()
        return open_target(self.layout, self.config.backup, self.secrets, choice)


def load_host(layout: Layout) -> Host:
    """Read the shared secrets and itsup.yml of a host root already found."""
    secrets = load_secrets(layout)
    return Host(layout, load_config(layout, secrets=secrets), secrets)


def open_host(root: str | None = None) -> Host:
    return load_host(find_root(root))
