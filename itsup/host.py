"""A host root opened for work: its layout, validated config and shared secrets."""

from __future__ import annotations

from dataclasses import dataclass

from itsup.config import ItsupConfig, load_config, load_secrets
from itsup.layout import Layout, find_root
from itsup.storage import Target, open_target


@dataclass
class Host:
    layout: Layout
    config: ItsupConfig
    secrets: dict[str, str]

    def target(self, choice: str | None = None) -> tuple[Target, str]:
        return open_target(self.layout, self.config.backup, self.secrets, choice)


def open_host(root: str | None = None) -> Host:
    layout = find_root(root)
    secrets = load_secrets(layout)
    return Host(layout, load_config(layout, secrets=secrets), secrets)
