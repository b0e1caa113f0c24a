"""age encryption stages (the same format as the `age` command), via pyrage."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

import pyrage

from itsup.errors import ConfigError, IntegrityError
from itsup.pipeline.stream import Pipe, Worker, Writable


def parse_recipient(text: str) -> Any:
    """Parse an age (`age1...`) or SSH public key recipient; ValueError if neither."""
    text = text.strip()
    try:
        if text.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith(("ssh-ed25519 ", "ssh-rsa ")):
            return pyrage.ssh.Recipient.from_str(text)
    except (pyrage.RecipientError, ValueError, TypeError):
        pass
    shown = text if len(text) < 40 else text[:20] + "..."
    raise ValueError(f"{shown!r} is not an age or SSH public key")


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


class EncryptingWriter:
    """A writable stage: bytes written here come out age-encrypted downstream."""

    def __init__(self, downstream: Writable, recipients: list[Any]) -> None:
        self.pipe = Pipe()
        reader = self.pipe.reader

        def run() -> None:
            try:
                pyrage.encrypt_io(reader, downstream, recipients)
            except BaseException as exc:
                self.pipe.error = exc
                raise

        self.worker = Worker(run, "age-encrypt")
        self.worker.start()

    def write(self, data: bytes) -> int:
        return self.pipe.write(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.pipe.close()
        self.worker.join_and_raise()


def decrypting_reader(upstream: BinaryIO, identities: list[Any], what: str) -> BinaryIO:
    """Return a stream of the plaintext of an age-encrypted `upstream`."""
    pipe = Pipe()

    def run() -> None:
        try:
            pyrage.decrypt_io(upstream, pipe, identities)
        except pyrage.DecryptError as exc:
            text = str(exc)
            if "no matching keys" in text.lower() or "identity" in text.lower():
                pipe.fail(
                    ConfigError(f"{what}: none of the age identities can decrypt it ({text})")
                )
            else:
                pipe.fail(
                    IntegrityError(f"{what}: decryption failed, the object is damaged ({text})")
                )
            return
        except BaseException as exc:
            pipe.fail(exc)
            return
        pipe.close()

    Worker(run, "age-decrypt").start()
    import io

    return io.BufferedReader(pipe.reader, 1 << 20)
