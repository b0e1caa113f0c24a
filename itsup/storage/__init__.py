"""Storage targets behind one protocol (see `base.Target`)."""

from __future__ import annotations

from pathlib import Path

from itsup.config import BackupConfig
from itsup.errors import ConfigError
from itsup.layout import Layout
from itsup.storage.base import ObjectInfo, ObjectWriter, Target

MiB = 1024 * 1024
DEFAULT_LOCAL_DIR = "backups"

__all__ = ["ObjectInfo", "ObjectWriter", "Target", "open_target"]


def open_target(
    layout: Layout, backup: BackupConfig, secrets: dict[str, str], choice: str | None = None
) -> tuple[Target, str]:
    """Build the configured target and return it with the key prefix to use.

    `choice` ("s3" or "local") overrides `backup.target`; with neither, S3 is
    used when a bucket is configured, else the embedded local default
    (`<root>/backups/`).
    """
    kind = choice or backup.target or ("s3" if backup.s3 else "local")
    if kind == "s3":
        s3 = backup.s3
        if s3 is None:
            raise ConfigError(f"{layout.config_file}: backup.s3: no S3 target is configured")
        from itsup.storage.s3 import S3Target

        def secret(value: object, name: str) -> str | None:
            if value is not None:
                return value.get_secret_value()  # type: ignore[attr-defined]
            return secrets.get(name)

        key_id = secret(s3.access_key_id, "AWS_ACCESS_KEY_ID")
        key = secret(s3.secret_access_key, "AWS_SECRET_ACCESS_KEY")
        if (key_id is None) != (key is None):
            raise ConfigError(
                f"{layout.config_file}: backup.s3: set both access_key_id and secret_access_key, or neither"
            )
        target = S3Target(
            s3.bucket,
            region=s3.region,
            endpoint=s3.endpoint,
            access_key_id=key_id,
            secret_access_key=key,
            session_token=secret(s3.session_token, "AWS_SESSION_TOKEN") if key_id else None,
            storage_class=s3.storage_class,
            part_size=s3.part_size_mb * MiB,
            max_concurrency=s3.max_concurrency,
            addressing_style=s3.addressing_style,
            connect_timeout=s3.connect_timeout,
            read_timeout=s3.read_timeout,
            max_attempts=s3.max_attempts,
        )
        return target, s3.prefix
    from itsup.storage.local import LocalTarget

    local_path = backup.local.path if backup.local else DEFAULT_LOCAL_DIR
    prefix = backup.local.prefix if backup.local else "itsup/"
    base = Path(local_path).expanduser()
    if not base.is_absolute():
        base = layout.root / base
    return LocalTarget(base), prefix
