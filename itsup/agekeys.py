"""age keys: recipients, identities, and the one place pyrage is imported.

pyrage is a Rust extension: a SIGINT or SIGTERM handled while it initialises
makes it panic (a traceback and exit 1 instead of a clean exit 130). Every
use of it in itsup goes through `pyrage_module()`, which holds those signals
back for the import; they are handled right after it. No module imports
pyrage itself (tests/integration/test_pyrage_guard.py checks that).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from itsup.errors import ConfigError

_pyrage: ModuleType | None = None
_importing = threading.Lock()


def pyrage_module() -> ModuleType:
    """pyrage, imported on first use with SIGINT and SIGTERM held back meanwhile."""
    global _pyrage
    if _pyrage is None:
        with _importing:
            if _pyrage is None:
                held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
                try:
                    import pyrage

                    _pyrage = pyrage
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return _pyrage


def parse_recipient(text: str) -> Any:
    """Parse an age (`age1...`) or SSH public key recipient; ValueError if neither."""
    text = text.strip()
    pyrage = pyrage_module()
    try:
        if text.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            return pyrage.ssh.Recipient.from_str(text)
    except (pyrage.RecipientError, ValueError, TypeError):
        pass
    shown = text if len(text) < 40 else text[:20] + "..."
    raise ValueError(f"{shown!r} is not an age or SSH public key")


def public_key(secret: str) -> str:
    """The public key (`age1...`) of an age secret key line; ValueError if it is not one."""
    try:
        return str(pyrage_module().x25519.Identity.from_str(secret.strip()).to_public())
    except Exception:
        raise ValueError("not an age secret key (AGE-SECRET-KEY-1...)") from None


def default_identity_file(configured: str | None) -> Path:
    """Where the age identity for decryption is: config, ITSUP_AGE_IDENTITY, then SOPS's places."""
    if configured:
        return Path(configured).expanduser()
    for var in ("ITSUP_AGE_IDENTITY", "SOPS_AGE_KEY_FILE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sops" / "age" / "keys.txt"


def load_identities(path: Path) -> list[Any]:
    """Read age identities (one `AGE-SECRET-KEY-1...` per line, # comments) or an SSH key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: age identity file not found",
            hint="set backup.encryption.identity_file or ITSUP_AGE_IDENTITY to the key that matches the recipients",
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read age identity: {exc.strerror}") from None
    pyrage = pyrage_module()
    if "PRIVATE KEY" in text:
        try:
            return [pyrage.ssh.Identity.from_buffer(text.encode())]
        except Exception:
            raise ConfigError(f"{path}: not a usable SSH private key") from None
    identities = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except Exception:
            raise ConfigError(
                f"{path}:{lineno}: not an age identity (AGE-SECRET-KEY-1...)"
            ) from None
    if not identities:
        raise ConfigError(f"{path}: holds no age identity")
    return identities
